"""diffusers' Wan decoder under ``torch.compile``, chunk by chunk with its causal cache kept outside
the module (the list ``decode_chunks`` hands each call), against the same decoder eager and
framepipe's exact decoder: the first decode's time (the compile in it), the best of ``--runs``
decodes each, alternated, and whether the compiled decoder's chunks have the eager one's bits.

    python benchmarks/compile_decoder.py --arch wan2.1 --size 480x832 --dtypes bfloat16 float32 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from framepipe import random_vae, to_uint8_frames
from framepipe._equivalence import same_bits
from framepipe._source import decode_chunks


def compiled_step(vae, mode: str):
    """A decoder step (``decode_chunks``' ``step``) that calls ``torch.compile(vae.decoder)``."""
    decoder = torch.compile(vae.decoder, mode=mode, dynamic=False)

    def step(x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        return decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)

    return step


def seconds(vae, z: torch.Tensor, **how) -> float:
    """One chunked decode + uint8 conversion, from an idle device to its last kernel's end."""

    def sync() -> None:
        if z.is_cuda:
            torch.cuda.synchronize(z.device)

    sync()
    start = time.perf_counter()
    for chunk in decode_chunks(vae, z, **how):
        to_uint8_frames(chunk)
    sync()
    return time.perf_counter() - start


def run(arch: str, dtype: str, size: tuple[int, int], frames: int, mode: str, runs: int, device: str) -> dict:
    vae = random_vae(arch).to(device, getattr(torch, dtype))
    s, g = vae.config.scale_factor_spatial, torch.Generator(device=device).manual_seed(0)
    z = torch.randn(1, vae.config.z_dim, (frames - 1) // 4 + 1, size[0] // s, size[1] // s, generator=g, device=device)
    z = z.to(vae.dtype)
    ways = {"diffusers": {"decoder": "diffusers"}, "compiled": {"step": compiled_step(vae, mode)}}
    if device.startswith("cuda"):
        ways["framepipe"] = {"decoder": "framepipe"}
    row: dict = {"arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": frames, "mode": mode}
    torch._dynamo.utils.counters.clear()
    row["first_decode_s"] = {name: round(seconds(vae, z, **how), 3) for name, how in ways.items()}
    row["graph_breaks"] = sum(torch._dynamo.utils.counters["graph_break"].values())
    with torch.inference_mode():
        eager = [c.clone() for c in decode_chunks(vae, z, **ways["diffusers"])]
        compiled = [c.clone() for c in decode_chunks(vae, z, **ways["compiled"])]
    pairs = list(zip(eager, compiled, strict=True))
    row["compiled_same_bits"] = all(same_bits(a, b) for a, b in pairs)
    row["compiled_max_abs_diff"] = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    del eager, compiled, pairs
    best = {name: math.inf for name in ways}
    for _ in range(runs):  # alternated, so drift hits all alike
        for name, how in ways.items():
            best[name] = min(best[name], seconds(vae, z, **how))
    row["seconds"] = {name: round(t, 4) for name, t in best.items()}
    row["compiled_speedup_vs_diffusers"] = round(best["diffusers"] / best["compiled"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wan2.1")
    parser.add_argument("--size", default="480x832")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--mode", default="default", help="torch.compile's mode")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    env = {"device": card, "torch": torch.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtypes:
        rows.append(run(args.arch, dtype, (h, w), args.frames, args.mode, args.runs, args.device))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "compile_decoder.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
