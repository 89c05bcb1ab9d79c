"""framepipe's Wan decoder step: diffusers' decoder modules and weights, run with fewer copies.

Bit-exact by construction. ``WanCausalConv3d`` concatenates its cache to its input and pads the
result (two copies of every activation a convolution reads); here each convolution's input window is
one zero-bordered tensor into which the norm + SiLU before it writes directly, so the convolution gets
a tensor of the same shape, strides and values, and cuDNN runs the same kernels on the same numbers.
On CUDA the norm's scale, gain, bias and SiLU are one fused kernel that repeats PyTorch's arithmetic
operation by operation (see Note [Exact fusion]); it is checked against PyTorch's own ops on the
device before first use and left out if it differs. In bfloat16 the norm accumulates in float32
without diffusers' float32 copy of the activation, where that was checked, per shape and strides,
to give the same bits (``verified``). Attention and resampling run diffusers' modules.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ._optional import require

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

DECODERS = ("framepipe", "diffusers")
_CACHE_T = 2  # frames of history a causal 3x3x3 convolution reads (diffusers' CACHE_T)


# Equivalences checked on the device at first use, per shape: key -> whether the bits were the same.
_VERIFIED: dict[tuple, bool] = {}


def verified_equivalences() -> dict[tuple, bool]:
    """What ``verified`` has checked so far in this process (for benchmarks and reports)."""
    return dict(_VERIFIED)


def verified(key: tuple, reference: Callable[[], torch.Tensor], candidate: Callable[[], torch.Tensor]) -> bool:
    """Whether ``candidate()`` gives ``reference()``'s bits for ``key`` (computed once per process)."""
    if key not in _VERIFIED:
        _VERIFIED[key] = same_bits(reference(), candidate())
    return _VERIFIED[key]


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm over channels that ``F.normalize`` divides by, as diffusers' ``WanRMS_norm`` computes
    it (bfloat16: in float32). For bfloat16 the float32 accumulation without the float32 copy of x,
    where it was verified to give the same bits for x's shape and strides."""
    if x.dtype != torch.bfloat16:
        return x.norm(2.0, 1, keepdim=True)

    def reference() -> torch.Tensor:
        return x.float().norm(2.0, 1, keepdim=True)

    def candidate() -> torch.Tensor:
        return torch.linalg.vector_norm(x, 2.0, dim=1, keepdim=True, dtype=torch.float32)

    if verified(("norm", tuple(x.shape), x.stride(), x.dtype, x.device), reference, candidate):
        return candidate()
    return reference()


