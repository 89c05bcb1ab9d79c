"""The fast decoder's Triton kernels, free of PyTorch's bits: Wan's channel RMS norm + SiLU, and a
3x3x3 convolution of a zero-bordered channels-last window (which, summing in cuDNN's order, also
serves the exact decoder where it gives cuDNN's bits: Note [Window convolution]).

``_exact_kernels.norm_silu`` repeats PyTorch's summation order and roundings, so it reads each pixel's
channels in slices, twice, and divides with IEEE division. Here one program holds whole pixels (all
their channels, contiguous channels-last) in registers: one read, the sum of squares as a tree, one
reciprocal a pixel, float32 throughout with one rounding at the store. The convolution: Note [Window
convolution] below. Imported only where Triton is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

VALUES = 4096  # values (pixels x channels, channels rounded up to a power of two) per program
WARPS = 4


@triton.jit
def _norm_silu_free(x_ptr, b_ptr, g_ptr, s_ptr, o_ptr, C, T, H, W, sxb, sxc, sxt, sxh, sxw, sob, soc, sot, soh,
                    sow, scale, eps, HAS_BIAS: tl.constexpr, SCALED: tl.constexpr, P: tl.constexpr,
                    BC: tl.constexpr):  # fmt: skip
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
    if SCALED:  # into FP8's range: a factor a channel
        y = y * tl.load(s_ptr + c, mask=c < C, other=0.0)[None, :]
    o_row = o_ptr + b.to(tl.int64) * sob + t.to(tl.int64) * sot + h.to(tl.int64) * soh
    o_at = w[:, None].to(tl.int64) * sow + c[None, :].to(tl.int64) * soc
    tl.store(o_row + o_at, y.to(o_ptr.dtype.element_ty), mask=m)


def norm_silu_free(x: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, scale: float,
                   out: torch.Tensor, factors: torch.Tensor | None = None) -> None:  # fmt: skip
    """``out`` = silu(y / max(||y||_channels, eps) * scale * gamma) with y = x + bias (bias: one value a
    channel, or None), any strides, computed in float32 in an order of its own (not PyTorch's bits);
    times ``factors`` (float32, one a channel) if given, before the one rounding to ``out``'s dtype
    (FP8: ``_fp8.py``)."""
    b, c, t, h, w = x.shape
    channels = triton.next_power_of_2(c)
    pixels = min(max(1, VALUES // channels), triton.next_power_of_2(w))
    _norm_silu_free[(b * t * h, triton.cdiv(w, pixels))](
        x, x if bias is None else bias, gamma, gamma if factors is None else factors, out, c, t, h, w, *x.stride(),
        *out.stride(), scale, 1e-12, HAS_BIAS=bias is not None, SCALED=factors is not None, P=pixels, BC=channels,
        num_warps=WARPS,
    )  # fmt: skip


# Note [Window convolution]
# A causal convolution's input window [T, H, W, C] (channels-last, one video, its zero border written)
# is a [T * H * W, C] matrix whose row p + dt * H * W + dh * W + dw is tap (dt, dh, dw) of the output
# computed at row p. So over the window's own grid the convolution is one GEMM of K = 27 * C: for each
# tap, a block of rows shifted by that tap's offset, times the tap's [C, Co] weights. Blocks of rows
# cover each frame's first H - 2 rows of the grid; the last two columns of each row are not outputs
# (their taps wrap into the next row): computed and not stored. Both operands come in by TMA (the input's
# rows past its end read as zeros), the weights from a channels-last copy ([Co, 3, 3, 3, C] is
# [Co, 27 * C]) whose output channels are zero-padded to the tile (read past their end as TMA's
# zeros instead, they were slower: ``WindowTile.weight_rows``).
# Programs take the frames of one block of rows one after another (and, within a frame, its output
# channel tiles), so that the rows their frame taps share are read close together in time. The output
# channels are rounded up to the tile (BN), or, as two dots on the same rows (BN + BN2: 96 = 64 + 32),
# not at all; the input channels are not (a step of K is 32 or 64 channels of one tap). The sum runs
# in float32 with one rounding at the store, the bias (if any) added first. A program whose tile holds
# every output channel may also apply the next RMS norm + SiLU to its pixels before that rounding
# (``NORM``), and store into the next convolution's window: the output never exists unnormed.
# The K loop takes the taps outer and the input channels inner, or (``CHANNELS_OUTER``) each slice of
# BK input channels outer and the 27 taps inner: the order of cuDNN's implicit GEMM kernels for
# bfloat16 on the H200 (cuDNN 9.19; its sm90 float32 kernels' too, once the operands are rounded to
# TF32 to nearest even: tried, no gain, ``exact_tiles``), whose K tile is that slice. Such a tile gives
# cuDNN's bits where BK is the K tile of the kernel cuDNN picks (32 for the 256x32x32 kernel of Wan
# 2.1's 96 output channels; also seen: 32 for a 128x128x32 kernel, 64 for a 256x128x64 one), so the
# exact decoder offers it too, and keeps it only where its first-use check finds those bits.


@triton.jit
def _biased(acc, bias_ptr, n0, Co, HAS_BIAS: tl.constexpr, BN: tl.constexpr):
    """Output channels [n0, n0 + BN) of a block of output pixels, the bias (if any) added."""
    if HAS_BIAS:
        n = n0 + tl.arange(0, BN)
        acc += tl.load(bias_ptr + n, mask=n < Co, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _normed(acc, factor, gamma_ptr, scale, n0, Co, BN: tl.constexpr):
    """silu(acc * factor * scale * gamma): ``_norm_silu_free``'s arithmetic, its factor given."""
    n = n0 + tl.arange(0, BN)
    gain = tl.load(gamma_ptr + n, mask=n < Co, other=0.0).to(tl.float32) * scale
    y = acc * factor[:, None] * gain[None, :]
    return y * tl.sigmoid(y)


@triton.jit
def _store_columns(o_ptr, acc, at, pixels, n0, Co, BN: tl.constexpr):
    """Output channels [n0, n0 + BN) of a block of output pixels at offsets ``at``: one rounding."""
    n = n0 + tl.arange(0, BN)
    mask = pixels[:, None] & (n < Co)[None, :]
    tl.store(o_ptr + at[:, None] + n[None, :], acc.to(o_ptr.dtype.element_ty), mask=mask)


# The output's strides (sot, soh, sow) stay specialized: Triton then knows them multiples of 16 and
# stores whole vectors; left unspecialized, a fast bf16 decode took 0.87 s instead of 0.65 (H200).
@triton.jit(do_not_specialize=["HW", "W", "H_out", "W_out", "T_out", "tiles_n"])
def _window_conv(a_desc, b_desc, b2_desc, o_ptr, bias_ptr, gamma_ptr, ws_ptr, scale, eps, C, HW, W, H_out, W_out,
                 T_out, Co, tiles_n, sot, soh, sow, HAS_BIAS: tl.constexpr, NORM: tl.constexpr, SCALED: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BN2: tl.constexpr, BK: tl.constexpr,
                 CHANNELS_OUTER: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    n0 = (pid % tiles_n) * (BN + BN2)
    t = (pid // tiles_n) % T_out
    q0 = (pid // tiles_n // T_out) * BM  # the block's first row within a frame of the window's grid
    m0 = t * HW + q0
    slices = C // BK
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if BN2 > 0:  # a second dot of BN2 columns on the same rows (96 = 64 + 32 channels, no padding)
        acc2 = tl.zeros((BM, BN2), dtype=tl.float32)
    for k in range(27 * slices):
        if CHANNELS_OUTER:  # cuDNN's order: a slice of input channels, then its 27 taps
            tap = k % 27
            c0 = (k // 27) * BK
        else:
            tap = k // slices
            c0 = (k % slices) * BK
        shift = (tap // 9) * HW + (tap // 3 % 3) * W + tap % 3
        a = a_desc.load([m0 + shift, c0])
        acc = tl.dot(a, b_desc.load([n0, tap * C + c0]).T, acc, input_precision=PRECISION)
        if BN2 > 0:
            acc2 = tl.dot(a, b2_desc.load([n0 + BN, tap * C + c0]).T, acc2, input_precision=PRECISION)
    q = q0 + tl.arange(0, BM)
    h = q // W
    w = q % W
    at = t.to(tl.int64) * sot + h.to(tl.int64) * soh + w.to(tl.int64) * sow
    pixels = (h < H_out) & (w < W_out)
    if SCALED:  # FP8 operands: the weights' scale a output channel (``_fp8.py``)
        n = n0 + tl.arange(0, BN)
        acc = acc * tl.load(ws_ptr + n, mask=n < Co, other=0.0)[None, :]
    acc = _biased(acc, bias_ptr, n0, Co, HAS_BIAS, BN)
    if BN2 > 0:
        acc2 = _biased(acc2, bias_ptr, n0 + BN, Co, HAS_BIAS, BN2)
    if NORM:  # the tile holds every channel (tiles_n == 1); channels past Co hold 0.0
        squares = tl.sum(acc * acc, axis=1)
        if BN2 > 0:
            squares += tl.sum(acc2 * acc2, axis=1)
        factor = 1.0 / tl.maximum(tl.sqrt(squares), eps)
        acc = _normed(acc, factor, gamma_ptr, scale, n0, Co, BN)
        if BN2 > 0:
            acc2 = _normed(acc2, factor, gamma_ptr, scale, n0 + BN, Co, BN2)
    _store_columns(o_ptr, acc, at, pixels, n0, Co, BN)
    if BN2 > 0:
        _store_columns(o_ptr, acc2, at, pixels, n0 + BN, Co, BN2)


def window_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels: int, rows: int,
                columns: int, depth: int, warps: int, stages: int, out: torch.Tensor | None = None,
                norm: tuple[torch.Tensor, float] | None = None, channels_outer: bool = False,
                weight_scales: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """The 3x3x3 convolution (no padding of its own) of ``x`` [1, C, T, H, W], contiguous channels-last,
    with the first ``channels`` output channels of ``weight`` [Co, C, 3, 3, 3] (contiguous
    channels-last, Co >= channels) and ``bias`` (or None): a [1, channels, T - 2, H - 2, W - 2] tensor,
    ``out`` (any strides, channels innermost: a window's interior) or a new one, channels-last. Tiles
    of ``rows`` output pixels by ``columns`` output channels (a power of two, or the sum of two: two
    dots on the same rows) by ``depth`` input channels (C a multiple of it); TF32 products for float32.
    ``norm`` = (gamma, scale): silu(its RMS norm over the channels), as ``norm_silu_free``, stored in
    place of the convolution; one tile must hold every channel (``columns`` >= ``channels``).
    ``channels_outer``: the K loop in cuDNN's order (Note [Window convolution]). ``weight_scales``
    (float32, one a output channel): x and ``weight`` are FP8 (e4m3), the sums multiplied by them
    before the bias, the output of ``out_dtype`` (``_fp8.py``)."""
    _, c, t, h, w = x.shape
    first = 1 << (columns.bit_length() - 1)
    second = columns - first
    dtype = out_dtype or x.dtype
    if out is None:
        out = torch.empty((1, channels, t - 2, h - 2, w - 2), dtype=dtype, device=x.device,
                          memory_format=torch.channels_last_3d)  # fmt: skip
    if out.shape != (1, channels, t - 2, h - 2, w - 2) or out.stride(1) != 1 or out.dtype != dtype:
        raise ValueError(f"window_conv: out {tuple(out.shape)} {out.dtype} strides {out.stride()} does not fit")
    if norm is not None and columns < channels:
        raise ValueError(f"window_conv: a norm needs one tile of every channel, {columns} < {channels}")
    # views, no copies: channels-last, x is [T * H * W, C] and the weight [Co, 27 * C]
    a = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 4, 1).view(-1, c), [rows, depth])
    weights = weight.permute(0, 2, 3, 4, 1).view(weight.shape[0], -1)
    b = TensorDescriptor.from_tensor(weights, [first, depth])
    b2 = TensorDescriptor.from_tensor(weights, [second, depth]) if second else b
    tiles_n = triton.cdiv(channels, columns)
    grid = (triton.cdiv((h - 2) * w, rows) * (t - 2) * tiles_n,)
    gamma, scale = norm if norm is not None else (x, 1.0)
    if weight_scales is not None and (second or norm is not None):
        raise ValueError("window_conv: FP8 operands take a tile of one dot and no norm")
    _window_conv[grid](
        a, b, b2, out, x if bias is None else bias, gamma, out if weight_scales is None else weight_scales, scale,
        1e-12, c, h * w, w, h - 2, w - 2, t - 2, channels, tiles_n, *out.stride()[2:], HAS_BIAS=bias is not None,
        NORM=norm is not None, SCALED=weight_scales is not None, BM=rows, BN=first, BN2=second, BK=depth,
        CHANNELS_OUTER=channels_outer, PRECISION="tf32" if x.dtype == torch.float32 else None, num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return out
