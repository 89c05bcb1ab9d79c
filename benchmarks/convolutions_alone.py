"""The exact decoder's convolutions alone, beside its whole decode: how fast an exact decode could be
with cuDNN's kernels on the same values and nothing else on the card, on a card held at its power limit.

framepipe's exact decode (81 frames, seeded random weights and latents) runs once with each
convolution's input recorded for the first chunk and for one later chunk: the activations the decode
itself makes. Those convolutions then run alone, in the decode's order, the later chunk's once for
each later chunk: the same calls (channels-last, padded where the decoder pads) on the same values,
with nothing between them. Timed alternately with diffusers' ``vae.decode`` and framepipe's whole
exact decode, each with the card's mean power, SM clock and power-capped share (``gpu_power``).

    python benchmarks/convolutions_alone.py --archs wan2.2 --sizes 480x832 --dtypes bfloat16 float32
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from decoder_speed import chunked
from gpu_power import alternated
from script_inputs import random_case

from framepipe import to_uint8_frames
from framepipe._decoder import WanDecoderStep

GOALS = {"float32": 1.4, "bfloat16": 1.8}  # issue #21: the exact decoder's speed-up over vae.decode
LATER = 3  # the chunk whose convolutions stand for every later one


def recorded_convolutions(vae, z) -> tuple[list, list, int]:
    """One exact decode's convolutions as (step, conv, input, defer_bias): the first chunk's, one later
    chunk's, and the number of chunks."""
    first, later, calls = [], [], [0]
    step_call, step_conv = WanDecoderStep.__call__, WanDecoderStep._conv

    def call(self, x, cache, *, first_chunk):
        try:
            return step_call(self, x, cache, first_chunk=first_chunk)
        finally:
            calls[0] += 1

    def conv(self, module, x, defer_bias=False):
        kept = first if calls[0] == 0 else later if calls[0] == LATER else None
        if kept is not None:
            kept.append((self, module, x.clone(), defer_bias))
        return step_conv(self, module, x, defer_bias)

    chunked(vae, z, "framepipe")  # the first-use checks, before anything is recorded
    WanDecoderStep.__call__, WanDecoderStep._conv = call, conv
    try:
        chunked(vae, z, "framepipe")
    finally:
        WanDecoderStep.__call__, WanDecoderStep._conv = step_call, step_conv
    return first, later, calls[0]


def case(arch: str, dtype: str, size: tuple[int, int], runs: int) -> dict:
    vae, z = random_case(arch, dtype, size, 81, "cuda")
    row: dict = {"arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": 81}
    with torch.inference_mode():
        first, later, chunks = recorded_convolutions(vae, z)

        def convolutions() -> None:
            for i in range(chunks):
                for step, module, x, defer_bias in first if i == 0 else later:
                    step._conv(module, x, defer_bias)

        ways = {
            "vae.decode": lambda: to_uint8_frames(vae.decode(z).sample),
            "framepipe": lambda: chunked(vae, z, "framepipe"),
            "convolutions alone": convolutions,
        }
        for run in ways.values():  # warm-up
            run()
        timed = alternated(ways, runs, z.device)
        seconds, power = timed["seconds"], timed["power"]
        row["power_limit_watts"], row["max_sm_mhz"] = timed["power_limit_watts"], timed["max_sm_mhz"]
    best = {name: min(v) for name, v in seconds.items()}
    row["seconds"] = {name: round(v, 4) for name, v in best.items()}
    row["all_seconds"] = {name: [round(x, 4) for x in v] for name, v in seconds.items()}
    row["power"] = {name: power[name][seconds[name].index(best[name])] for name in ways}  # the best run's
    row["joules"] = {name: round(best[name] * (row["power"][name].get("watts") or float("nan")), 1) for name in ways}
    row["convolutions_per_chunk"] = [len(first), len(later)]
    row["goal_speedup"] = GOALS.get(dtype)
    row["goal_seconds"] = round(best["vae.decode"] / GOALS[dtype], 4) if dtype in GOALS else None
    row["speedup_vs_vae_decode"] = {name: round(best["vae.decode"] / best[name], 3) for name in ways}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["wan2.2"])
    p.add_argument("--sizes", nargs="+", default=["480x832"])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(json.dumps(env), flush=True)
    for arch in args.archs:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            for dtype in args.dtypes:
                print(json.dumps(case(arch, dtype, (h, w), args.runs)), flush=True)


if __name__ == "__main__":
    main()
