"""The FP8 decoder with Hopper's FP8 sums added into float32 every N products (Triton's
``max_num_imprecise_acc``, ``_fast_kernels.FP8_IMPRECISE``) against as shipped (never): time
(alternated, best of ``--runs``) and the uint8 error against the float32 reference, one process.

    python benchmarks/fp8_imprecise.py --case wan2.2:480x832 --every 32 128
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from fp8_decoder import frames, to_uint8
from gpu_timing import timed
from script_inputs import machine, random_case

from framepipe import _fast_kernels
from framepipe._quality import frame_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="wan2.2:480x832", help="ARCH:HxW")
    parser.add_argument("--every", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(machine("cuda")), flush=True)
    arch, size = args.case.split(":")
    hw = tuple(map(int, size.split("x")))
    reference_vae, z32 = random_case(arch, "float32", hw, args.frames, "cuda")
    reference = frames(reference_vae, z32, "framepipe")
    del reference_vae, z32
    torch.cuda.empty_cache()
    vae, z = random_case(arch, "bfloat16", hw, args.frames, "cuda")
    variants = [None, *args.every]
    row: dict = {"arch": arch, "size": list(hw), "error_vs_fp32": {}, "seconds": {str(v): [] for v in variants}}
    for every in variants:  # also each one's warm-up (its kernels' compile)
        _fast_kernels.FP8_IMPRECISE = every
        error = vars(frame_error(reference, frames(vae, z, "fast-fp8")))
        row["error_vs_fp32"][str(every)] = {k: round(v, 4) if isinstance(v, float) else v for k, v in error.items()}
    for _ in range(args.runs):
        for every in variants:
            _fast_kernels.FP8_IMPRECISE = every
            row["seconds"][str(every)].append(round(timed(partial(to_uint8, vae, z, "fast-fp8")), 4))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
