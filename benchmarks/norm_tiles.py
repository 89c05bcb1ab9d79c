"""The exact norm + SiLU kernel's tile (pixels a program, channels a step of its normalizing loop,
warps) over the norms of one steady chunk of framepipe's exact decoder: milliseconds a chunk for each
tile, per call too, and whether each tile gives the first one's bits (it should: a pixel's order is
its split's, whatever the tile). The calls PyTorch's ops run (no split the kernel repeats) are left out.

    python benchmarks/norm_tiles.py wan2.2 bfloat16 480x832 > tiles.jsonl
"""

from __future__ import annotations

import json
import sys

import torch
from gpu_timing import mean_seconds
from norm_kernels import chunk_calls
from script_inputs import machine, random_case

import framepipe._exact_kernels as kernels
from framepipe._equivalence import same_bits
from framepipe._fused import norm_split

# fmt: off
TILES = [(16, 64, 4), (64, 16, 8), (64, 16, 4), (32, 32, 4), (16, 64, 8), (32, 64, 4), (16, 32, 4), (128, 16, 8),
         (64, 32, 8), (128, 32, 8), (32, 16, 4)]
# fmt: on


def main() -> None:
    arch, dtype_name, size = sys.argv[1], sys.argv[2], sys.argv[3]
    vae, z = random_case(arch, dtype_name, tuple(int(n) for n in size.split("x")), 9, "cuda")  # 3 latent frames
    chosen = (kernels.WIDE_TILE, kernels.NARROW_TILE)
    with torch.no_grad():
        calls = [(x, norm, bias, out, norm_split(x, norm, bias)) for x, norm, bias, out in chunk_calls(vae, z)]
        calls = [call for call in calls if call[4] is not None]
        first = None
        for tile in TILES:
            kernels.WIDE_TILE = kernels.NARROW_TILE = tile
            outputs, per_call = [], []
            for x, norm, bias, out, split in calls:
                got = torch.empty_like(out)
                run(x, norm, bias, got, split)
                outputs.append(got)
                seconds = mean_seconds(lambda call=(x, norm, bias, out, split): run(*call), 10)
                per_call.append(round(seconds * 1e3, 4))
            first = first or outputs
            same = all(same_bits(a, b) for a, b in zip(outputs, first, strict=True))
            print(json.dumps({"pixels_channels_warps": tile, "ms_per_chunk": round(sum(per_call), 3),
                              "same_bits_as_first": same, "per_call_ms": per_call}), flush=True)  # fmt: skip
            del outputs
        kernels.WIDE_TILE, kernels.NARROW_TILE = chosen
    where = machine("cuda")
    calls_seen = [{"shape": list(c[0].shape), "bias": c[2] is not None, "split": list(c[4])} for c in calls]
    print(json.dumps({"arch": arch, "dtype": dtype_name, "size": size, "device": where["device"],
                      "torch": where["torch"], "chosen": chosen, "calls": calls_seen}))  # fmt: skip


def run(x: torch.Tensor, norm, bias: torch.Tensor | None, out: torch.Tensor, split) -> None:
    """One call of the exact kernel with the current tile."""
    kernels.norm_silu(x, bias, norm.gamma.reshape(-1), float(norm.scale), out, split)


if __name__ == "__main__":
    main()
