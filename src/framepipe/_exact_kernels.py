"""The Triton kernels behind framepipe's decoder step, each several of PyTorch's ops in one pass.

``norm_silu``: a convolution's bias (optional), Wan's channel RMS norm and SiLU. ``bias_residual``: a
convolution's bias and a residual block's shortcut. ``subpixel_place``: a sub-pixel convolution's
output pixels put in place, bias added, ``shortcut_add``: Wan 2.2's upsampled shortcut added, and
``upsample``: a resampler's nearest 2x upsampling (``_resampling.py``). Imported only where Triton is (CUDA). See Note
[Exact fusion] in ``_fused.py`` for why their bits are PyTorch's: the sum of squares over channels
is added up in the order PyTorch's reduction kernel uses (``SPLIT`` interleaved threads of four
accumulators each, then a tree); every other step is repeated operation by operation with PyTorch's
roundings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

PIXELS = 64  # pixels (b, t, h, w positions) per program
CHANNELS = 16  # channels per step of the normalizing loop
# handed the norms, 16 pixels of 64 channels a step, 4 warps: of 9 settings tried over Wan 2.2's 1024
# channels, the fastest or near it at each size (1.0-1.5x the settings above; H200, 2026-12-01)
GIVEN_PIXELS, GIVEN_CHANNELS, GIVEN_WARPS = 16, 64, 4
ELEMENTS = 1024  # values per program of the bias + residual kernel


@triton.jit
def _halve(t, N: tl.constexpr, P: tl.constexpr):
    """[N, P] -> [N // 2, P]: row i plus row i + N // 2 (one step of PyTorch's block_y_reduce tree)."""
    lo, hi = tl.split(tl.permute(tl.reshape(t, [2, N // 2, P]), [1, 2, 0]))
    return lo + hi


@triton.jit
def _load(x_ptr, b_ptr, c, offsets, m, C, sxc, HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Channels ``c`` of the pixels at ``offsets`` in float32, with the bias added as PyTorch's
    ``add_`` adds a convolution's bias (rounded to bfloat16 where the tensor is); 0.0 where masked."""
    x = tl.load(x_ptr + c[:, None].to(tl.int64) * sxc + offsets[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
        if ROUND_BF16:
            x = x.to(tl.bfloat16).to(tl.float32)
    return x


@triton.jit
def _channel_norm(x_ptr, b_ptr, offsets, mask, C, sxc, HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr,
                  SPLIT: tl.constexpr, P: tl.constexpr):  # fmt: skip
    """The L2 norm over C channels of P pixels, in PyTorch's ``ReduceOp`` order: thread y of SPLIT
    adds channels y, y + SPLIT, ... into four accumulators in turn (``vt0`` = 4, fused multiply-add),
    combined ((a0 + a1) + a2) + a3, then the SPLIT threads pairwise, halving; IEEE square root."""
    R: tl.constexpr = 4 * SPLIT  # row r = i * SPLIT + y holds accumulator i of thread y
    acc = tl.zeros([R, P], dtype=tl.float32)
    for c0 in range(0, C, R):
        c = c0 + tl.arange(0, R)
        m = (c < C)[:, None] & mask[None, :]
        x = _load(x_ptr, b_ptr, c, offsets, m, C, sxc, HAS_BIAS, ROUND_BF16)
        acc = tl.fma(x, x, acc)  # a missing channel adds +0.0 to a sum that is >= +0.0: no change
    even, odd = tl.split(tl.reshape(tl.permute(tl.reshape(acc, [4, SPLIT, P]), [1, 2, 0]), [SPLIT, P, 2, 2]))
    a0, a2 = tl.split(even)
    a1, a3 = tl.split(odd)
    t = ((a0 + a1) + a2) + a3
    if SPLIT >= 16:
        t = _halve(t, 16, P)
    if SPLIT >= 8:
        t = _halve(t, 8, P)
    if SPLIT >= 4:
        t = _halve(t, 4, P)
    if SPLIT >= 2:
        t = _halve(t, 2, P)
    return tl.sqrt_rn(tl.reshape(t, [P]))


@triton.jit
def _norm_silu(x_ptr, b_ptr, g_ptr, o_ptr, n_ptr, N, C, T, H, W, sxb, sxc, sxt, sxh, sxw, sob, soc, sot, soh, sow,
               scale, eps, HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr, HAS_NORM: tl.constexpr,
               SPLIT: tl.constexpr, P: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    p = tl.program_id(0).to(tl.int64) * P + tl.arange(0, P)
    mask = p < N
    w = p % W
    h = (p // W) % H
    t = (p // (W * H)) % T
    b = p // (W * H * T)
    x_at = b * sxb + t * sxt + h * sxh + w * sxw
    o_at = b * sob + t * sot + h * soh + w * sow
    if HAS_NORM:  # PyTorch's own norms, one float32 a pixel in (b, t, h, w) order
        d = tl.load(n_ptr + p, mask=mask, other=1.0)
    else:
        d = _channel_norm(x_ptr, b_ptr, x_at, mask, C, sxc, HAS_BIAS, ROUND_BF16, SPLIT, P)
    d = tl.maximum(d, eps, propagate_nan=tl.PropagateNan.ALL)  # F.normalize's clamp_min(eps)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        m = (c < C)[:, None] & mask[None, :]
        x = _load(x_ptr, b_ptr, c, x_at, m, C, sxc, HAS_BIAS, ROUND_BF16)
        g = tl.load(g_ptr + c, mask=c < C).to(tl.float32)
        y = tl.math.div_rn(x, d[None, :])
        if ROUND_BF16:
            y = y.to(tl.bfloat16).to(tl.float32)
        y = y * scale
        if ROUND_BF16:
            y = y.to(tl.bfloat16).to(tl.float32)
        y = y * g[:, None]
        if ROUND_BF16:
            y = y.to(tl.bfloat16).to(tl.float32)
        y = y + 0.0  # diffusers adds its bias 0.0: -0.0 becomes +0.0
        y = tl.math.div_rn(y, 1.0 + libdevice.exp(-y))
        tl.store(o_ptr + c[:, None].to(tl.int64) * soc + o_at[None, :], y.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bias_residual(y_ptr, b_ptr, h_ptr, N, C, SY, SH, ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """y = (y + bias) + h over channels-last y and h (pixel strides SY, SH), each add rounded as PyTorch's."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    pixel, c = i // C, i % C
    y_at = pixel * SY + c
    y = tl.load(y_ptr + y_at, mask=m).to(tl.float32) + tl.load(b_ptr + c, mask=m).to(tl.float32)
    if ROUND_BF16:
        y = y.to(tl.bfloat16).to(tl.float32)
    y = y + tl.load(h_ptr + pixel * SH + c, mask=m).to(tl.float32)
    tl.store(y_ptr + y_at, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _subpixel_place(y_ptr, b_ptr, o_ptr, N, C, H2, W2, SN, SH, SW, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """o[n, r, q, c] (channels-last, whole) = y[n, r // 2 + a, q // 2 + b, (2a + b) C + c] (+ bias[c]) with
    a = r % 2, b = q % 2: y's pixel strides SN, SH, SW; the add in float32, then rounded, as PyTorch's."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    c = i % C
    q = (i // C) % W2
    r = (i // (C * W2)) % H2
    n = i // (C * W2 * H2)
    a, b = r % 2, q % 2
    v = tl.load(y_ptr + n * SN + (r // 2 + a) * SH + (q // 2 + b) * SW + (2 * a + b) * C + c, mask=m)
    if HAS_BIAS:
        v = (v.to(tl.float32) + tl.load(b_ptr + c, mask=m).to(tl.float32)).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + i, v, mask=m)


@triton.jit
def _shortcut_add(x_ptr, s_ptr, o_ptr, N, C, T2, H2, W2, T0, FT: tl.constexpr, FS: tl.constexpr, ssb, sst, ssh, ssw,
                  kc, ka, ki, kj, BLOCK: tl.constexpr):  # fmt: skip
    """o = x + s[b, c kc + a ka + i ki + j kj, (t' + T0) // FT, h' // FS, w' // FS] over channels-last x and
    o [B, C, T2, H2, W2] (whole), with a = (t' + T0) % FT, i = h' % FS, j = w' % FS: the add in float32,
    then rounded, as PyTorch's."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < N
    c = e % C
    pixel = e // C
    w2 = pixel % W2
    h2 = (pixel // W2) % H2
    u = (pixel // (W2 * H2)) % T2 + T0
    b = pixel // (W2 * H2 * T2)
    channel = c * kc + (u % FT) * ka + (h2 % FS) * ki + (w2 % FS) * kj
    v = tl.load(s_ptr + b * ssb + channel + (u // FT) * sst + (h2 // FS) * ssh + (w2 // FS) * ssw, mask=m)
    y = tl.load(x_ptr + e, mask=m).to(tl.float32) + v.to(tl.float32)
    tl.store(o_ptr + e, y.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _upsample(x_ptr, o_ptr, N, C, P, T, H2, W2, sxb, sxc, sxt, sxh, sxw, BLOCK: tl.constexpr):
    """o[n, c, r, q] (channels-last, whole, n = (b T + t) P + p) = x[b, p C + c, t, r // 2, q // 2]."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < N
    c = e % C
    pixel = e // C
    q = pixel % W2
    r = (pixel // W2) % H2
    n = pixel // (W2 * H2)
    p = n % P
    t = (n // P) % T
    b = n // (P * T)
    v = tl.load(x_ptr + b * sxb + (p * C + c) * sxc + t * sxt + (r // 2) * sxh + (q // 2) * sxw, mask=m)
    tl.store(o_ptr + e, v, mask=m)


def norm_silu(x: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, scale: float, out: torch.Tensor,
              split: int, norms: torch.Tensor | None = None) -> None:  # fmt: skip
    """``out`` = silu(y / max(||y||_channels, eps) * scale * gamma) with y = x + bias (bias: one value a
    channel, or None), any strides; PyTorch's bits when ``split`` is the thread split PyTorch's
    reduction uses for x's shape, or when ``norms`` (float32, [B, 1, T, H, W], contiguous) are the
    norms PyTorch computed (then ``split`` is unused)."""
    b, c, t, h, w = x.shape
    n = b * t * h * w
    pixels, channels, warps = (PIXELS, CHANNELS, 8) if norms is None else (GIVEN_PIXELS, GIVEN_CHANNELS, GIVEN_WARPS)
    _norm_silu[(triton.cdiv(n, pixels),)](
        x, x if bias is None else bias, gamma, out, x if norms is None else norms, n, c, t, h, w, *x.stride(),
        *out.stride(), scale, 1e-12, HAS_BIAS=bias is not None, ROUND_BF16=x.dtype == torch.bfloat16,
        HAS_NORM=norms is not None, SPLIT=split, P=pixels, BC=channels, num_warps=warps, enable_fp_fusion=False,
    )  # fmt: skip


def bias_residual(y: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, strides: tuple[int, int]) -> torch.Tensor:
    """``y.add_(bias[:, None, None, None]).add_(h)`` in one pass, for y and h channels-last, each
    perhaps the first channels of a wider tensor: ``strides`` are their pixels' (``_layouts.pixel_stride``);
    returns y."""
    n = y.numel()
    _bias_residual[(triton.cdiv(n, ELEMENTS),)](
        y, bias, h, n, y.shape[1], *strides, ROUND_BF16=y.dtype == torch.bfloat16,
        BLOCK=ELEMENTS, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return y


def subpixel_place(y: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out`` [N, C, 2H, 2W] (whole, channels-last) = the pixels a sub-pixel convolution's channels-last
    output y [N, 4C, H + 1, W + 1] holds (channel group (a, b) of pixel (i + a, j + b) is pixel
    (2i + a, 2j + b)), plus ``bias``: ``torch.add``'s bits in one coalesced pass."""
    n, c, h2, w2 = out.shape
    sn, _, sh, sw = y.stride()
    _subpixel_place[(triton.cdiv(out.numel(), ELEMENTS),)](
        y, y if bias is None else bias, out, out.numel(), c, h2, w2, sn, sh, sw,
        HAS_BIAS=bias is not None, BLOCK=ELEMENTS, num_warps=4,
    )  # fmt: skip


def shortcut_add(x: torch.Tensor, view: torch.Tensor, first: int, out: torch.Tensor) -> None:
    """``out`` = x + the shortcut ``view`` [B, C, T, FT, H, FS, W, FS] reads (a strided view), its frames
    (T and FT together) from ``first`` on, for x and ``out`` whole channels-last
    [B, C, T * FT - first, H * FS, W * FS]: ``torch.add``'s bits in one coalesced pass."""
    b, c, t2, h2, w2 = out.shape
    ssb, kc, sst, ka, ssh, ki, ssw, kj = view.stride()
    ft, fs = view.shape[3], view.shape[5]
    _shortcut_add[(triton.cdiv(out.numel(), ELEMENTS),)](
        x, view, out, out.numel(), c, t2, h2, w2, first, ft, fs, ssb, sst, ssh, ssw, kc, ka, ki, kj,
        BLOCK=ELEMENTS, num_warps=4,
    )  # fmt: skip


def upsample(x: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` [B * T * P, C, 2H, 2W] (whole, channels-last) = x [B, P * C, T, H, W]'s frames (channel
    group p of frame t: frame t P + p), each pixel repeated 2x2: one coalesced pass, x in any strides."""
    p = x.shape[1] // out.shape[1]
    _upsample[(triton.cdiv(out.numel(), ELEMENTS),)](
        x, out, out.numel(), out.shape[1], p, x.shape[2], out.shape[2], out.shape[3], *x.stride(),
        BLOCK=ELEMENTS, num_warps=4,
    )  # fmt: skip
