"""Each convolution shape of one steady chunk of a Wan decoder: its time and bits channel-first,
channels-last, and channels-last with the output channels (N) or the input and output channels (NK)
zero-padded to a multiple of 64 or 128, each with ``cudnn.benchmark`` off and on; bits compared
with the channel-first convolution. One JSON line a shape, then the seconds per chunk summed over
the shapes each way applies to. (What ``_layouts.padded_channels`` rests on.) A fourth argument sets
``torch.backends.cudnn.benchmark_limit``, how many of cuDNN's plans benchmark mode tries (PyTorch's
default 10; 0: all of them).

    python benchmarks/conv_padding.py wan2.1 bfloat16 480x832 [LIMIT] > conv_bfloat16.jsonl
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from gpu_timing import mean_seconds
from script_inputs import random_case
from steady_chunk import third_chunk_with

from framepipe._decoder import WanDecoderStep
from framepipe._equivalence import probe, same_bits
from framepipe._layouts import CHANNELS_LAST


def chunk_shapes(vae, z: torch.Tensor) -> collections.Counter:
    """(input shape, weight shape, has bias) -> count, for the third chunk framepipe's decoder decodes."""
    shapes: collections.Counter = collections.Counter()
    plain = WanDecoderStep._conv

    def recorded(self, conv, x, defer_bias=False):
        shapes[(tuple(x.shape), tuple(conv.weight.shape), conv.bias is not None)] += 1
        return plain(self, conv, x, defer_bias)

    third_chunk_with(vae, z, WanDecoderStep, "_conv", recorded)
    return shapes


def rounded_up(n: int, m: int) -> int:
    return -(-n // m) * m


def ways(xs, ws, has_bias: bool, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, Callable[[], torch.Tensor]]]:
    """The channel-first reference's output and each way of computing it."""
    x = probe(torch.empty(xs, device="cuda", dtype=dtype))
    w = torch.randn(ws, device="cuda", dtype=dtype) * 0.05
    b = torch.randn(ws[0], device="cuda", dtype=dtype) if has_bias else None
    conv = F.conv3d if len(xs) == 5 else F.conv2d
    layout = CHANNELS_LAST if len(xs) == 5 else torch.channels_last
    x_cl, w_cl = x.contiguous(memory_format=layout), w.contiguous(memory_format=layout)
    found = {"ref_cf": lambda: conv(x, w, b), "cl": lambda: conv(x_cl, w_cl, b)}
    for m in (64, 128):
        co, ci = rounded_up(ws[0], m), rounded_up(ws[1], m)
        if co == ws[0]:
            continue
        wp = torch.zeros((co, *ws[1:]), device="cuda", dtype=dtype)
        wp[: ws[0]] = w
        wp = wp.contiguous(memory_format=layout)
        bp = None if b is None else torch.cat([b, b.new_zeros(co - ws[0])])
        found[f"cl_padN{m}"] = lambda wp=wp, bp=bp: conv(x_cl, wp, bp)[:, : ws[0]]
        if ci != ws[1]:
            wpp = torch.zeros((co, ci, *ws[2:]), device="cuda", dtype=dtype)
            wpp[: ws[0], : ws[1]] = w
            xp = torch.zeros((xs[0], ci, *xs[2:]), device="cuda", dtype=dtype)
            xp[:, : xs[1]] = x
            wpp, xp = wpp.contiguous(memory_format=layout), xp.contiguous(memory_format=layout)
            found[f"cl_padNK{m}"] = lambda wpp=wpp, bp=bp, xp=xp: conv(xp, wpp, bp)[:, : ws[0]]
    torch.backends.cudnn.benchmark = False
    return conv(x, w, b), found


def main() -> None:
    arch, dtype_name, size = sys.argv[1:4]
    if len(sys.argv) > 4:
        torch.backends.cudnn.benchmark_limit = int(sys.argv[4])
    height, width = map(int, size.split("x"))
    dtype = getattr(torch, dtype_name)
    vae, z = random_case(arch, dtype_name, (height, width), 13, "cuda")  # 4 latent frames
    total: dict[str, float] = collections.defaultdict(float)
    with torch.inference_mode():
        for (xs, ws, has_bias), count in chunk_shapes(vae, z).items():
            reference, found = ways(xs, ws, has_bias, dtype)
            row = {"x": xs, "w": ws, "count": count}
            for name, run in found.items():
                for benchmark in (False, True):
                    torch.backends.cudnn.benchmark = benchmark
                    key = name + ("+bench" if benchmark else "")
                    out = run()
                    took = mean_seconds(run)
                    diff = float((out.float() - reference.float()).abs().max())
                    row[key] = {"s": round(took, 6), "same": same_bits(out.contiguous(), reference), "maxdiff": diff}
                    total[key] += took * count
            torch.backends.cudnn.benchmark = False
            print(json.dumps(row), flush=True)
    ranked = sorted(total.items(), key=lambda kv: kv[1])
    limit = torch.backends.cudnn.benchmark_limit
    print("TOTAL per steady chunk:", json.dumps({k: round(v, 5) for k, v in ranked}), "benchmark_limit", limit)


if __name__ == "__main__":
    main()
