"""framepipe's window convolution against cuDNN's, bit for bit, by summation order: for a few Wan
convolution shapes (one later chunk's window of random values, channel scales varied as the exact
decoder's checks vary them), whether each tile of the kernel, its K loop taps outer or (as cuDNN's
kernels) each slice of input channels outer, gives the bits of ``F.conv3d`` channel-first (as diffusers
calls it), and its time against cuDNN's channels-last convolution. In float32 the operands are also
rounded to TF32 first (to nearest, ties away or to even), as cuDNN may round them. Which cuDNN kernel
runs each shape is listed.

    python benchmarks/conv_orders.py --dtypes bfloat16 float32 > conv-orders.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
import torch.nn.functional as F
from gpu_timing import mean_seconds
from script_inputs import machine
from torch.profiler import ProfilerActivity, profile

from framepipe._equivalence import probe, same_bits
from framepipe._window_conv import WindowTile, window_convolved

CL = torch.channels_last_3d

# name -> (input channels, output channels, window frames, height, width): a later chunk's window
CASES = {
    "wan2.1 96->96 480x832": (96, 96, 6, 480, 832),
    "wan2.1 192->96 480x832": (192, 96, 6, 480, 832),
    "wan2.1 conv_out 96->3 480x832": (96, 3, 6, 480, 832),
    "wan2.2 conv_out 256->12 480x832": (256, 12, 6, 240, 416),
    "wan2.2 256->256 480x832": (256, 256, 6, 240, 416),
}


def tf32(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """float32 ``x`` rounded to TF32's 10 mantissa bits: "away" (to nearest, ties away from zero, as
    ``cvt.rna.tf32.f32``), "even" (to nearest, ties to even), or "none" (as it is: the tensor cores
    then drop the low bits)."""
    if rounding == "none":
        return x
    b = x.view(torch.int32)
    b = b + 0x1000 if rounding == "away" else b + 0xFFF + ((b >> 13) & 1)
    return (b & ~0x1FFF).view(torch.float32)


def milliseconds(run) -> float:
    """Mean milliseconds of ``run`` over 10 calls back to back, after one untimed call."""
    return round(mean_seconds(run, 10) * 1e3, 4)


def kernels(run) -> list[str]:
    """The CUDA kernels one call of ``run`` launches."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return sorted({e.name[:120] for e in prof.events() if e.device_type.name == "CUDA"})


def case(name: str, dtype: torch.dtype) -> dict:
    """One shape: cuDNN's kernel and time, and each tile's bits and time."""
    c, co, t, h, w = CASES[name]
    g = torch.Generator(device="cuda").manual_seed(1)
    x = probe(torch.empty(1, c, t, h + 2, w + 2, device="cuda", dtype=dtype)).contiguous(memory_format=CL)
    weight = torch.randn(co, c, 3, 3, 3, device="cuda", dtype=dtype, generator=g) * 0.05
    want = F.conv3d(x.contiguous(), weight.contiguous())
    cudnn = weight.contiguous(memory_format=CL)
    row = {"case": name, "dtype": str(dtype).removeprefix("torch."),
           "cudnn_kernels": kernels(lambda: F.conv3d(x, cudnn)),
           "cudnn_channels_last_ms": milliseconds(lambda: F.conv3d(x, cudnn)), "tiles": []}  # fmt: skip
    columns = min(128, max(16, 1 << (co - 1).bit_length()))
    for rounding in ("none", "away", "even") if dtype == torch.float32 else ("none",):
        xr = tf32(x, rounding)
        rows = -(-co // columns) * columns
        padded = torch.zeros(rows, c, 3, 3, 3, device="cuda", dtype=dtype)
        padded[:co] = tf32(weight, rounding)
        padded = padded.contiguous(memory_format=CL)
        for outer in (False, True):
            for depth in (32, 64):
                if c % depth:
                    continue
                wide = depth == 32 or dtype == torch.bfloat16  # else 128 rows, 3 stages: shared memory
                tile = WindowTile(256 if wide else 128, columns, depth, 8, 4 if wide else 3, outer)
                run = functools.partial(window_convolved, xr, padded, None, co, tile)
                got = run()
                row["tiles"].append({
                    "tf32_rounding": rounding, "channels_outer": outer, "depth": depth,
                    "same_bits": same_bits(got.contiguous(), want),
                    "share_differing": round((got.contiguous() != want).float().mean().item(), 5),
                    "ms": milliseconds(run),
                })  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = True  # torch's default, as diffusers' decode runs
    print(json.dumps(machine("cuda") | {"cudnn": torch.backends.cudnn.version()}), flush=True)
    for dtype in args.dtypes:
        for name in args.cases:
            print(json.dumps(case(name, getattr(torch, dtype))), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
