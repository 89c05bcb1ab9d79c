"""framepipe's Wan decoder step: diffusers' decoder modules and weights, run with fewer copies.

Bit-exact by construction and by check. ``WanCausalConv3d`` concatenates its cache to its input and
pads the result (two copies of every activation a convolution reads); here each convolution's input
window is one zero-bordered tensor into which the norm + SiLU before it writes directly. On CUDA the
norm + SiLU is one Triton kernel that adds up each pixel's sum of squares in PyTorch's own order and
repeats every other step with PyTorch's roundings (Note [Exact fusion], ``_fused.py``); a
convolution's bias is added by the kernel that reads its output (the next norm's, or one bias +
residual kernel); the activations live channels-last (NDHWC), where cuDNN reads them without its
layout transposes, the resamplers' included, and a convolution may be computed with its output
channels padded to cuDNN's tile (``padded_channels``) where that is faster and keeps the bits
(``fastest_way``). Each is checked bit for bit against PyTorch on the device, per shape, before
first use (``_equivalence.py``); where a check fails, that step runs as diffusers runs it. The
attention runs diffusers' module. The fast decoder (``decoder="fast"``, opt-in) takes each
convolution's fastest way whatever its bits (its own Triton kernel's among them, ``_window_conv.py``),
and runs a resampler sub-pixel where that is faster (``_resampling.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ._attention import explicit_attention
from ._choices import DECODERS
from ._equivalence import fastest_way, probe
from ._fp8 import E4M3, fp8_copies, fp8_fits, fp8_tiles
from ._fused import add_bias_residual, norm_fusable, norm_silu, norm_silu_fast, norm_silu_is_exact
from ._layouts import (
    CHANNELS_LAST,
    added,
    channel_first,
    channels_last_format,
    conv_copies,
    copy_bits,
    padded_channels,
    silu_into,
)
from ._resampling import shortcut_added, subpixel_conv, subpixel_fits, upsampled
from ._window_conv import WindowTile, exact_tiles, two_dot_tile, window_convolved, window_tiles

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

_CACHE_T = 2  # frames of history a causal 3x3x3 convolution reads (diffusers' CACHE_T)


def causal_window(
    shape: tuple[int, ...],
    pad: tuple[int, int, int],
    like: torch.Tensor,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """An uninitialized [B, C, T, H, W] input window (NDHWC in memory if ``channels_last``; of
    ``dtype``, else like's) whose
    frames after the first ``pad[0]`` (the history, written by the caller whole, border included) have
    their spatial border of ``pad`` = (t, h, w) zeroed: the zero padding ``F.pad`` adds; the interior
    is written by the caller too. Allocated per convolution, as diffusers' padded copy is, so peak
    memory stays its own."""
    layout = CHANNELS_LAST if channels_last else torch.contiguous_format
    window = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=layout)
    pt, ph, pw = pad
    frames = window[:, :, pt:]
    if ph:
        frames[:, :, :, :ph].zero_()
        frames[:, :, :, -ph:].zero_()
    if pw:
        frames[:, :, :, ph : window.shape[3] - ph, :pw].zero_()
        frames[:, :, :, ph : window.shape[3] - ph, -pw:].zero_()
    return window


def fused_fits(latents: torch.Tensor) -> bool:
    """Whether these latents take the fused kernels and channels-last convolutions: one video, at
    least 128 latent pixels a frame. In a batch of more, diffusers' attention block hands on its output
    channels-last (its [B, C, H, W] view of the attention's result has channels innermost, and PyTorch
    takes it as channels-last only where the batch stride is not the degenerate one of a single
    video), so the norms after it reduce channels innermost, an order the fused kernel does not
    repeat. Smaller frames leave PyTorch's reduction so few pixels that it spreads each one's channels
    over up to 32 threads, more than the kernel's tree combines (``_fused.KERNEL_SPLITS``), and a Wan
    2.2 bf16 decode of 4x6 latent frames gave other bits (H200, 2026-12-01). Such decodes run
    PyTorch's ops: the same bits, slower."""
    return latents.shape[0] == 1 and latents.shape[-2] * latents.shape[-1] >= 128


class _NoCache(list):
    """A causal cache that keeps nothing: every entry reads as None (no history) and writes are dropped.
    A step run with it makes its first-use checks without holding a video's cache."""

    def __getitem__(self, i: int) -> None:
        return None

    def __setitem__(self, i: int, value: object) -> None:
        pass


# The decoders (by their parameters' shapes), latent frame shapes, dtypes, devices and exactness whose
# first-use checks have run (``WanDecoderStep.run_checks``).
_CHECKED: set[tuple] = set()


def copy_of(x: torch.Tensor) -> Callable[[torch.Tensor], object]:
    """What fills a window's interior with x as it is (a convolution with no norm before it)."""
    return lambda out: out.copy_(x)


#: The decoders ``WanDecoderStep`` runs: all but diffusers' own forward (the exact one, the fast one, the FP8 one).
STEP_DECODERS = tuple(name for name in DECODERS if name != "diffusers")


class WanDecoderStep:
    """Decode one latent frame with ``vae``'s decoder: ``step(x, cache, first_chunk)`` equals
    ``vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)`` bit for bit
    (``decoder`` "framepipe"; "fast" and "fast-fp8" change the bits, ``docs/benchmarks.md``).

    ``cache`` is diffusers' list (one entry per causal conv) kept across the frames of one video; its entries
    for the causal convolutions run here hold their windows' last two frames whole: the zero frames
    before the first, and each frame's zero border (so that it goes back into the next window in one
    contiguous copy channels-last). An entry, once made, is written in place from then on, and the first
    chunk reads none: a list of buffers can serve video after video (``_graphs.py`` replays its chunks
    with their buffers).
    """

    def __init__(self, vae: AutoencoderKLWan, decoder: str = "framepipe") -> None:
        if decoder not in STEP_DECODERS:
            raise ValueError(f"WanDecoderStep runs {', '.join(STEP_DECODERS)}, not {decoder!r}")
        self.decoder = vae.decoder
        self.name = decoder
        self.fused: bool | None = None  # decided on the first call, on the decoder's device
        self.copies: dict[tuple, tuple] = {}  # (conv, channels or "fp8") -> its copies, looked up once a video
        self.first_chunk = True  # the call's: the first chunk reads no history

    def __call__(self, x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        if self.fused is None:
            self.fused = fused_fits(x) and norm_silu_is_exact(x.device, next(self.decoder.parameters()).dtype)
        self.first_chunk = first_chunk
        d = self.decoder
        idx = [0]
        x = added(*self._causal_conv(d.conv_in, copy_of(x), x, d.conv_in.in_channels, cache, idx))
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
                x = self._shortcut_added(block.avg_shortcut, x, shortcut)
        fill = self._norm_silu(d.norm_out, x)
        x = added(*self._causal_conv(d.conv_out, fill, x, x.shape[1], cache, idx))
        return x.contiguous()

    def run_checks(self, x: torch.Tensor) -> None:
        """Make the first-use checks and choices (``_equivalence.py``) for latent frames like ``x`` ([B, C,
        1, H, W]) now: one first chunk and one later chunk of x, their output and cache dropped. Made
        during a decode, the checks' random inputs and outputs come on top of the video's causal cache
        (its first decode then peaked 0.9-3.3 GiB above diffusers' chunked one); made here, on top of one
        chunk's activations alone. Once per decoder architecture and frame shape in a process."""
        key = (tuple(p.shape for p in self.decoder.parameters()), tuple(x.shape), x.dtype, x.device, self.name)
        if key in _CHECKED or not (x.is_cuda and fused_fits(x)):  # else there is nothing to check
            return
        for first_chunk in (True, False):
            self(x, _NoCache(), first_chunk=first_chunk)
        _CHECKED.add(key)

    @property
    def exact(self) -> bool:
        """Whether this is the exact decoder; else a fast one, whose convolutions may change the bits."""
        return self.name == "framepipe"

    @property
    def fp8(self) -> bool:
        """Whether the residual blocks' convolutions take e4m3 operands (``_fp8.py``)."""
        return self.name == "fast-fp8"

    @property
    def channels_last(self) -> bool:
        """Whether the activations live channels-last: with the fused kernels, which read any layout."""
        return bool(self.fused)

    def _attention(self, attention, x: torch.Tensor) -> torch.Tensor:
        """The mid block's ``WanAttentionBlock`` (over each whole frame), on x as diffusers holds it;
        the fast decoder's computed explicitly where that is faster (``_attention.py``)."""
        x = channel_first(x)
        if self.exact or not self.channels_last:
            return attention(x)
        key = ("attention", tuple(x.shape), x.dtype, x.device)
        run = lambda way: attention(x) if way == "sdpa" else explicit_attention(attention, x)  # noqa: E731
        return run(fastest_way(key, lambda: None, run, ("sdpa", "explicit"), device=x.device, exact=False))

    def _resample(self, sampler, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """An up block's ``WanResample`` step by step: the time convolution (upsample3d) with diffusers'
        cache rules, the nearest 2x upsampling as one copy that also interleaves the time
        convolution's frame pairs, the 3x3 convolution (the fast decoder: sub-pixel where faster)."""
        if sampler.mode not in ("upsample2d", "upsample3d"):  # not in Wan's decoders
            return sampler(channel_first(x), feat_cache=cache, feat_idx=idx)
        pairs = False
        if sampler.mode == "upsample3d":
            if self.first_chunk:  # no time upsampling; the second chunk's history is zeros (diffusers' "Rep")
                if cache[idx[0]] is not None:
                    cache[idx[0]].zero_()
                idx[0] += 1
            else:
                x = added(*self._causal_conv(sampler.time_conv, copy_of(x), x, x.shape[1], cache, idx))
                pairs = True  # channels [0, c) are the even output frames, [c, 2c) the odd ones
        conv, way = sampler.resample[1], "upsampled"
        if not self.exact and self.channels_last and subpixel_fits(conv):  # the fast decoder: either way
            sample = functools.cache(lambda: probe(x).contiguous(memory_format=CHANNELS_LAST))
            key = ("resample", tuple(x.shape), pairs, tuple(conv.weight.shape), x.dtype, x.device)
            run = lambda way: self._upsampling(conv, sample(), pairs, way)  # noqa: E731
            way = fastest_way(key, sample, run, ("upsampled", "subpixel"), device=x.device, exact=False)
        y = self._upsampling(conv, x, pairs, way)
        return y.unflatten(0, (x.shape[0], -1)).transpose(1, 2)  # diffusers' view + permute

    def _shortcut_added(self, module, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """x plus a Wan 2.2 up block's ``avg_shortcut`` of its input, read in place (``_resampling.py``)."""
        added_ = shortcut_added(module, x, shortcut, self.first_chunk)
        if added_ is not None:
            return added_
        return x + module(channel_first(shortcut), first_chunk=self.first_chunk)

    def _upsampling(self, conv: torch.nn.Conv2d, x: torch.Tensor, pairs: bool, way: str) -> torch.Tensor:
        """The upsampled frames convolved [B * T * P, Co, 2H, 2W], ``way`` "upsampled" (diffusers'
        bits) or "subpixel" (``_resampling.py``)."""
        if way == "subpixel":
            return subpixel_conv(conv, x, pairs)
        return self._upsample_conv(conv, upsampled(x, pairs, self.channels_last))

    def _upsample_conv(self, conv: torch.nn.Conv2d, frames: torch.Tensor) -> torch.Tensor:
        """A resampler's 3x3 convolution (padding 1) over the upsampled frames [B * T, C, H, W]."""
        return added(*self._conv(conv, frames))

    def _residual(self, block, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """``WanResidualBlock.forward`` (dropout is the identity at inference). Channels-last, the
        convolutions' biases are left to the kernels that read their outputs: conv1's to norm2's
        kernel (or, in the fast decoder, norm2 + SiLU inside conv1's own: ``_norm_tile``),
        conv2's to the residual add."""
        shortcut = block.conv_shortcut  # a 1x1x1 conv whose F.pad(x, 0) is only a clone of x
        h = x if isinstance(shortcut, torch.nn.Identity) else added(*self._conv(shortcut, x))
        if self.fp8 and self.channels_last and fp8_fits(block.conv1, x) and block.conv1.out_channels % 64 == 0:
            y, bias = self._fp8_causal_conv(block.conv1, block.norm1, x, None, cache, idx)
            y, bias = self._fp8_causal_conv(block.conv2, block.norm2, y, bias, cache, idx)
            return add_bias_residual(y, bias, h)
        first = self._norm_silu(block.norm1, x)
        if tile := self._norm_tile(block.conv1, block.norm2, x):

            def conv1_normed(out: torch.Tensor) -> None:  # fills conv2's window: conv1, norm2 + SiLU
                convolve = functools.partial(self._conv_normed, block.conv1, tile=tile, norm=block.norm2, out=out)
                self._causal(block.conv1, first, x, x.shape[1], cache, idx, convolve)

            channels = block.conv1.out_channels
            y, bias = self._causal_conv(block.conv2, conv1_normed, x, channels, cache, idx, defer_bias=True)
        else:
            y, bias = self._causal_conv(block.conv1, first, x, x.shape[1], cache, idx, defer_bias=True)
            second = self._norm_silu(block.norm2, y, bias)
            y, bias = self._causal_conv(block.conv2, second, y, y.shape[1], cache, idx, defer_bias=True)
        return y.add_(h) if bias is None else add_bias_residual(y, bias, h)

    def _fp8_causal_conv(self, conv, norm, x: torch.Tensor, bias: torch.Tensor | None, cache: list,
                         idx: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``conv`` over silu(``norm``(x + ``bias``)) with e4m3 operands (Note [FP8 convolutions]): the
        norm kernel writes the window scaled into e4m3, the window kernel sums its products in float32.
        Returns the output in x's dtype and the conv's bias, left to the caller."""
        factors, weight, scales = self._once((conv, "fp8"), lambda: fp8_copies(conv, norm))

        def fill(out: torch.Tensor) -> None:
            from ._fast_kernels import norm_silu_free  # CUDA only: fp8_fits

            norm_silu_free(x, bias, norm.gamma.reshape(-1), float(norm.scale), out, factors)

        def convolve(window: torch.Tensor) -> torch.Tensor:
            key = ("fp8 conv", tuple(window.shape), tuple(conv.weight.shape), x.dtype, x.device)
            run = lambda tile: window_convolved(  # noqa: E731
                window, weight, None, conv.out_channels, tile, weight_scales=scales, out_dtype=x.dtype
            )
            return run(fastest_way(key, lambda: None, run, fp8_tiles(window), device=x.device, exact=False))

        return self._causal(conv, fill, x, x.shape[1], cache, idx, convolve, dtype=E4M3), conv.bias

    def _norm_tile(self, conv, norm, x: torch.Tensor) -> WindowTile | None:
        """The tile in which ``conv`` over a window of x's channels (a residual block's first) applies
        ``norm`` + SiLU in its own kernel and stores straight into the next window, if any: the fast
        decoder, where the convolution takes a tile of two dots, which holds every output channel
        (``two_dot_tile``). Its output is never written unnormed, nor read back by a norm kernel
        (``docs/benchmarks.md``)."""
        if self.exact or not self.channels_last or not norm_fusable(x, norm):
            return None
        return two_dot_tile(conv, x)

    def _conv_normed(self, conv, window: torch.Tensor, *, tile: WindowTile, norm, out: torch.Tensor) -> None:
        """silu(norm(conv(window))) into ``out`` (the next window's interior), in ``tile`` (of two dots)."""
        weight, bias = self._copies(conv, tile.weight_rows(conv.out_channels))
        gain = (norm.gamma.reshape(-1), float(norm.scale))
        window_convolved(window, weight, bias, conv.out_channels, tile, out=out, norm=gain)

    def _copies(self, conv, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``conv``'s channels-last weights and bias with ``channels`` output channels (``conv_copies``),
        made once a video (``_once``)."""
        return self._once((conv, channels), lambda: conv_copies(conv, channels))

    def _once(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        """``make()``'s copies of a module's parameters, made once a video: they do not change while a
        video decodes, and the kept copies' own check (``kept_copy``) is then made once, not a chunk."""
        if key not in self.copies:
            self.copies[key] = make()
        return self.copies[key]

    def _norm_silu(self, norm, x: torch.Tensor, bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], object]:
        """What writes ``silu(norm(x + bias))`` into a window's interior (bias: a convolution's, left to
        be added here, channels-last only); the fast decoder's in an order of its own."""
        if self.fused:
            kernel = norm_silu if self.exact else norm_silu_fast
            return lambda out: kernel(x, norm, out, bias)
        return lambda out: silu_into(norm(x), out)

    def _conv(self, conv, x: torch.Tensor, defer_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``conv`` (a Conv3d without padding of its own, or a Conv2d) over ``x``, and the part of its
        bias still to be added (None: none). Channels-last, computed with its output channels padded
        to cuDNN's tile (``padded_channels``) or not, or by framepipe's Triton kernel in cuDNN's order
        (``exact_tiles``): whichever is faster of the ways that give the channel-first convolution's
        bits for these shapes (the fast decoder: any way, its kernel's other tiles too,
        ``_window_conv.py``), the bias then left to the caller if ``defer_bias``
        (PyTorch adds it after cuDNN's convolution, with ``add_``); channel-first where none does."""
        if not self.channels_last:
            return conv._conv_forward(x, conv.weight, conv.bias), None
        bias = conv.bias if defer_bias else None

        def run(x: torch.Tensor, way: bool | WindowTile) -> torch.Tensor:
            co = conv.out_channels
            channels = way.weight_rows(co) if isinstance(way, WindowTile) else padded_channels(co) if way else co
            weight, full_bias = self._copies(conv, channels)
            x = x.contiguous(memory_format=channels_last_format(x.dim()))
            if isinstance(way, WindowTile) and not self.exact:  # the bias added before its one rounding
                return window_convolved(x, weight, None if defer_bias else full_bias, co, way)
            if isinstance(way, WindowTile):  # cuDNN's bits: the bias added after, as PyTorch adds it
                return added(window_convolved(x, weight, None, co, way), None if defer_bias else conv.bias)
            out = added(conv._conv_forward(x, weight, None), None if defer_bias else full_bias)  # as PyTorch adds it
            return out[:, :co] if channels != co else out

        ways: tuple[bool | WindowTile, ...] = (False,)
        if padded_channels(conv.out_channels) != conv.out_channels:
            ways += (True,)
        if not self.exact:  # a tile of two dots taken outright where one applies (``two_dot_tile``)
            ways = (taken,) if (taken := two_dot_tile(conv, x)) else ways + window_tiles(conv, x)
        else:  # framepipe's kernel summing in cuDNN's order, kept where it gives cuDNN's bits
            ways += exact_tiles(conv, x)
        key = ("conv", tuple(x.shape), tuple(conv.weight.shape), x.dtype, x.device, defer_bias, self.exact)
        # drawn once, and only for a shape not yet checked; held channels-last, as the ways read it
        sample = functools.cache(lambda: probe(x).contiguous(memory_format=channels_last_format(x.dim())))
        way = fastest_way(
            key,
            lambda: conv._conv_forward(sample().contiguous(), conv.weight, conv.bias),  # as diffusers: channel-first
            lambda way: added(run(sample(), way), bias),
            ways,
            device=x.device,
            exact=self.exact,
        )
        if way is None:
            return conv._conv_forward(x.contiguous(), conv.weight, conv.bias), None
        return run(x, way), bias

    def _causal_conv(self, conv, fill, x: torch.Tensor, channels: int, cache: list, idx: list[int],
                     defer_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``WanCausalConv3d.forward`` over [its cache, x] with its causal and spatial zero padding,
        the window filled by ``fill``; the window's last two frames become the conv's cache. Returns
        what ``_conv`` returns."""
        return self._causal(conv, fill, x, channels, cache, idx, lambda window: self._conv(conv, window, defer_bias))

    def _causal(self, conv, fill, x: torch.Tensor, channels: int, cache: list, idx: list[int],
                convolve: Callable[[torch.Tensor], object], dtype: torch.dtype | None = None):  # fmt: skip
        """``_causal_conv`` with ``convolve(window)`` as its convolution (the window of ``dtype``, else
        x's): what it returns is returned."""
        pad_w, _, pad_h, _, pad_t, _ = conv._padding
        b, _, t, h, w = x.shape
        shape = (b, channels, pad_t + t, h + 2 * pad_h, w + 2 * pad_w)
        window = causal_window(shape, (pad_t, pad_h, pad_w), x, self.channels_last, dtype)
        rows, cols = slice(pad_h, pad_h + h), slice(pad_w, pad_w + w)
        fill(window[:, :, pad_t:, rows, cols])
        self._exchange(window[:, :, pad_t:], pad_h)
        history, previous = window[:, :, :pad_t], cache[idx[0]]
        if previous is None or self.first_chunk:
            history.zero_()
        else:
            copy_bits(history, previous)
        out = convolve(window)
        # the last frames whole (zero border, a split band's halo rows): one block of memory channels-last
        last = window[:, :, -_CACHE_T:]
        if previous is not None and previous.shape == last.shape:
            copy_bits(previous, last)
        else:
            cache[idx[0]] = last.clone()
        idx[0] += 1
        return out

    def _exchange(self, window: torch.Tensor, pad: int) -> None:
        """Fill the ``pad`` rows above and below the interior of ``window`` (rows: dim -2): zeros here,
        already; a band of a split frame gets its neighbours' rows (``SplitDecoderStep``)."""
