"""diffusers' Wan decoder under ``torch.compile``, chunk by chunk with its causal cache kept outside
the module (the list ``decode_chunks`` hands each call), against the same decoder eager and
framepipe's exact and fast decoders: the first decode's time (the compile in it), the best of ``--runs``
decodes each, alternated, and whether the compiled decoder's chunks have the eager one's bits.

    python benchmarks/compile_decoder.py --arch wan2.1 --size 480x832 --dtypes bfloat16 float32 --out DIR
"""

from __future__ import annotations

import argparse
import math

import torch
from gpu_timing import decode_seconds
from script_inputs import add_decode_arguments, random_case, rows_per_dtype

from framepipe._equivalence import same_bits
from framepipe._source import decode_chunks


def compiled_step(vae, mode: str):
    """A decoder step (``decode_chunks``' ``step``) that calls ``torch.compile(vae.decoder)``."""
    decoder = torch.compile(vae.decoder, mode=mode, dynamic=False)

    def step(x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        return decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)

    return step


def run(arch: str, dtype: str, size: tuple[int, int], frames: int, mode: str, runs: int, device: str) -> dict:
    vae, z = random_case(arch, dtype, size, frames, device)
    ways = {"diffusers": {"decoder": "diffusers"}, "compiled": {"step": compiled_step(vae, mode)}}
    if device.startswith("cuda"):
        ways["framepipe"] = {"decoder": "framepipe"}
        ways["fast"] = {"decoder": "fast"}
    row: dict = {"arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": frames, "mode": mode}
    torch._dynamo.utils.counters.clear()
    row["first_decode_s"] = {name: round(decode_seconds(vae, [z], **how), 3) for name, how in ways.items()}
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
            best[name] = min(best[name], decode_seconds(vae, [z], **how))
    row["seconds"] = {name: round(t, 4) for name, t in best.items()}
    row["compiled_speedup_vs_diffusers"] = round(best["diffusers"] / best["compiled"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_arguments(parser)
    parser.add_argument("--mode", default="default", help="torch.compile's mode")
    args = parser.parse_args()
    rows_per_dtype(args, lambda dtype, size: run(args.arch, dtype, size, args.frames, args.mode, args.runs,
                                                 args.device), "compile_decoder")  # fmt: skip


if __name__ == "__main__":
    main()
