"""The fast decoder's Triton kernel for Wan's channel RMS norm + SiLU, free of PyTorch's bits.

``_exact_kernels.norm_silu`` repeats PyTorch's summation order and roundings, so it reads each pixel's
channels in slices, twice, and divides with IEEE division. Here one program holds whole pixels (all
their channels, contiguous channels-last) in registers: one read, the sum of squares as a tree, one
reciprocal a pixel, float32 throughout with one rounding at the store. Imported only where Triton is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

VALUES = 4096  # values (pixels x channels, channels rounded up to a power of two) per program
WARPS = 4


@triton.jit
def _norm_silu_free(x_ptr, b_ptr, g_ptr, o_ptr, C, T, H, W, sxb, sxc, sxt, sxh, sxw, sob, soc, sot, soh, sow,
                    scale, eps, HAS_BIAS: tl.constexpr, P: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)  # programs along one (b, t, h) row of pixels: no division per pixel
    h = row % H
    t = (row // H) % T
    b = row // (H * T)
    w = tl.program_id(1) * P + tl.arange(0, P)
    c = tl.arange(0, BC)
    m = (w < W)[:, None] & (c < C)[None, :]
    x_row = x_ptr + b.to(tl.int64) * sxb + t.to(tl.int64) * sxt + h.to(tl.int64) * sxh
    x = tl.load(x_row + w[:, None].to(tl.int64) * sxw + c[None, :].to(tl.int64) * sxc, mask=m, other=0.0)
    x = x.to(tl.float32)
    if HAS_BIAS:
        x = x + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
    gain = tl.load(g_ptr + c, mask=c < C, other=0.0).to(tl.float32) * scale
    factor = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)  # masked channels hold 0.0
    y = x * factor[:, None] * gain[None, :]
    y = y * tl.sigmoid(y)
    o_row = o_ptr + b.to(tl.int64) * sob + t.to(tl.int64) * sot + h.to(tl.int64) * soh
    o_at = w[:, None].to(tl.int64) * sow + c[None, :].to(tl.int64) * soc
    tl.store(o_row + o_at, y.to(o_ptr.dtype.element_ty), mask=m)


def norm_silu_free(x: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, scale: float,
                   out: torch.Tensor) -> None:  # fmt: skip
    """``out`` = silu(y / max(||y||_channels, eps) * scale * gamma) with y = x + bias (bias: one value a
    channel, or None), any strides, computed in float32 in an order of its own (not PyTorch's bits)."""
    b, c, t, h, w = x.shape
    channels = triton.next_power_of_2(c)
    pixels = min(max(1, VALUES // channels), triton.next_power_of_2(w))
    _norm_silu_free[(b * t * h, triton.cdiv(w, pixels))](
        x, x if bias is None else bias, gamma, out, c, t, h, w, *x.stride(), *out.stride(), scale, 1e-12,
        HAS_BIAS=bias is not None, P=pixels, BC=channels, num_warps=WARPS,
    )  # fmt: skip
