"""A causal 3x3x3 convolution of one later chunk (2 cached + 4 new frames, channels-last) computed with
k of its output frames stacked in the output channels: one convolution of k * C output channels, a
time kernel of k + 2 and a time stride of k (the weights shifted by one frame for each stacked
frame, zeros elsewhere). The aim: Wan 2.1's 96-channel full-resolution convolutions, which run at
a third of the card's matrix rate, at the rate of wider ones (for the fast decoder). Each way's mean
milliseconds and the rate in the convolution's own FLOPs; random data.

    python benchmarks/stacked_frames.py --sizes 480x832 720x1280 --dtypes bfloat16 float32
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from gpu_timing import mean_seconds

CL = torch.channels_last_3d


def weights(weight: torch.Tensor, stacked: int, padded_to: int) -> torch.Tensor:
    """[C, C, 3, 3, 3] -> [padded_to, C, stacked + 2, 3, 3]: output frame s of each group of ``stacked``
    reads window frames s..s+2, its channels at [s * C, (s + 1) * C); zeros beyond."""
    c = weight.shape[0]
    out = torch.zeros(padded_to, c, stacked + 2, 3, 3, device=weight.device, dtype=weight.dtype)
    for s in range(stacked):
        out[s * c : (s + 1) * c, :, s : s + 3] = weight
    return out.contiguous(memory_format=CL)


def frames(y: torch.Tensor, stacked: int, c: int) -> torch.Tensor:
    """A stacked convolution's output [B, >= k*C, P, H, W] as the plain one's [B, C, P * k, H, W]."""
    b, _, p, h, w = y.shape
    y = y[:, : stacked * c].reshape(b, stacked, c, p, h, w)
    return y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, p * stacked, h, w)


def case(c: int, h: int, w: int, dtype: torch.dtype) -> dict:
    """One convolution shape: each way's milliseconds, TFLOP/s, and its largest difference from the
    plain convolution (each way sums the same products, grouped otherwise)."""
    weight = (torch.randn(c, c, 3, 3, 3, device="cuda") / (27 * c) ** 0.5).to(dtype)
    x = torch.randn(1, c, 6, h + 2, w + 2, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    ways = {"plain": (1, c), "padded": (1, -(-c // 128) * 128)}
    for k, name in ((2, "pairs"), (4, "quads")):
        ways[name] = (k, k * c)
        if (k * c) % 128:
            ways[name + " padded"] = (k, -(-k * c // 128) * 128)
    reference = F.conv3d(x, weight.contiguous(memory_format=CL))
    flops = 2 * c * c * 27 * 4 * h * w
    ms, tflops, diff = {}, {}, {}
    for name, (k, n) in ways.items():
        wk = weights(weight, k, n)
        ms[name] = round(mean_seconds(lambda wk=wk, k=k: F.conv3d(x, wk, stride=(k, 1, 1)), 20) * 1e3, 3)
        tflops[name] = round(flops / ms[name] / 1e9)
        diff[name] = float((frames(F.conv3d(x, wk, stride=(k, 1, 1)), k, c) - reference).abs().max())
    y = F.conv3d(x, weights(weight, 2, 2 * c), stride=(2, 1, 1))
    reorder = lambda: frames(y, 2, c).contiguous(memory_format=CL)  # noqa: E731
    ms["pairs' frames reordered (a copy)"] = round(mean_seconds(reorder, 20) * 1e3, 3)
    return {"ms": ms, "tflops": tflops, "max_diff_from_plain": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["480x832", "720x1280"])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = p.parse_args()
    torch.manual_seed(0)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "tf32_conv": torch.backends.cudnn.allow_tf32, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(json.dumps(env))
    for dtype_name in args.dtypes:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            for c, scale in ((96, 1), (192, 2), (384, 4)):  # Wan 2.1's up blocks, full resolution to a quarter
                row = case(c, h // scale, w // scale, getattr(torch, dtype_name))
                print(json.dumps({"dtype": dtype_name, "size": size, "channels": c, **row}), flush=True)


if __name__ == "__main__":
    main()
