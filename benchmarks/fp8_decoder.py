"""The FP8 decoder (``decoder="fast-fp8"``) against the fast decoder and diffusers' ``vae.decode``, in
bfloat16 (or ``--dtype float32``) on one GPU: time (alternated, best of ``--runs``, each chunk
converted to uint8), peak VRAM, and each decoder's uint8 error against the float32 reference
(framepipe's exact float32 decode, the bits of ``vae.decode`` in float32: ``framepipe compare``'s
reference). Seeded random weights and latents.

    python benchmarks/fp8_decoder.py --cases wan2.2:480x832 wan2.2:720x1280 wan2.1:480x832 [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from gpu_timing import peak, timed
from script_inputs import machine, random_case

from framepipe import to_uint8_frames
from framepipe._equivalence import chosen_ways
from framepipe._quality import frame_error
from framepipe._source import decode_chunks

DECODERS = ("fast", "fast-fp8")


def frames(vae, z: torch.Tensor, decoder: str) -> torch.Tensor:
    """The video's uint8 frames on the host, decoded chunk by chunk."""
    with torch.inference_mode():
        return torch.cat([to_uint8_frames(c).cpu() for c in decode_chunks(vae, z, decoder=decoder)], 1)


def to_uint8(vae, z: torch.Tensor, decoder: str) -> None:
    with torch.inference_mode():
        if decoder == "vae.decode":
            to_uint8_frames(vae.decode(z).sample)
            return
        for chunk in decode_chunks(vae, z, decoder=decoder):
            to_uint8_frames(chunk)


def case(arch: str, size: tuple[int, int], frames_: int, runs: int, dtype: str) -> dict:
    reference_vae, z32 = random_case(arch, "float32", size, frames_, "cuda")
    reference = frames(reference_vae, z32, "framepipe")
    del reference_vae, z32
    torch.cuda.empty_cache()
    vae, z = random_case(arch, dtype, size, frames_, "cuda")
    row: dict = {"arch": arch, "dtype": dtype, "size": list(size), "frames": frames_, "error_vs_fp32": {}}
    for name in ("vae.decode", *DECODERS):  # also each one's warm-up (the first-use timings)
        # vae.decode's frames are diffusers' chunked decoder's, bit for bit (decoder_speed.py checks it)
        got = frames(vae, z, "diffusers" if name == "vae.decode" else name)
        row["error_vs_fp32"][name] = {k: round(v, 4) if isinstance(v, float) else v
                                      for k, v in vars(frame_error(reference, got)).items()}  # fmt: skip
        del got
    fp8_shapes = [k for k in chosen_ways() if k[0] == "fp8 conv" and vae.dtype in k]
    row["fp8_conv_shapes"] = len(fp8_shapes)
    seconds: dict[str, list[float]] = {name: [] for name in ("vae.decode", *DECODERS)}
    for _ in range(runs):  # alternated, so that drift hits all alike
        for name in seconds:
            seconds[name].append(round(timed(partial(to_uint8, vae, z, name)), 4))
    best = {name: min(s) for name, s in seconds.items()}
    row["seconds"] = seconds
    row["speedup_vs_vae_decode"] = {n: round(best["vae.decode"] / best[n], 3) for n in DECODERS}
    row["peak_gib"] = {n: round(peak(partial(to_uint8, vae, z, n)), 2) for n in ("vae.decode", *DECODERS)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["wan2.2:480x832"], help="ARCH:HxW")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="the VAE's")
    args = parser.parse_args()
    print(json.dumps(machine("cuda")), flush=True)
    for spec in args.cases:
        arch, size = spec.split(":")
        height, width = map(int, size.split("x"))
        print(json.dumps(case(arch, (height, width), args.frames, args.runs, args.dtype)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
