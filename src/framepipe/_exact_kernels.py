"""The Triton kernels behind framepipe's decoder step, each several of PyTorch's ops in one pass, or
one of them faster than PyTorch's strided kernels run it.

``norm_silu``: a convolution's bias (optional), Wan's channel RMS norm and SiLU. ``bias_residual``: a
convolution's bias and a residual block's shortcut. ``bias_add``: a convolution's bias alone.
``widened``: the float32 channel-first copy PyTorch's norm of 1024 channels reads. For
``_resampling.py``: ``subpixel_place``, a sub-pixel convolution's output pixels put in place, bias
added; ``upsample_copy``, a resampler's frames upsampled; ``shortcut_add``, a Wan 2.2 up block's output
plus its upsampled input. Imported only where Triton is (CUDA). See Note [Exact fusion] in
``_fused.py`` for why their bits are PyTorch's: the sum of squares over channels is added up in the
order PyTorch's reduction kernel uses (``SPLIT`` interleaved threads of four accumulators each, then
a tree, in each of ``BLOCKS`` thread blocks, then the blocks' sums in turn); every other step is
repeated operation by operation with PyTorch's roundings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# The norm kernel's tiles: (pixels (b, t, h, w positions) a program, channels a step of its normalizing
# loop, warps a program), the fastest of sweeps over Wan 2.1's and 2.2's norms (``benchmarks/norm_tiles.py``,
# docs/benchmarks.md): few pixels of many channels from 128 channels up, many pixels of few channels
# below (Wan 2.1's 96-channel norms ran 2.2x slower on the wide tile).
WIDE_TILE = (16, 64, 4)
NARROW_TILE = (64, 16, 8)
NARROW_BELOW = 128  # channels under which a norm takes NARROW_TILE
ELEMENTS = 1024  # values per program of the bias + residual kernel
TILE_PIXELS, TILE_CHANNELS = 32, 128  # a program of the (pixels x channels) tile kernels below


@triton.jit
def _halve(t, B: tl.constexpr, N: tl.constexpr, P: tl.constexpr):
    """[B * N, P] -> [B * N // 2, P]: in each of B groups of N rows, row i plus row i + N // 2 (one step
    of PyTorch's block_y_reduce tree)."""
    lo, hi = tl.split(tl.permute(tl.reshape(t, [B, 2, N // 2, P]), [0, 2, 3, 1]))
    return tl.reshape(lo + hi, [B * (N // 2), P])


@triton.jit
def _tree(t, B: tl.constexpr, N: tl.constexpr, P: tl.constexpr):
    """[B * N, P] -> [B, P]: each group of N rows (a power of two up to 16) summed as PyTorch's
    block_y_reduce sums its N threads' values, halving."""
    if N >= 16:
        t = _halve(t, B, 16, P)
    if N >= 8:
        t = _halve(t, B, 8, P)
    if N >= 4:
        t = _halve(t, B, 4, P)
    if N >= 2:
        t = _halve(t, B, 2, P)
    return t


@triton.jit
def _in_order(t, M: tl.constexpr, S: tl.constexpr, P: tl.constexpr):
    """[M * S, P] -> [S, P]: row y = ((t[y] + t[S + y]) + t[2S + y]) + t[3S + y] for M = 4 (M = 1, 2 or
    4): thread y of PyTorch's last thread block adding the staged sums of blocks y, y + S, ..."""
    if M == 1:
        s = t
    else:
        t = tl.permute(tl.reshape(t, [M, S, P]), [1, 2, 0])
        if M == 2:
            m0, m1 = tl.split(t)
            s = m0 + m1
        else:
            even, odd = tl.split(tl.reshape(t, [S, P, 2, 2]))
            m0, m2 = tl.split(even)
            m1, m3 = tl.split(odd)
            s = ((m0 + m1) + m2) + m3
    return s


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
                  SPLIT: tl.constexpr, BLOCKS: tl.constexpr, KP: tl.constexpr, P: tl.constexpr):  # fmt: skip
    """The L2 norm over C channels of P pixels, in PyTorch's ``ReduceOp`` order: thread y of SPLIT in
    thread block k of BLOCKS adds channels k SPLIT + y + j G (G = SPLIT BLOCKS threads a pixel) into
    four accumulators in turn (``vt0`` = 4, fused multiply-add), combined ((a0 + a1) + a2) + a3, then
    the block's threads pairwise, halving; over several blocks, thread y of the last one adds blocks
    y, y + SPLIT, ... in turn and the threads combine as before (``global_reduce``). IEEE square root.
    KP: BLOCKS rounded up to a power of two (the blocks past BLOCKS hold zeros)."""
    Q: tl.constexpr = SPLIT * KP
    r = tl.arange(0, 4 * Q)  # row r = i Q + k SPLIT + y holds accumulator i of thread y of block k
    lane = (r // Q) * (SPLIT * BLOCKS) + r % Q  # its channel within a step (contiguous where KP = BLOCKS)
    acc = tl.zeros([4 * Q, P], dtype=tl.float32)
    for c0 in range(0, C, 4 * SPLIT * BLOCKS):
        c = tl.where(r % Q < SPLIT * BLOCKS, c0 + lane, C)  # a block past BLOCKS reads nothing
        m = (c < C)[:, None] & mask[None, :]
        x = _load(x_ptr, b_ptr, c, offsets, m, C, sxc, HAS_BIAS, ROUND_BF16)
        acc = tl.fma(x, x, acc)  # a missing channel adds +0.0 to a sum that is >= +0.0: no change
    even, odd = tl.split(tl.reshape(tl.permute(tl.reshape(acc, [4, Q, P]), [1, 2, 0]), [Q, P, 2, 2]))
    a0, a2 = tl.split(even)
    a1, a3 = tl.split(odd)
    t = _tree(((a0 + a1) + a2) + a3, KP, SPLIT, P)  # [KP, P]: each block's sum
    if KP > SPLIT:  # thread y of the last block adds blocks y, y + SPLIT, ... in turn; then the tree
        t = _tree(_in_order(t, KP // SPLIT, SPLIT, P), 1, SPLIT, P)
    if KP <= SPLIT:  # thread y < KP of the last block holds block y's sum, the others 0.0: a tree over KP
        t = _tree(t, 1, KP, P)
    return tl.sqrt_rn(tl.reshape(t, [P]))


@triton.jit
def _norm_silu(x_ptr, b_ptr, g_ptr, o_ptr, n_ptr, N, C, T, H, W, sxb, sxc, sxt, sxh, sxw, sob, soc, sot, soh, sow,
               scale, eps, HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr, HAS_NORM: tl.constexpr,
               SPLIT: tl.constexpr, BLOCKS: tl.constexpr, KP: tl.constexpr, P: tl.constexpr,
               BC: tl.constexpr):  # fmt: skip
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
        d = _channel_norm(x_ptr, b_ptr, x_at, mask, C, sxc, HAS_BIAS, ROUND_BF16, SPLIT, BLOCKS, KP, P)
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
def _tile(BP: tl.constexpr, BC: tl.constexpr, N, C):
    """This program's tile: pixels p (of N) and channels c (of C), and the mask of those that exist."""
    p = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    return p, c, (p < N)[:, None] & (c < C)[None, :]


@triton.jit
def _coordinates(p, T, H, W):
    """Pixel p's (b, t, h, w) in a [B, C, T, H, W] tensor, pixels counted in (b, t, h, w) order."""
    return p // (W * H * T), (p // (W * H)) % T, (p // W) % H, p % W


@triton.jit
def _address(b, t, h, w, c, sb, sc, st, sh, sw):
    """[pixels, channels] offsets of channels c of pixels (b, t, h, w) in a tensor of strides sb ... sw."""
    return (b * sb + t * st + h * sh + w * sw)[:, None] + c[None, :].to(tl.int64) * sc


@triton.jit
def _shortcut_add(x_ptr, s_ptr, o_ptr, N, C, T, H, W, sxb, sxc, sxt, sxh, sxw, ssb, ssc, sst, ssh, ssw,
                  sob, soc, sot, soh, sow, FT, A0, FS, K0, K1, K2, K3, BP: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    """o[b, c, t, h, w] = x[b, c, t, h, w] + s[b, c K0 + a K1 + i K2 + j K3, t // FT, h // FS, w // FS]
    with a = t % FT + A0, i = h % FS, j = w % FS; the add in float32, rounded once."""
    p, c, m = _tile(BP, BC, N, C)
    b, t, h, w = _coordinates(p, T, H, W)
    x_at = _address(b, t, h, w, c, sxb, sxc, sxt, sxh, sxw)
    source = (c[None, :] * K0 + ((t % FT + A0) * K1 + (h % FS) * K2 + (w % FS) * K3)[:, None]).to(tl.int64)
    s_at = (b * ssb + (t // FT) * sst + (h // FS) * ssh + (w // FS) * ssw)[:, None] + source * ssc
    y = tl.load(x_ptr + x_at, mask=m).to(tl.float32) + tl.load(s_ptr + s_at, mask=m).to(tl.float32)
    o_at = _address(b, t, h, w, c, sob, soc, sot, soh, sow)
    tl.store(o_ptr + o_at, y.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _upsample_copy(x_ptr, o_ptr, N, C, T, P, H, W, sxb, sxc, sxt, sxh, sxw, son, soc, soh, sow,
                   BP: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    """o[(b T + t) P + p, c, r, q] = x[b, p C + c, t, r // 2, q // 2] for o's N pixels (n, r, q): a 2x
    nearest upsampling of x's frames into one batch, P channel groups of x its consecutive frames."""
    i, c, m = _tile(BP, BC, N, C)
    q = i % (2 * W)
    r = (i // (2 * W)) % (2 * H)
    n = i // (4 * W * H)
    p, t, b = n % P, (n // P) % T, n // (P * T)
    x_at = (b * sxb + p * C * sxc + t * sxt + (r // 2) * sxh + (q // 2) * sxw)[:, None] + c[None, :].to(tl.int64) * sxc
    o_at = (n * son + r * soh + q * sow)[:, None] + c[None, :].to(tl.int64) * soc
    tl.store(o_ptr + o_at, tl.load(x_ptr + x_at, mask=m), mask=m)


@triton.jit
def _bias_add(y_ptr, b_ptr, N, C, SY, BP: tl.constexpr, BC: tl.constexpr):
    """y[p, c] += bias[c] over N channels-last pixels (pixel stride SY), the add in float32, rounded once."""
    p, c, m = _tile(BP, BC, N, C)
    at = p[:, None] * SY + c[None, :]
    y = tl.load(y_ptr + at, mask=m).to(tl.float32) + tl.load(b_ptr + c, mask=c < C).to(tl.float32)[None, :]
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _widened(x_ptr, b_ptr, o_ptr, N, C, T, H, W, sxb, sxc, sxt, sxh, sxw, HAS_BIAS: tl.constexpr,
             ROUND_BF16: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    """o (float32, [B, C, T, H, W] contiguous) = x (+ bias, rounded to x's dtype), for N pixels of x."""
    p, c, m = _tile(BP, BC, N, C)
    b, t, h, w = _coordinates(p, T, H, W)
    x_at = _address(b, t, h, w, c, sxb, sxc, sxt, sxh, sxw)
    x = tl.load(x_ptr + x_at, mask=m).to(tl.float32)
    if HAS_BIAS:
        x = x + tl.load(b_ptr + c, mask=c < C).to(tl.float32)[None, :]
        if ROUND_BF16:
            x = x.to(tl.bfloat16).to(tl.float32)
    thw = T * H * W
    o_at = (b * C * thw + p % thw)[:, None] + c[None, :].to(tl.int64) * thw
    tl.store(o_ptr + o_at, x, mask=m)


def norm_silu(x: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, scale: float, out: torch.Tensor,
              split: tuple[int, int], norms: torch.Tensor | None = None) -> None:  # fmt: skip
    """``out`` = silu(y / max(||y||_channels, eps) * scale * gamma) with y = x + bias (bias: one value a
    channel, or None), any strides; PyTorch's bits when ``split`` is the (threads, thread blocks) among
    which PyTorch's reduction shares each pixel's channels for x's shape (``_fused.reduction_split``),
    or when ``norms`` (float32, [B, 1, T, H, W], contiguous) are the norms PyTorch computed (then
    ``split`` is unused)."""
    b, c, t, h, w = x.shape
    n = b * t * h * w
    threads, blocks = split
    pixels, channels, warps = norm_tile(c)
    _norm_silu[(triton.cdiv(n, pixels),)](
        x, x if bias is None else bias, gamma, out, x if norms is None else norms, n, c, t, h, w, *x.stride(),
        *out.stride(), scale, 1e-12, HAS_BIAS=bias is not None, ROUND_BF16=x.dtype == torch.bfloat16,
        HAS_NORM=norms is not None, SPLIT=threads, BLOCKS=blocks, KP=triton.next_power_of_2(blocks), P=pixels,
        BC=channels, num_warps=warps, enable_fp_fusion=False,
    )  # fmt: skip


def norm_tile(channels: int) -> tuple[int, int, int]:
    """The norm kernel's (pixels, channels a step, warps) for a norm over ``channels``; any tile gives the
    same bits (a pixel's order is its split's), so the choice is speed alone."""
    return NARROW_TILE if channels < NARROW_BELOW else WIDE_TILE


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


def _tiles(pixels: int, channels: int) -> tuple[int, int]:
    """The launch grid of the tile kernels: one program a tile of pixels x channels."""
    return triton.cdiv(pixels, TILE_PIXELS), triton.cdiv(channels, TILE_CHANNELS)


def shortcut_add(x: torch.Tensor, s: torch.Tensor, steps: tuple[int, int, int, int], ft: int, fs: int,
                 first_chunk: bool) -> torch.Tensor:  # fmt: skip
    """x plus ``DupUp3D``'s output for its input s (``_resampling.shortcut_added``: the same sum), in one
    pass that reads s where each output value's input value is, in x's layout (any strides)."""
    out = torch.empty_like(x)
    b, c, t, h, w = x.shape
    n = b * t * h * w
    first = first_chunk and ft > 1  # diffusers keeps only each first-chunk frame's last time step
    _shortcut_add[_tiles(n, c)](
        x, s, out, n, c, t, h, w, *x.stride(), *s.stride(), *out.stride(), 1 if first else ft,
        ft - 1 if first else 0, fs, *steps, BP=TILE_PIXELS, BC=TILE_CHANNELS, num_warps=4,
    )  # fmt: skip
    return out


def upsample_copy(x: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` [B * T * P, C, 2H, 2W] (any strides) = x [B, P * C, T, H, W]'s frames upsampled 2x, nearest
    (``_resampling.upsampled``: the same values), channel group p of x frame p of each P: one pass."""
    b, _, t, h, w = x.shape
    n, c = out.shape[0] * out.shape[2] * out.shape[3], out.shape[1]
    son, soc, soh, sow = out.stride()
    _upsample_copy[_tiles(n, c)](
        x, out, n, c, t, out.shape[0] // (b * t), h, w, *x.stride(), son, soc, soh, sow,
        BP=TILE_PIXELS, BC=TILE_CHANNELS, num_warps=4,
    )  # fmt: skip


def bias_add(y: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """``y.add_(bias)`` over y's channels (dim 1) for channels-last y whose pixels are ``stride`` apart
    (``_layouts.pixel_stride``): PyTorch's bits, in one coalesced pass; returns y."""
    n, c = y.numel() // y.shape[1], y.shape[1]
    _bias_add[_tiles(n, c)](y, bias, n, c, stride, BP=TILE_PIXELS, BC=TILE_CHANNELS, num_warps=4)
    return y


def widened(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A float32 contiguous (channel-first) copy of x [B, C, T, H, W] (+ ``bias``, rounded to x's dtype
    first, as ``torch.add`` rounds), from any strides: one pass, read along the channels."""
    b, c, t, h, w = x.shape
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    n = b * t * h * w
    _widened[_tiles(n, c)](
        x, x if bias is None else bias, out, n, c, t, h, w, *x.stride(), HAS_BIAS=bias is not None,
        ROUND_BF16=x.dtype == torch.bfloat16, BP=TILE_PIXELS, BC=TILE_CHANNELS, num_warps=4,
    )  # fmt: skip
    return out
