"""Several videos' chunks in one decoder call against one video at a time: throughput, and bits.

The same N latent videos (seeded random weights and latents) decoded one after another (batch 1)
and stacked into one batch of N (each call then decodes chunk i of every video), with diffusers'
decoder and framepipe's (which runs PyTorch's ops for a batch of more than one video:
``_decoder.fused_fits``); best of ``--runs``, alternated; each batched video's chunks compared
with its own decode's, bit for bit.

    python benchmarks/batched_videos.py --arch wan2.1 --size 480x832 --videos 2 --dtypes bfloat16 float32 --out DIR
"""

from __future__ import annotations

import argparse
import math

import torch
from gpu_timing import decode_seconds
from script_inputs import add_decode_arguments, random_case, rows_per_dtype

from framepipe._equivalence import same_bits
from framepipe._source import decode_chunks


def run(arch: str, dtype: str, size: tuple[int, int], frames: int, n: int, runs: int, device: str) -> dict:
    vae, batch = random_case(arch, dtype, size, frames, device, videos=n)
    alone = list(batch.split(1))
    decoders = ("diffusers", "framepipe", "fast") if device.startswith("cuda") else ("diffusers",)
    row: dict = {"arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": frames, "videos": n}
    with torch.inference_mode():
        for decoder in decoders:
            together = [c.clone() for c in decode_chunks(vae, batch, decoder=decoder)]
            apart = [[c.clone() for c in decode_chunks(vae, z, decoder=decoder)] for z in alone]
            pairs = [(t[i : i + 1], a) for i, video in enumerate(apart) for t, a in zip(together, video, strict=True)]
            row[f"{decoder}_batched_same_bits"] = all(same_bits(t, a) for t, a in pairs)
            del together, apart, pairs
    inputs = {"one at a time": alone, "batched": [batch]}
    ways = {f"{d} {how}": (d, videos) for d in decoders for how, videos in inputs.items()}
    best = {name: math.inf for name in ways}
    for round_ in range(runs + 1):  # alternated, so drift hits all alike
        for name, (decoder, videos) in ways.items():
            took = decode_seconds(vae, videos, decoder=decoder)
            if round_:  # the first round warms up
                best[name] = min(best[name], took)
    row["seconds"] = {name: round(t, 4) for name, t in best.items()}
    for d in decoders:
        row[f"{d}_batched_speedup"] = round(best[f"{d} one at a time"] / best[f"{d} batched"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_arguments(parser)
    parser.add_argument("--videos", type=int, default=2)
    args = parser.parse_args()
    rows_per_dtype(args, lambda dtype, size: run(args.arch, dtype, size, args.frames, args.videos, args.runs,
                                                 args.device), "batched_videos")  # fmt: skip


if __name__ == "__main__":
    main()
