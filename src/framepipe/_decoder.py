"""framepipe's Wan decoder step: diffusers' decoder modules and weights, run with fewer copies.

Bit-exact by construction and by check. ``WanCausalConv3d`` concatenates its cache to its input and
pads the result (two copies of every activation a convolution reads); here each convolution's input
window is one zero-bordered tensor into which the norm + SiLU before it writes directly. On CUDA the
norm + SiLU is one Triton kernel that adds up each pixel's sum of squares in PyTorch's own order and
repeats every other step with PyTorch's roundings (Note [Exact fusion]); a convolution's bias is
added by the kernel that reads its output (the next norm's, or one bias + residual kernel); the
activations live channels-last (NDHWC), where cuDNN reads them without its layout transposes, the
resamplers' included, and a convolution may be computed with its output channels padded to cuDNN's
tile (``padded_channels``) where that is faster and keeps the bits (``fastest_way``). Each is checked
bit for bit against PyTorch on the device, per shape, before first use (``verified``); where a check
fails, that step runs as diffusers runs it. The attention runs diffusers' module. The fast decoder
(``exact=False``, opt-in) takes each convolution's fastest way whatever its bits.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ._optional import require

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

DECODERS = ("framepipe", "diffusers", "fast")  # fast: framepipe's, convolutions free to change bits
CHANNELS_LAST = torch.channels_last_3d
_CACHE_T = 2  # frames of history a causal 3x3x3 convolution reads (diffusers' CACHE_T)


# Equivalences checked on the device at first use, per shape: key -> whether the bits were the same.
_VERIFIED: dict[tuple, bool] = {}


def verified_equivalences() -> dict[tuple, bool]:
    """What ``verified`` has checked so far in this process (for benchmarks and reports)."""
    return dict(_VERIFIED)


def chosen_ways() -> dict[tuple, object]:
    """How each convolution shape runs, as ``fastest_way`` chose it so far (for benchmarks and reports)."""
    return dict(_WAYS)


def verified(key: tuple, reference: Callable[[], torch.Tensor], candidate: Callable[[], torch.Tensor]) -> bool:
    """Whether ``candidate()`` gives ``reference()``'s bits for ``key`` (computed once per process)."""
    if key not in _VERIFIED:
        _VERIFIED[key] = same_bits(reference(), candidate())
    return _VERIFIED[key]


# How each convolution shape runs, chosen at first use: key -> a way (fastest_way), None: channel-first.
_WAYS: dict[tuple, object] = {}


MARGIN = 0.9  # a way other than the first must take less than this share of its time: a padded
# output costs its readers too, which the convolution's time leaves out (bf16 shapes 3 % faster alone
# made a whole decode 2 % slower on an H200)


def fastest_way(key: tuple, reference: Callable[[], torch.Tensor], run: Callable[[object], torch.Tensor],
                ways: Sequence[object], *, device: torch.device, exact: bool = True) -> object | None:  # fmt: skip
    """The fastest of ``ways`` whose ``run(way)`` has ``reference()``'s bits (with ``exact``; else any
    of them), None where none has; chosen once per process for ``key``: compared, then timed, the
    first of them kept unless another takes under ``MARGIN`` of its time."""
    if key not in _WAYS:
        if exact:
            want = reference()
            ways = [way for way in ways if same_bits(want, run(way))]
            del want
            _VERIFIED[key] = bool(ways)
        chosen, best = next(iter(ways), None), math.inf
        if len(ways) > 1:
            for way in ways:  # the first way unless another is clearly faster
                if (took := seconds(functools.partial(run, way), device)) < best * MARGIN:
                    chosen, best = way, took
        _WAYS[key] = chosen
    return _WAYS[key]


