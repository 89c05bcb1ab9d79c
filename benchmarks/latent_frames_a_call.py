"""framepipe's exact decoder step handed two latent frames a call (after the first, which is alone as
in diffusers) through its first ``--grouped-stages`` stages, the rest one frame at a time, against one
frame a call throughout (0), as ``decode_chunks`` hands them: whether the video has the same bits, the
decode's time (alternated, best of ``--runs``) and its peak VRAM. Two frames in one kernel fill the
card better where a frame is small (the latent-size stages), but at full size they hold twice a
frame's activations (``docs/benchmarks.md``, "Two latent frames a call").

    python benchmarks/latent_frames_a_call.py --cases wan2.2:bfloat16:480x832 --grouped-stages 0 1 2 3 6
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from gpu_timing import peak, timed
from script_inputs import machine, random_case

from framepipe import to_uint8_frames
from framepipe._decoder import WanDecoderStep
from framepipe._equivalence import same_bits
from framepipe._source import decode_chunks


def video(vae, z: torch.Tensor, step: WanDecoderStep) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([chunk.clone() for chunk in decode_chunks(vae, z, step=step)], 2)


def to_uint8(vae, z: torch.Tensor, step: WanDecoderStep) -> None:
    with torch.inference_mode():
        for chunk in decode_chunks(vae, z, step=step):
            to_uint8_frames(chunk)


def case(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int, grouped: list[int]) -> dict:
    vae, z = random_case(arch, dtype, size, frames, "cuda")
    steps = {}
    for n in grouped:  # a step each, so that each makes its checks before its first chunk
        steps[n] = WanDecoderStep(vae)
        steps[n].grouped_stages = n
    reference = video(vae, z, steps[grouped[0]])  # also a warm-up of each
    row = {"arch": arch, "dtype": dtype, "size": list(size), "frames": frames, "same_bits_as": grouped[0],
           "same_bits": {}, "max_abs_diff": {}}  # fmt: skip
    for n, step in steps.items():
        other = video(vae, z, step)
        row["same_bits"][n] = same_bits(reference, other)
        row["max_abs_diff"][n] = (reference.float() - other.float()).abs().max().item()
        del other
    del reference
    seconds: dict[int, list[float]] = {n: [] for n in grouped}
    for _ in range(runs):  # alternated, so that drift hits all alike
        for n, step in steps.items():
            seconds[n].append(round(timed(partial(to_uint8, vae, z, step)), 4))
    best = {n: min(s) for n, s in seconds.items()}
    row |= {"seconds": seconds, "speedup": {n: round(best[grouped[0]] / b, 4) for n, b in best.items()},
            "peak_gib": {n: round(peak(partial(to_uint8, vae, z, step)), 2) for n, step in steps.items()}}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["wan2.2:bfloat16:480x832"], help="ARCH:DTYPE:HxW")
    parser.add_argument("--grouped-stages", type=int, nargs="+", default=[0, 1, 2, 3, 6],
                        help="stages two latent frames go through together; the first is the baseline")  # fmt: skip
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(machine("cuda")), flush=True)
    for spec in args.cases:
        arch, dtype, size = spec.split(":")
        height, width = map(int, size.split("x"))
        print(json.dumps(case(arch, dtype, (height, width), args.frames, args.runs, args.grouped_stages)), flush=True)
        torch.cuda.empty_cache()  # the last case's model and caches


if __name__ == "__main__":
    main()
