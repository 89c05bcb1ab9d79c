"""Peak device memory of a chunked decode (81 frames, seeded random weights and latents): diffusers'
decoder, and framepipe's exact and fast ones at their first use in the process (when each shape's
checks and choices are made) and again. One process, each case a new frame size or dtype.

    python benchmarks/first_use_peak.py --archs wan2.1 wan2.2 --sizes 480x832 720x1280 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from decoder_speed import chunked
from gpu_timing import peak
from script_inputs import random_case


def case(arch: str, dtype: str, size: tuple[int, int]) -> dict:
    """One case's peaks (GiB), in the order named: diffusers' first, then each framepipe decoder twice."""
    vae, z = random_case(arch, dtype, size, 81, "cuda")
    gib = {}
    with torch.inference_mode():
        gib["diffusers chunked"] = round(peak(lambda: chunked(vae, z, "diffusers")), 2)
        for decoder in ("framepipe", "fast"):
            gib[f"{decoder} first use"] = round(peak(lambda d=decoder: chunked(vae, z, d)), 2)
            gib[f"{decoder} again"] = round(peak(lambda d=decoder: chunked(vae, z, d)), 2)
    return gib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["wan2.1", "wan2.2"])
    p.add_argument("--sizes", nargs="+", default=["480x832", "720x1280"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = p.parse_args()
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(env), flush=True)
    for arch in args.archs:
        for size in args.sizes:
            for dtype in args.dtypes:
                h, w = (int(v) for v in size.split("x"))
                row = {"arch": arch, "size": size, "dtype": dtype, "peak_gib": case(arch, dtype, (h, w))}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
