"""How much faster Wan 2.2's 3x3x3 convolutions could run in FP8 (e4m3) on a Hopper card, and at what
error: a direction for the fast decoder, measured before building it. For each convolution shape of a
later chunk of Wan 2.2 at 480x832 (one latent frame a call), the channels-last window convolved by
cuDNN in bfloat16 (the fast decoder's way there), by framepipe's window kernel in bfloat16, and by the
same kernel on e4m3 operands (the window scaled by one factor, the weights by one a output channel;
the products summed in float32 and multiplied by the weights' scales, stored as bfloat16; the
window's factor, which the FP8 decoder folds into the weights, applied afterwards for the error
only). Each timed as ``calls`` calls back to back (long enough to meet the card's power limit), best
of 3; the error of each against the float32 convolution (relative RMS, and the largest difference
relative to the reference's RMS).

    python benchmarks/fp8_conv_probe.py --calls 200
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton
from script_inputs import machine

from framepipe._equivalence import seconds
from framepipe._fast_kernels import window_conv
from framepipe._fp8 import E4M3, E4M3_MAX, fp8_weights

# (input channels, output channels, window frames, rows, columns): Wan 2.2's decoder at 480x832, a
# later chunk: the mid block and first up block (30x52), up blocks 1-3 (60x104, 120x208, 240x416).
SHAPES = [(1024, 1024, 3, 32, 54), (1024, 1024, 4, 62, 106), (1024, 512, 6, 122, 210), (512, 512, 6, 122, 210),
          (512, 256, 6, 242, 418), (256, 256, 6, 242, 418)]  # fmt: skip
TILES = [(128, 128, 64, 4, 4), (256, 128, 64, 8, 4), (128, 256, 64, 8, 4)]  # rows, columns, depth, warps, stages
FP8_TILES = [(128, 128, 128, 4, 4), (256, 128, 128, 8, 4), (128, 256, 128, 8, 4), (256, 128, 64, 8, 5)]


def fp8_conv(x8: torch.Tensor, w8: torch.Tensor, scales: torch.Tensor, co: int, tile: tuple[int, ...]) -> torch.Tensor:
    """The window kernel on e4m3 operands (contiguous channels-last), its sums scaled, bfloat16 out."""
    return window_conv(x8, w8, None, co, *tile, weight_scales=scales, out_dtype=torch.bfloat16)


def errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = got.float() - want
    rms = want.pow(2).mean().sqrt()
    return {"relative_rms": round((diff.pow(2).mean().sqrt() / rms).item(), 5),
            "max_over_rms": round((diff.abs().max() / rms).item(), 4)}  # fmt: skip


def timed_tiles(tiles: list[tuple[int, ...]], run, calls: int, row: dict) -> dict:
    """Seconds of ``run(tile)`` for each tile that builds here (the others listed in ``row``)."""
    took = {}
    for tile in tiles:
        try:
            took[tile] = seconds(lambda t=tile: run(t), torch.device("cuda"), calls=calls)
        except Exception as e:  # a tile whose shared memory does not fit: Triton's OutOfResources
            row.setdefault("tiles_not_built", []).append([list(tile), type(e).__name__])
    return took


def shape_row(shape: tuple[int, ...], calls: int) -> dict:
    c, co, t, h, w = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    x = F.silu(torch.randn((1, c, t, h, w), generator=g, device="cuda") * 1.5)  # as a norm + SiLU leaves it
    weight = torch.randn((co, c, 3, 3, 3), generator=g, device="cuda") / (27 * c) ** 0.5
    torch.backends.cudnn.allow_tf32 = False  # the reference in full float32 products
    want = F.conv3d(x, weight)
    torch.backends.cudnn.allow_tf32 = True
    cl = torch.channels_last_3d
    xb, wb = x.to(torch.bfloat16).contiguous(memory_format=cl), weight.to(torch.bfloat16).contiguous(memory_format=cl)
    x_scale = x.abs().max() / E4M3_MAX
    x8 = (x / x_scale).to(E4M3).contiguous(memory_format=cl)
    conv = torch.nn.Conv3d(c, co, 3, bias=False, device="cuda")
    conv.weight.data = weight
    w8, ws = fp8_weights(conv, torch.ones(c, device="cuda"), co)  # a scale a output channel, none a window's
    del x, weight, conv
    device = torch.device("cuda")
    row: dict = {"shape": list(shape), "gflop": round(2 * co * c * 27 * (t - 2) * (h - 2) * (w - 2) / 1e9, 1)}
    row["cudnn_bf16_ms"] = round(seconds(lambda: F.conv3d(xb, wb), device, calls=calls) * 1e3, 3)
    row["cudnn_bf16_error"] = errors(F.conv3d(xb, wb), want)
    kernel = timed_tiles(TILES, lambda t: window_conv(xb, wb, None, co, *t), calls, row)
    best = min(kernel, key=kernel.get)
    row["kernel_bf16_ms"], row["kernel_bf16_tile"] = round(kernel[best] * 1e3, 3), list(best)
    fp8 = timed_tiles(FP8_TILES, lambda t: fp8_conv(x8, w8, ws, co, t), calls, row)
    best = min(fp8, key=fp8.get)
    row["kernel_fp8_ms"], row["kernel_fp8_tile"] = round(fp8[best] * 1e3, 3), list(best)
    scaled = fp8_conv(x8, w8, ws, co, best).float() * x_scale
    row["kernel_fp8_error"] = errors(scaled, want)
    row["fp8_speedup_over_cudnn_bf16"] = round(row["cudnn_bf16_ms"] / row["kernel_fp8_ms"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(machine("cuda") | {"triton": triton.__version__}), flush=True)
    total = {"cudnn_bf16_ms": 0.0, "kernel_bf16_ms": 0.0, "kernel_fp8_ms": 0.0}
    for shape in SHAPES:
        row = shape_row(shape, args.calls)
        print(json.dumps(row), flush=True)
        for k in total:
            total[k] += row[k]
        torch.cuda.empty_cache()
    print(json.dumps({"sum_ms": {k: round(v, 3) for k, v in total.items()}}), flush=True)


if __name__ == "__main__":
    main()