def causal_window(shape: tuple[int, ...], pad: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized [B, C, T, H, W] input window whose spatial border of ``pad`` = (t, h, w) is
    zeroed: the zero padding ``F.pad`` adds; the history frames and the interior are written by the
    caller. Allocated per convolution, as diffusers' padded copy is, so peak memory stays its own."""
    window = torch.empty(shape, dtype=like.dtype, device=like.device)
    _, ph, pw = pad
    if ph:
        window[:, :, :, :ph].zero_()
        window[:, :, :, -ph:].zero_()
    if pw:
        window[:, :, :, ph : window.shape[3] - ph, :pw].zero_()
        window[:, :, :, ph : window.shape[3] - ph, -pw:].zero_()
    return window


class WanDecoderStep:
    """Decode one latent frame with ``vae``'s decoder: ``step(x, cache, first_chunk)`` equals
    ``vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)`` bit for bit.

    ``cache`` is diffusers' list (one entry per causal conv) kept across the frames of one video; its entries
    for the causal convolutions run here hold their windows' last two frames (zeros included).
    """

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.decoder = vae.decoder
        self.conv3d = torch.nn.Conv3d.forward
        self.fused: bool | None = None  # decided on the first call, on the decoder's device

    def __call__(self, x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        if self.fused is None:
            self.fused = fused_norm_silu_is_exact(x.device, next(self.decoder.parameters()).dtype)
        d = self.decoder
        idx = [0]
        x = self._causal_conv(d.conv_in, lambda out, x=x: out.copy_(x), x, d.conv_in.in_channels, cache, idx)
        x = self._residual(d.mid_block.resnets[0], x, cache, idx)
        for attention, resnet in zip(d.mid_block.attentions, d.mid_block.resnets[1:], strict=True):
            x = self._attention(attention, x)
            x = self._residual(resnet, x, cache, idx)
        for block in d.up_blocks:
            shortcut = x  # WanResidualUpBlock clones it; nothing below writes into x
            for resnet in block.resnets:
                x = self._residual(resnet, x, cache, idx)
            # WanUpBlock (2.1) holds its resampler in a list, WanResidualUpBlock (2.2) on its own
            upsamplers = getattr(block, "upsamplers", None)
            sampler = upsamplers[0] if upsamplers is not None else getattr(block, "upsampler", None)
            if sampler is not None:
                x = self._resample(sampler, x, cache, idx)
            if getattr(block, "avg_shortcut", None) is not None:
                x = x + block.avg_shortcut(shortcut, first_chunk=first_chunk)
        return self._causal_conv(d.conv_out, self._norm_silu(d.norm_out, x), x, x.shape[1], cache, idx)

    def _attention(self, attention, x: torch.Tensor) -> torch.Tensor:
        """The mid block's ``WanAttentionBlock`` (over each whole frame)."""
        return attention(x)

    def _resample(self, sampler, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """An up block's ``WanResample``."""
        return sampler(x, feat_cache=cache, feat_idx=idx)

    def _residual(self, block, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """``WanResidualBlock.forward`` (dropout is the identity at inference)."""
        shortcut = block.conv_shortcut  # a 1x1x1 conv whose F.pad(x, 0) is only a clone of x
        h = x if isinstance(shortcut, torch.nn.Identity) else self.conv3d(shortcut, x)
        y = self._causal_conv(block.conv1, self._norm_silu(block.norm1, x), x, x.shape[1], cache, idx)
        y = self._causal_conv(block.conv2, self._norm_silu(block.norm2, y), y, y.shape[1], cache, idx)
        return y.add_(h)

    def _norm_silu(self, norm, x: torch.Tensor) -> Callable[[torch.Tensor], object]:
        """What writes ``silu(norm(x))`` into a window's interior."""
        if self.fused:
            return lambda out: fused_norm_silu(x, norm, out)
        if x.is_cuda:  # CUDA's elementwise kernels do the same arithmetic whatever the output's strides
            return lambda out: torch.ops.aten.silu.out(norm(x), out=out)
        return lambda out: out.copy_(F.silu(norm(x)))  # the CPU's vectorized SiLU runs on contiguous outputs only

    def _causal_conv(self, conv, fill, x: torch.Tensor, channels: int, cache: list, idx: list[int]) -> torch.Tensor:
        """``WanCausalConv3d.forward`` over [its cache, x] with its causal and spatial zero padding,
        the window filled by ``fill``; the window's last two frames become the conv's cache."""
        pad_w, _, pad_h, _, pad_t, _ = conv._padding
        b, _, t, h, w = x.shape
        window = causal_window((b, channels, pad_t + t, h + 2 * pad_h, w + 2 * pad_w), (pad_t, pad_h, pad_w), x)
        rows, cols = slice(pad_h, pad_h + h), slice(pad_w, pad_w + w)
        fill(window[:, :, pad_t:, rows, cols])
        self._exchange(window[:, :, pad_t:], pad_h)
        kept = self._kept_rows(pad_h, h)
        previous = cache[idx[0]]
        if previous is None:
            window[:, :, :pad_t, kept, cols].zero_()
        else:
            window[:, :, :pad_t, kept, cols].copy_(previous)
        out = self.conv3d(conv, window)
        cache[idx[0]] = window[:, :, -_CACHE_T:, kept, cols].clone()
        idx[0] += 1
        return out

    def _exchange(self, window: torch.Tensor, pad: int) -> None:
        """Fill the ``pad`` rows above and below the interior of ``window`` (rows: dim -2): zeros here,
        already; a band of a split frame gets its neighbours' rows (``SplitDecoderStep``)."""

    def _kept_rows(self, pad: int, rows: int) -> slice:
        """The window rows a causal conv's cache keeps: the interior (the border is zero)."""
        return slice(pad, pad + rows)


# Note [Exact fusion]
# ~~~~~~~~~~~~~~~~~~~
# diffusers computes ``silu(F.normalize(x, dim=1) * scale * gamma + 0.0)`` as six kernels, each
# rounding its result to the tensor's dtype (bfloat16: the normalization in float32, then rounded).
# The fused kernel keeps PyTorch's norm (its reduction order is its own) and repeats every other step
# in the same order, with the same roundings: IEEE division (div_rn), no multiply-add contraction
# (enable_fp_fusion=False), libdevice's expf as PyTorch's CUDA build calls it, bfloat16 rounding
# after each op where PyTorch stores a bfloat16 tensor. ``fused_norm_silu_is_exact`` checks the
# result bit for bit against PyTorch's ops on the device before it is used.

_KERNEL = None
_EXACT: dict[tuple, bool] = {}


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl
        from triton.language.extra import libdevice

        @triton.jit
        def norm_silu(x_ptr, d_ptr, g_ptr, o_ptr, C, T, H, W,
                      sxb, sxc, sxt, sxh, sxw, sdb, sdt, sdh, sdw, sob, soc, sot, soh, sow,
                      scale, eps, ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
            row = tl.program_id(0).to(tl.int64)  # one (b, c, t, h) row of W values per program
            hh = row % H
            r = row // H
            tt = r % T
            r = r // T
            cc = r % C
            bb = r // C
            ww = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
            mask = ww < W
            x = tl.load(x_ptr + bb * sxb + cc * sxc + tt * sxt + hh * sxh + ww * sxw, mask=mask).to(tl.float32)
            d = tl.load(d_ptr + bb * sdb + tt * sdt + hh * sdh + ww * sdw, mask=mask)
            g = tl.load(g_ptr + cc).to(tl.float32)
            d = tl.maximum(d, eps, propagate_nan=tl.PropagateNan.ALL)
            y = tl.math.div_rn(x, d)
            if ROUND_BF16:
                y = y.to(tl.bfloat16).to(tl.float32)
            y = y * scale
            if ROUND_BF16:
                y = y.to(tl.bfloat16).to(tl.float32)
            y = y * g
            if ROUND_BF16:
                y = y.to(tl.bfloat16).to(tl.float32)
            y = y + 0.0  # diffusers adds its bias 0.0: -0.0 becomes +0.0
            y = tl.math.div_rn(y, 1.0 + libdevice.exp(-y))
            out = o_ptr + bb * sob + cc * soc + tt * sot + hh * soh + ww * sow
            tl.store(out, y.to(o_ptr.dtype.element_ty), mask=mask)

        _KERNEL = norm_silu
    return _KERNEL


def fused_norm_silu(x: torch.Tensor, norm, out: torch.Tensor) -> None:
    """Write ``silu(norm(x))`` into ``out`` (any strides) for a channel-first ``WanRMS_norm``."""
    denom = channel_norm(x)
    gamma = norm.gamma.reshape(-1)
    if not isinstance(norm.bias, float) or norm.bias != 0.0 or gamma.dtype != x.dtype:
        torch.ops.aten.silu.out(norm(x), out=out)
        return
    b, c, t, h, w = x.shape
    block = min(1024, 1 << max(5, math.ceil(math.log2(w))))
    _kernel()[(b * c * t * h, (w + block - 1) // block)](
        x, denom, gamma, out, c, t, h, w,
        *x.stride(), denom.stride(0), *denom.stride()[2:], *out.stride(),
        float(norm.scale), 1e-12, ROUND_BF16=x.dtype == torch.bfloat16, BLOCK=block,
        enable_fp_fusion=False,
    )  # fmt: skip


def fused_norm_silu_is_exact(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused kernel can run on ``device`` and gives PyTorch's bits there (checked once)."""
    if device.type != "cuda" or dtype not in (torch.float32, torch.bfloat16):
        return False
    key = (device, dtype)
    if key not in _EXACT:
        try:
            import triton  # noqa: F401
        except ImportError:
            _EXACT[key] = False
            return False
        wan = require("diffusers.models.autoencoders.autoencoder_kl_wan", "video")
        g = torch.Generator(device=device).manual_seed(0)
        norm = wan.WanRMS_norm(96, images=False).to(device, dtype)
        with torch.no_grad():
            norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device=device) * 2)
            x = torch.randn(1, 96, 3, 37, 70, generator=g, device=device) * 40
            x[:, :, 0, :4] = 0.0
            x[:, :, 1, :2] *= 1e-30
            x = x.to(dtype)[:, :, :, :, 1:69]  # strided input, as after a resampler
            want = torch.nn.functional.silu(norm(x))
            got = torch.empty(1, 96, 5, 39, 70, device=device, dtype=dtype)[:, :, 2:, 1:38, 1:69]
            try:
                fused_norm_silu(x, norm, got)
            except Exception as e:  # a Triton that cannot build it here: PyTorch's ops do the same work
                reason = f"{type(e).__name__}: {e}"
                warnings.warn(f"framepipe's fused norm + SiLU kernel is not used ({reason})", stacklevel=2)
                _EXACT[key] = False
                return False
        _EXACT[key] = same_bits(want, got)
    return _EXACT[key]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two float tensors hold the same bits (NaN payloads and the sign of zero included)."""
    as_int = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(as_int[a.dtype]), b.contiguous().view(as_int[b.dtype]))
