"""The Wan 2.1 decoder's last convolution (96 -> 3 channels, 3x3x3) on one chunk's window, channels-last:
its time with the output channels zero-padded to 4-64 (and whether the first 3 keep their bits), with
``cudnn.benchmark``, and the time of a 96 -> 81 channel 1x1 convolution, i.e. its 27 taps computed as
one GEMM before they would be summed (a lower bound for that rewrite). Random data.

    python benchmarks/conv_out.py --sizes 480x832 720x1280 --dtypes bfloat16 float32
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


def case(dtype: torch.dtype, h: int, w: int) -> dict:
    """One dtype and frame size: each way's milliseconds, and whether the padded ones keep the bits."""
    # a later chunk's window: 2 cached + 4 new frames, a zero border of one pixel
    x = torch.randn(1, 96, 6, h + 2, w + 2, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    weight = (torch.randn(3, 96, 3, 3, 3, device="cuda", dtype=dtype) * 0.05).contiguous(memory_format=CL)
    reference = F.conv3d(x, weight)
    ms, same = {}, {}
    for n in (3, 4, 8, 16, 32, 64):
        padded = torch.zeros(n, 96, 3, 3, 3, device="cuda", dtype=dtype)
        padded[:3] = weight
        padded = padded.contiguous(memory_format=CL)
        ms[f"N{n}"] = round(milliseconds(lambda p=padded: F.conv3d(x, p)), 4)
        same[f"N{n}"] = bool(torch.equal(F.conv3d(x, padded)[:, :3], reference))
    taps = torch.randn(81, 96, 1, 1, 1, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    ms["taps_gemm_96_to_81"] = round(milliseconds(lambda: F.conv3d(x, taps)), 4)
    torch.backends.cudnn.benchmark = True
    ms["N3_cudnn_benchmark"] = round(milliseconds(lambda: F.conv3d(x, weight)), 4)
    torch.backends.cudnn.benchmark = False
    return {"ms": ms, "same_bits": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["480x832", "720x1280"])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = p.parse_args()
    torch.manual_seed(0)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(env))
    for dtype_name in args.dtypes:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            print(json.dumps({"dtype": dtype_name, "size": size, **case(getattr(torch, dtype_name), h, w)}), flush=True)


if __name__ == "__main__":
    main()