def seconds(run: Callable[[], object], device: torch.device, runs: int = 3) -> float:
    """The shortest wall time of ``runs`` calls of ``run`` on an idle ``device`` (after one untimed call)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    sync()
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def padded_channels(n: int) -> int:
    """The output channels a convolution may be computed with: ``n`` rounded up to a multiple of 128,
    the N tile of cuDNN's Hopper kernels, from 64 channels up. Padded so, Wan 2.1's TF32 convolutions
    of 96 and 192 channels ran 1.8x and 1.3x faster on an H200 with the same bits (each shape is
    checked; ``benchmarks/conv_padding.py``)."""
    return n if n < 64 or n % 128 == 0 else -(-n // 128) * 128


def pixel_stride(x: torch.Tensor) -> int | None:
    """S where x [B, C, T, H, W] is channels [0, C) of a channels-last tensor of S >= C channels (a
    padded convolution's output, or S = C: a whole one), else None."""
    if x.dim() != 5 or x.stride(1) != 1:
        return None
    s = x.stride(4)
    expected = (s * math.prod(x.shape[2:]), 1, s * x.shape[3] * x.shape[4], s * x.shape[4], s)
    fits = all(n == 1 or have == want for n, have, want in zip(x.shape, x.stride(), expected, strict=True))
    return s if fits and s >= x.shape[1] else None


def channels_last_format(dims: int) -> torch.memory_format:
    """The channels-last memory format of a tensor of ``dims`` dimensions (5: NDHWC, 4: NHWC)."""
    return CHANNELS_LAST if dims == 5 else torch.channels_last


def causal_window(
    shape: tuple[int, ...], pad: tuple[int, int, int], like: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """An uninitialized [B, C, T, H, W] input window (NDHWC in memory if ``channels_last``) whose
    frames after the first ``pad[0]`` (the history, written by the caller whole, border included) have
    their spatial border of ``pad`` = (t, h, w) zeroed: the zero padding ``F.pad`` adds; the interior
    is written by the caller too. Allocated per convolution, as diffusers' padded copy is, so peak
    memory stays its own."""
    layout = CHANNELS_LAST if channels_last else torch.contiguous_format
    window = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)
    pt, ph, pw = pad
    frames = window[:, :, pt:]
    if ph:
        frames[:, :, :, :ph].zero_()
        frames[:, :, :, -ph:].zero_()
    if pw:
        frames[:, :, :, ph : window.shape[3] - ph, :pw].zero_()
        frames[:, :, :, ph : window.shape[3] - ph, -pw:].zero_()
    return window


def proven_shape(latents: torch.Tensor) -> bool:
    """Whether the fused kernel and channels-last convolutions are proven for this latent video's shape:
    one video, at least 128 latent pixels a frame. A batch of two 8x12 frames gave different bits in
    float32 on an H200 (2026-11-30) though every shape's check had passed, cause not found; such
    decodes run PyTorch's ops (the same bits, slower)."""
    return latents.shape[0] == 1 and latents.shape[-2] * latents.shape[-1] >= 128


def channel_first(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout diffusers' decoder holds it in: framepipe's channels-last activations (the
    convolutions' outputs) are its contiguous ones; every other tensor already has diffusers' layout."""
    return x.contiguous() if x.shape[1] > 1 and x.stride(1) == 1 else x


def silu_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``F.silu(x)``'s bits into ``out`` (any strides): CUDA's elementwise kernels do the same
    arithmetic whatever the output's strides; the CPU's vectorized SiLU runs on contiguous outputs only."""
    if out.is_cuda:
        torch.ops.aten.silu.out(x, out=out)
    else:
        out.copy_(F.silu(x))


def copy_of(x: torch.Tensor) -> Callable[[torch.Tensor], object]:
    """What fills a window's interior with x as it is (a convolution with no norm before it)."""
    return lambda out: out.copy_(x)


def added(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``out`` with a convolution's bias added as PyTorch adds it after cuDNN's convolution (in place)."""
    return out if bias is None else out.add_(bias.reshape(-1, *(1,) * (out.dim() - 2)))


def upsampled(x: torch.Tensor, pairs: bool, channels_last: bool) -> torch.Tensor:
    """diffusers' ``WanUpsample`` (nearest-exact, 2x: each pixel repeated 2x2) of x's frames as one
    [B * T, C, 2H, 2W] batch, in one copy. With ``pairs``, x is a time convolution's [B, 2C, T, H, W]
    output whose channel halves are the even and the odd frames (diffusers' reshape + stack)."""
    b, c, t, h, w = x.shape
    p = 2 if pairs else 1
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b * t * p, c // p, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=layout)
    target = out.unflatten(0, (b, t, p)).unflatten(4, (h, 2)).unflatten(6, (w, 2))  # [B, T, P, C, H, 2, W, 2]
    source = x.unflatten(1, (p, c // p)).permute(0, 3, 1, 2, 4, 5)  # [B, T, P, C, H, W]
    target.copy_(source[:, :, :, :, :, None, :, None])
    return out


class WanDecoderStep:
    """Decode one latent frame with ``vae``'s decoder: ``step(x, cache, first_chunk)`` equals
    ``vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)`` bit for bit.

    ``cache`` is diffusers' list (one entry per causal conv) kept across the frames of one video; its entries
    for the causal convolutions run here hold their windows' last two frames whole: the zero frames
    before the first, and each frame's zero border (so that it goes back into the next window in one
    contiguous copy channels-last).
    """

    def __init__(self, vae: AutoencoderKLWan, *, exact: bool = True) -> None:
        self.decoder = vae.decoder
        self.exact = exact  # False: the fast decoder, whose convolutions may change the bits
        self.fused: bool | None = None  # decided on the first call, on the decoder's device

    def __call__(self, x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        if self.fused is None:
            self.fused = proven_shape(x) and norm_silu_is_exact(x.device, next(self.decoder.parameters()).dtype)
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
                x = x + block.avg_shortcut(channel_first(shortcut), first_chunk=first_chunk)
        fill = self._norm_silu(d.norm_out, x)
        x = added(*self._causal_conv(d.conv_out, fill, x, x.shape[1], cache, idx))
        return x.contiguous()

    @property
    def channels_last(self) -> bool:
        """Whether the activations live channels-last: with the fused kernels, which read any layout."""
        return bool(self.fused)

    def _attention(self, attention, x: torch.Tensor) -> torch.Tensor:
        """The mid block's ``WanAttentionBlock`` (over each whole frame), on x as diffusers holds it."""
        return attention(channel_first(x))

    def _resample(self, sampler, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """An up block's ``WanResample`` step by step: the time convolution (upsample3d) with diffusers'
        cache rules, the nearest 2x upsampling as one copy that also interleaves the time
        convolution's frame pairs, the 3x3 convolution."""
        if sampler.mode not in ("upsample2d", "upsample3d"):  # not in Wan's decoders
            return sampler(channel_first(x), feat_cache=cache, feat_idx=idx)
        pairs = False
        if sampler.mode == "upsample3d":
            if cache[idx[0]] is None:  # the first chunk: no time upsampling; "Rep" marks it, as diffusers does
                cache[idx[0]] = "Rep"
                idx[0] += 1
            else:
                if isinstance(cache[idx[0]], str):  # the second chunk: the history is diffusers' zero padding
                    cache[idx[0]] = None
                x = added(*self._causal_conv(sampler.time_conv, copy_of(x), x, x.shape[1], cache, idx))
                pairs = True  # channels [0, c) are the even output frames, [c, 2c) the odd ones
        y = self._upsample_conv(sampler.resample[1], upsampled(x, pairs, self.channels_last))
        return y.unflatten(0, (x.shape[0], -1)).transpose(1, 2)  # diffusers' view + permute

    def _upsample_conv(self, conv: torch.nn.Conv2d, frames: torch.Tensor) -> torch.Tensor:
        """A resampler's 3x3 convolution (padding 1) over the upsampled frames [B * T, C, H, W]."""
        return added(*self._conv(conv, frames))

    def _residual(self, block, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        """``WanResidualBlock.forward`` (dropout is the identity at inference). Channels-last, the
        convolutions' biases are left to the kernels that read their outputs: conv1's to norm2's
        kernel, conv2's to the residual add."""
        shortcut = block.conv_shortcut  # a 1x1x1 conv whose F.pad(x, 0) is only a clone of x
        h = x if isinstance(shortcut, torch.nn.Identity) else added(*self._conv(shortcut, x))
        fill = self._norm_silu(block.norm1, x)
        y, bias = self._causal_conv(block.conv1, fill, x, x.shape[1], cache, idx, defer_bias=True)
        fill = self._norm_silu(block.norm2, y, bias)
        y, bias = self._causal_conv(block.conv2, fill, y, y.shape[1], cache, idx, defer_bias=True)
        return y.add_(h) if bias is None else add_bias_residual(y, bias, h)

    def _norm_silu(self, norm, x: torch.Tensor, bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], object]:
        """What writes ``silu(norm(x + bias))`` into a window's interior (bias: a convolution's, left to
        be added here, channels-last only)."""
        if self.fused:
            return lambda out: norm_silu(x, norm, out, bias)
        return lambda out: silu_into(norm(x), out)

    def _conv(self, conv, x: torch.Tensor, defer_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``conv`` (a Conv3d without padding of its own, or a Conv2d) over ``x``, and the part of its
        bias still to be added (None: none). Channels-last, computed with its output channels padded
        to cuDNN's tile (``padded_channels``) or not: whichever is faster of the ways that give the
        channel-first convolution's bits for these shapes (any way for the fast decoder), the bias
        then left to the caller if ``defer_bias`` (PyTorch adds it after cuDNN's convolution, with
        ``add_``); channel-first where none does."""
        if not self.channels_last:
            return conv._conv_forward(x, conv.weight, conv.bias), None
        bias = conv.bias if defer_bias else None

        def run(x: torch.Tensor, padded: bool) -> torch.Tensor:
            weight, full_bias = conv_copies(conv, padded)
            out = conv._conv_forward(x.contiguous(memory_format=channels_last_format(x.dim())), weight,
                                     None if defer_bias else full_bias)  # fmt: skip
            return out[:, : conv.out_channels] if padded else out

        ways = (False, True) if padded_channels(conv.out_channels) != conv.out_channels else (False,)
        key = ("conv", tuple(x.shape), tuple(conv.weight.shape), x.dtype, x.device, defer_bias, self.exact)
        sample = functools.cache(lambda: probe(x))  # drawn once, and only for a shape not yet checked
        way = fastest_way(
            key,
            lambda: conv._conv_forward(sample(), conv.weight, conv.bias),
            lambda padded: added(run(sample(), padded), bias),
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
        pad_w, _, pad_h, _, pad_t, _ = conv._padding
        b, _, t, h, w = x.shape
        shape = (b, channels, pad_t + t, h + 2 * pad_h, w + 2 * pad_w)
        window = causal_window(shape, (pad_t, pad_h, pad_w), x, self.channels_last)
        rows, cols = slice(pad_h, pad_h + h), slice(pad_w, pad_w + w)
        fill(window[:, :, pad_t:, rows, cols])
        self._exchange(window[:, :, pad_t:], pad_h)
        history, previous = window[:, :, :pad_t], cache[idx[0]]
        if previous is None:
            history.zero_()
        else:
            history.copy_(previous)
        out = self._conv(conv, window, defer_bias)
        # the last frames whole (zero border, a split band's halo rows): one block of memory channels-last
        cache[idx[0]] = window[:, :, -_CACHE_T:].clone()
        idx[0] += 1
        return out

    def _exchange(self, window: torch.Tensor, pad: int) -> None:
        """Fill the ``pad`` rows above and below the interior of ``window`` (rows: dim -2): zeros here,
        already; a band of a split frame gets its neighbours' rows (``SplitDecoderStep``)."""


# A convolution's channels-last (and padded) copies of its weight and bias, kept while the module
# lives and its parameters are the tensors they were made from, unchanged: a stream of videos makes
# them once, not at each video's first chunk. conv -> (parameters_state, {padded: (weight, bias)})
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parameters_state(conv: torch.nn.Module) -> tuple:
    """What tells that ``conv``'s weight or bias changed: which tensors they are (weakly held), their
    memory and their version counters (bumped by in-place writes, ``load_state_dict``'s included;
    writes through ``.data`` are not counted, as autograd does not count them)."""
    return tuple(None if p is None else (weakref.ref(p), p.data_ptr(), p._version) for p in (conv.weight, conv.bias))


def same_parameters(state: tuple | None, conv: torch.nn.Module) -> bool:
    """Whether ``conv``'s parameters are still those ``parameters_state`` saw, unchanged."""
    if state is None:
        return False
    now = (conv.weight, conv.bias)
    return all(
        (p is None) if was is None else (p is not None and was[0]() is p and was[1:] == (p.data_ptr(), p._version))
        for was, p in zip(state, now, strict=True)
    )


def conv_copies(conv: torch.nn.Module, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s weight channels-last, and its bias, with zero output channels added up to
    ``padded_channels`` if ``padded``: made at first use, again where the parameters changed."""
    state, copies = _COPIES.get(conv, (None, {}))
    if not same_parameters(state, conv):
        copies = {}
        _COPIES[conv] = (parameters_state(conv), copies)
    if padded not in copies:
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        if padded:
            extra = padded_channels(conv.out_channels) - conv.out_channels
            weight = torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])])
            bias = None if bias is None else torch.cat([bias, bias.new_zeros(extra)])
        copies[padded] = (weight.contiguous(memory_format=channels_last_format(weight.dim())), bias)
    return copies[padded]


# Note [Exact fusion]
# ~~~~~~~~~~~~~~~~~~~
# diffusers computes ``silu(F.normalize(x, dim=1) * scale * gamma + 0.0)`` as several kernels, each
# rounding its result to the tensor's dtype (bfloat16: the norm in float32, then rounded). The fused
# kernel (``_exact_kernels.py``) adds each pixel's squares in the order of PyTorch's reduction
# kernel for a reduction over a channel dimension that is not the innermost one: ``SPLIT`` threads,
# thread y taking channels y, y + SPLIT, ... into four accumulators in turn with fused multiply-adds,
# then combined in a fixed tree. PyTorch picks ``SPLIT`` from the channel count and its launch
# configuration (``reduction_split`` repeats that choice), and each shape's split is checked once on
# random values against PyTorch on channel-first inputs: the contiguous layout and the frame-major
# one a resampler leaves (a shape where the two would differ runs PyTorch's ops).
# Every other step is repeated in the same order with the same roundings: IEEE division (div_rn),
# no multiply-add contraction (enable_fp_fusion=False), libdevice's expf as PyTorch's CUDA build calls
# it, bfloat16 rounding after each op where PyTorch stores a bfloat16 tensor. The kernel reads any
# strides, so the activations can live channels-last (NDHWC) and still give channel-first bits.
# PyTorch adds a convolution's bias after cuDNN's convolution, in an ``add_`` of its own (float32
# arithmetic, then rounded); a kernel that reads the convolution's output can add it first with the
# same rounding: the norm kernel (``HAS_BIAS``) and the bias + residual kernel. Whether the bias-less
# channels-last convolution plus that ``add_`` gives the convolution's bits is checked with it.

_SPLITS: dict[tuple, int | None] = {}
_EXACT: dict[tuple, bool] = {}


def probe(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Seeded random values of ``like``'s shape, dtype and device, channel-first, their scale varying
    by up to 2**6 either way from channel to channel: sums over channels that round often, so two
    summation orders that differ show it."""
    g = torch.Generator(device=like.device).manual_seed(seed)
    b, c = like.shape[:2]
    x = torch.randn(like.shape, generator=g, device=like.device, dtype=like.dtype)
    scale = torch.randint(-6, 7, (b, c) + (1,) * (like.dim() - 2), generator=g, device=like.device)
    return x.mul_(torch.exp2(scale.to(like.dtype)))


def reduction_split(shape: tuple[int, ...], strides: tuple[int, ...]) -> int | None:
    """The number of threads among which PyTorch's CUDA reduction kernel splits each output's channels
    when it reduces dim 1 of a tensor of ``shape`` and ``strides`` (w innermost, freshly allocated):
    ``setReduceConfig`` for a reduction over a dimension that is not the innermost one. None where it
    also splits them over several thread blocks (256 or more channels a thread, as Wan 2.2's 1024):
    an order the fused kernel does not repeat."""
    c = shape[1]
    outputs = math.prod(shape) // c
    # TensorIterator drops size-1 dimensions and merges the output dimensions that follow each other
    dims = sorted((strides[i], shape[i]) for i in (0, 2, 3, 4) if shape[i] > 1)
    inner, others = 1, []
    for stride, n in dims:
        if stride == inner:
            inner *= n
        else:
            others.append(stride)
    vec = 4  # outputs per thread: the largest of 4, 2, 1 that divides the inner size and every stride
    for n in (inner, *others, strides[1]):
        while n % vec:
            vec //= 2
    threads = 512 // vec
    width = min(_floor_pow2(outputs // vec) if outputs // vec < threads else threads, 32)  # block.x over all outputs
    height = min(_floor_pow2(c) if c < threads else threads, threads // width)
    if c < min(height * 16, 256):
        return 1
    return height if -(-c // height) < 256 else None


def _floor_pow2(n: int) -> int:
    return 1 << max(n, 1).bit_length() - 1


def _fusable(x: torch.Tensor, norm) -> bool:
    gamma = norm.gamma
    return (
        x.is_cuda and x.dtype in (torch.float32, torch.bfloat16) and gamma.dtype == x.dtype
        and isinstance(norm.bias, float) and norm.bias == 0.0 and getattr(norm, "channel_first", True)
    )  # fmt: skip


def norm_split(x: torch.Tensor, norm, bias: torch.Tensor | None = None) -> int | None:
    """The thread split with which the fused kernel gives PyTorch's bits for ``norm`` over x's shape
    (with ``bias`` added first, as PyTorch adds a convolution's), whether x is contiguous or
    frame-major (as after a resampler) in diffusers' decoder; None where those differ or the check on
    random values failed. Checked once per shape."""
    key = ("norm", tuple(x.shape), x.dtype, x.device, bias is not None)
    if key not in _SPLITS:
        from ._exact_kernels import norm_silu as fused

        frame_major = torch.empty(x.shape[:1] + x.shape[2:3] + x.shape[1:2] + x.shape[3:], device="meta")
        splits = {reduction_split(tuple(x.shape), s) for s in (torch.empty(x.shape, device="meta").stride(),
                                                              frame_major.transpose(1, 2).stride())}  # fmt: skip
        found = splits.pop() if len(splits) == 1 else None
        if found is not None:
            sample = probe(x)
            got = torch.empty_like(sample)
            fused(sample, bias, norm.gamma.reshape(-1), float(norm.scale), got, found)
            for layout in (sample, sample.transpose(1, 2).contiguous().transpose(1, 2)):
                if not same_bits(got, F.silu(norm(added(layout.clone(), bias)))):
                    found = None
        _SPLITS[key] = found
        _VERIFIED[key] = found is not None
    return _SPLITS[key]


def norm_silu(x: torch.Tensor, norm, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Write ``silu(norm(x + bias))`` into ``out`` (any strides) for a channel-first ``WanRMS_norm``
    (``bias``: a convolution's, not yet added to x; or None): the fused kernel where it gives PyTorch's
    bits for x's shape, else PyTorch's ops on channel-first x."""
    split = norm_split(x, norm, bias) if _fusable(x, norm) else None
    if split is None:
        silu_into(norm(channel_first(x if bias is None else added(x.clone(), bias))), out)
        return
    from ._exact_kernels import norm_silu as fused

    fused(x, bias, norm.gamma.reshape(-1), float(norm.scale), out, split)


def add_bias_residual(y: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``(y + bias) + h`` into y, a residual block's end (``bias``: its conv2's, not yet added): one
    kernel where y and h are channels-last (padded or not) and that was checked for their shapes and
    strides, else two adds."""
    fits = y.is_cuda and y.dtype in (torch.float32, torch.bfloat16) and h.dtype == y.dtype
    strides = (pixel_stride(y), pixel_stride(h))
    if fits and None not in strides:
        from ._exact_kernels import bias_residual

        def sample(seed: int, stride: int) -> torch.Tensor:
            whole = probe(torch.empty((y.shape[0], stride, *y.shape[2:]), dtype=y.dtype, device=y.device), seed)
            return whole.contiguous(memory_format=CHANNELS_LAST)[:, : y.shape[1]]

        def reference() -> torch.Tensor:
            return added(sample(0, strides[0]), bias).add_(sample(1, strides[1]))

        key = ("bias_residual", tuple(y.shape), strides, y.dtype, y.device)
        if verified(key, reference, lambda: bias_residual(sample(0, strides[0]), bias, sample(1, strides[1]), strides)):
            return bias_residual(y, bias, h, strides)
    return added(y, bias).add_(h)


def norm_silu_is_exact(device: torch.device, dtype: torch.dtype) -> bool:
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
            x = torch.randn(1, 3, 96, 37, 68, generator=g, device=device) * 40
            x[:, 0, :, :4] = 0.0
            x[:, 1, :, :2] *= 1e-30
            x = x.to(dtype).permute(0, 2, 1, 3, 4)  # frame-major, as a resampler leaves it
            want = torch.nn.functional.silu(norm(x))
            got = torch.empty(1, 96, 5, 39, 70, device=device, dtype=dtype)[:, :, 2:, 1:38, 1:69]
            try:
                norm_silu(x.contiguous(memory_format=CHANNELS_LAST), norm, got)
            except Exception as e:  # a Triton that cannot build it here: PyTorch's ops do the same work
                reason = f"{type(e).__name__}: {e}"
                warnings.warn(f"framepipe's fused norm + SiLU kernel is not used ({reason})", stacklevel=2)
                _EXACT[key] = False
                return False
        _EXACT[key] = same_bits(want, got) and bool(_VERIFIED.get(("norm", tuple(x.shape), dtype, x.device, False)))
    return _EXACT[key]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two float tensors hold the same bits (NaN payloads and the sign of zero included)."""
    as_int = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(as_int[a.dtype]), b.contiguous().view(as_int[b.dtype]))
