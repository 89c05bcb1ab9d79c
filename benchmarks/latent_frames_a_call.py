"""framepipe's exact decoder step handed several latent frames a call (after the first, which is
alone as in diffusers) against one a call, as ``decode_chunks`` hands them: whether the video has the
same bits, the decode's time (alternated, best of ``--runs``) and its peak VRAM. More frames a call
make the convolutions' products larger and halve the causal caches' copies, but they also change the
shapes each kernel is chosen and checked for (``docs/benchmarks.md``, the directions left out).

    python benchmarks/latent_frames_a_call.py --cases wan2.2:bfloat16:480x832 --frames-a-call 2 4
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from functools import partial

import torch
from gpu_timing import peak, timed
from script_inputs import machine, random_case

from framepipe import to_uint8_frames
from framepipe._decoder import WanDecoderStep
from framepipe._equivalence import same_bits
from framepipe._source import causal_conv_count, decode_chunks


@torch.inference_mode()
def grouped(vae, z: torch.Tensor, step: WanDecoderStep, k: int) -> Iterator[torch.Tensor]:
    """``decode_chunks``' chunks, but each call of ``step`` after the first given ``k`` latent frames."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    cache = [None] * causal_conv_count(vae)
    x = vae.post_quant_conv(z)
    for start in [0, *range(1, x.shape[2], k)]:
        end = 1 if start == 0 else min(start + k, x.shape[2])
        out = step(x[:, :, start:end], cache, first_chunk=start == 0)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        yield torch.clamp(out, min=-1.0, max=1.0)


def decode(vae, z: torch.Tensor, step: WanDecoderStep, k: int) -> Iterator[torch.Tensor]:
    """The video's chunks with ``k`` latent frames a call (1: ``decode_chunks`` itself)."""
    return decode_chunks(vae, z, step=step) if k == 1 else grouped(vae, z, step, k)


def case(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int, k: int, device: str) -> dict:
    vae, z = random_case(arch, dtype, size, frames, device)
    step = WanDecoderStep(vae)
    with torch.inference_mode():
        step.run_checks(vae.post_quant_conv(z)[:, :, :1])  # as decode_chunks makes them
    one, many = (torch.cat([c.clone() for c in decode(vae, z, step, n)], 2) for n in (1, k))  # also a warm-up
    row = {"arch": arch, "dtype": dtype, "size": list(size), "frames": frames, "latent_frames_a_call": k,
           "same_bits": same_bits(one, many), "max_abs_diff": (one.float() - many.float()).abs().max().item(),
           "uint8_values_differing": int((to_uint8_frames(one) != to_uint8_frames(many)).sum())}  # fmt: skip
    del one, many

    def to_uint8(n: int) -> None:
        for chunk in decode(vae, z, step, n):
            to_uint8_frames(chunk)

    cuda = device.startswith("cuda")
    seconds: dict[int, list[float]] = {1: [], k: []}
    for _ in range(runs):  # alternated, so that drift hits both alike
        for n in seconds:
            seconds[n].append(round(timed(partial(to_uint8, n), cuda=cuda), 4))
    peaks = {n: round(peak(partial(to_uint8, n)), 2) if cuda else None for n in seconds}
    row |= {"seconds": {"one a call": seconds[1], f"{k} a call": seconds[k]},
            "speedup": round(min(seconds[1]) / min(seconds[k]), 4),
            "peak_gib": {"one a call": peaks[1], f"{k} a call": peaks[k]}}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["wan2.2:bfloat16:480x832"], help="ARCH:DTYPE:HxW")
    parser.add_argument("--frames-a-call", type=int, nargs="+", default=[2])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    print(json.dumps(machine(args.device)), flush=True)
    for spec in args.cases:
        arch, dtype, size = spec.split(":")
        height, width = map(int, size.split("x"))
        for k in args.frames_a_call:
            print(json.dumps(case(arch, dtype, (height, width), args.frames, args.runs, k, args.device)), flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()  # the last case's model and caches


if __name__ == "__main__":
    main()
