"""framepipe's window convolution in cuDNN's order against cuDNN itself on Wan 2.2's bfloat16 shapes,
at the card's power limit: a lead for the exact decoder's Wan 2.2 goals, measured and not built. For
each 3x3x3 shape of a later chunk at 480x832 (the window of random values the exact decoder's checks
use), whether each tile of the kernel, each slice of input channels outer (``channels_outer``, 64 or
32 channels a slice), gives the bits of ``F.conv3d`` channel-first (as diffusers calls it), and its
time against cuDNN's channels-last convolution, ``calls`` calls back to back (200: long enough to
meet the power limit, where the fast decoder's tiles of two dots gained though slower in bursts),
best of 3.

    python benchmarks/exact_order_sustained.py --calls 200 > exact-order-sustained.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from script_inputs import machine

from framepipe._equivalence import probe, same_bits, seconds
from framepipe._window_conv import WindowTile, window_convolved

# (input channels, output channels, window frames, rows, columns), as fp8_conv_probe.py's
SHAPES = [(1024, 1024, 3, 32, 54), (1024, 1024, 4, 62, 106), (1024, 512, 6, 122, 210), (512, 512, 6, 122, 210),
          (512, 256, 6, 242, 418), (256, 256, 6, 242, 418)]  # fmt: skip
# rows, columns, depth, warps, stages
TILES = [(256, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3),
         (256, 128, 32, 8, 4), (128, 128, 32, 4, 4)]  # fmt: skip


def shape_row(shape: tuple[int, ...], calls: int) -> dict:
    """cuDNN's time and bits for one shape, and each tile's."""
    c, co, t, h, w = shape
    device = torch.device("cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    cl = torch.channels_last_3d
    x = probe(torch.empty(1, c, t, h, w, device="cuda", dtype=torch.bfloat16)).contiguous(memory_format=cl)
    weight = (torch.randn(co, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5).to(torch.bfloat16)
    want = F.conv3d(x.contiguous(), weight.contiguous())
    weight = weight.contiguous(memory_format=cl)
    cudnn_ms = round(seconds(lambda: F.conv3d(x, weight), device, calls=calls) * 1e3, 3)
    row = {"shape": list(shape), "cudnn_same_bits": same_bits(F.conv3d(x, weight).contiguous(), want),
           "cudnn_ms": cudnn_ms, "tiles": []}  # fmt: skip
    for tile in (WindowTile(*t, channels_outer=True) for t in TILES):
        run = lambda tile=tile: window_convolved(x, weight, None, co, tile)  # noqa: E731
        row["tiles"].append({"tile": [tile.rows, tile.columns, tile.depth, tile.warps, tile.stages],
                             "same_bits": same_bits(run().contiguous(), want),
                             "ms": round(seconds(run, device, calls=calls) * 1e3, 3)})  # fmt: skip
    exact = [tile["ms"] for tile in row["tiles"] if tile["same_bits"]]
    row["best_same_bits_ms"] = min(exact, default=None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(machine("cuda") | {"cudnn": torch.backends.cudnn.version(), "calls": args.calls}), flush=True)
    total = {"cudnn_ms": 0.0, "best_of_both_ms": 0.0}
    for shape in SHAPES:
        row = shape_row(shape, args.calls)
        print(json.dumps(row), flush=True)
        total["cudnn_ms"] += row["cudnn_ms"]
        total["best_of_both_ms"] += min(row["cudnn_ms"], row["best_same_bits_ms"] or row["cudnn_ms"])
        torch.cuda.empty_cache()
    print(json.dumps({"sum": {k: round(v, 3) for k, v in total.items()}}), flush=True)


if __name__ == "__main__":
    main()
