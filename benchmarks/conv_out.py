"""A Wan decoder's last convolution (3x3x3; Wan 2.1: 96 -> 3 channels at the frame size, Wan 2.2: 256 ->
12 at half of it, before its 2x2 patches are unfolded) on one chunk's window, channels-last: its time
with the output channels zero-padded up to 64 or 128, and whether the first ones keep the bits of the
plain channels-last convolution and of the channel-first one (the exact decoder's reference), with
``cudnn.benchmark``, and the time of the 27 taps computed as one 1x1 convolution before they would be
summed (a lower bound for that rewrite). Random data.

    python benchmarks/conv_out.py --arch wan2.1 --sizes 480x832 720x1280 --dtypes bfloat16 float32
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from gpu_timing import mean_seconds

CL = torch.channels_last_3d


def milliseconds(run) -> float:
    """Mean milliseconds of ``run`` over 20 calls back to back, after one untimed call."""
    return mean_seconds(run, 20) * 1e3


# arch -> (input channels, output channels, frame size divisor, output channel counts to try)
SHAPES = {"wan2.1": (96, 3, 1, (3, 4, 8, 16, 32, 64)), "wan2.2": (256, 12, 2, (12, 16, 32, 64, 128))}


def case(arch: str, dtype: torch.dtype, h: int, w: int) -> dict:
    """One dtype and frame size: each way's milliseconds, and whether the padded ones keep the bits of
    the plain channels-last convolution and of the channel-first one."""
    c, out, down, widths = SHAPES[arch]
    h, w = h // down, w // down
    # a later chunk's window: 2 cached + 4 new frames, a zero border of one pixel
    x = torch.randn(1, c, 6, h + 2, w + 2, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    weight = (torch.randn(out, c, 3, 3, 3, device="cuda", dtype=dtype) * 0.05).contiguous(memory_format=CL)
    reference = F.conv3d(x, weight)
    channel_first = F.conv3d(x.contiguous(), weight.contiguous())
    ms, same, same_first = {}, {}, {}
    for n in widths:
        padded = torch.zeros(n, c, 3, 3, 3, device="cuda", dtype=dtype)
        padded[:out] = weight
        padded = padded.contiguous(memory_format=CL)
        ms[f"N{n}"] = round(milliseconds(lambda p=padded: F.conv3d(x, p)), 4)
        got = F.conv3d(x, padded)[:, :out]
        same[f"N{n}"] = bool(torch.equal(got, reference))
        same_first[f"N{n}"] = bool(torch.equal(got, channel_first))
    taps = torch.randn(27 * out, c, 1, 1, 1, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    ms[f"taps_gemm_{c}_to_{27 * out}"] = round(milliseconds(lambda: F.conv3d(x, taps)), 4)
    ms["channel_first"] = round(milliseconds(lambda: F.conv3d(x.contiguous(), weight.contiguous())), 4)
    torch.backends.cudnn.benchmark = True
    ms[f"N{out}_cudnn_benchmark"] = round(milliseconds(lambda: F.conv3d(x, weight)), 4)
    torch.backends.cudnn.benchmark = False
    return {"ms": ms, "same_bits": same, "same_bits_as_channel_first": same_first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(SHAPES), default="wan2.1")
    p.add_argument("--sizes", nargs="+", default=["480x832", "720x1280"])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = p.parse_args()
    torch.manual_seed(0)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(env))
    for dtype_name in args.dtypes:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            figures = case(args.arch, getattr(torch, dtype_name), h, w)
            row = {"arch": args.arch, "dtype": dtype_name, "size": size, **figures}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
