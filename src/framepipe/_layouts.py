"""Tensors in the layouts framepipe's decoder keeps for cuDNN: channels-last activations (some of them
channels [0, C) of a convolution computed with more), channels-last copies of the weights kept across
videos, and PyTorch's elementwise steps writing into such layouts with PyTorch's bits."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._optional import exact_kernel

CHANNELS_LAST = torch.channels_last_3d


def channels_last_format(dims: int) -> torch.memory_format:
    """The channels-last memory format of a tensor of ``dims`` dimensions (5: NDHWC, 4: NHWC)."""
    return CHANNELS_LAST if dims == 5 else torch.channels_last


def padded_channels(n: int) -> int:
    """The output channels a convolution may be computed with: ``n`` rounded up to a multiple of 128,
    the N tile of cuDNN's Hopper kernels, from 64 channels up. Padded so, Wan 2.1's TF32 convolutions
    of 96 and 192 channels ran 1.8x and 1.3x faster on an H200 with the same bits (each shape is
    checked; ``benchmarks/conv_padding.py``)."""
    return n if n < 64 or n % 128 == 0 else -(-n // 128) * 128


def pixel_stride(x: torch.Tensor) -> int | None:
    """S where x [B, C, T, H, W] (or [B, C, H, W]) is channels [0, C) of a channels-last tensor of S >= C
    channels (a padded convolution's output, or S = C: a whole one), else None."""
    if x.dim() not in (4, 5) or x.stride(1) != 1:
        return None
    s = x.stride(-1)
    expected = (s * math.prod(x.shape[2:]), 1, *(s * math.prod(x.shape[d + 1 :]) for d in range(2, x.dim())))
    fits = all(n == 1 or have == want for n, have, want in zip(x.shape, x.stride(), expected, strict=True))
    return s if fits and s >= x.shape[1] else None


def channel_first(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout diffusers' decoder holds it in: framepipe's channels-last activations (the
    convolutions' outputs) are its contiguous ones; every other tensor already has diffusers' layout."""
    return x.contiguous() if x.shape[1] > 1 and x.stride(1) == 1 else x


def kernels_take(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the exact Triton kernels (``_exact_kernels.py``) compute on x and ``others`` (None:
    absent): CUDA tensors of float32 or bfloat16, all of x's dtype."""
    return (
        x.is_cuda
        and x.dtype in (torch.float32, torch.bfloat16)
        and all(o is None or o.dtype == x.dtype for o in others)
    )


def added(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``out`` with a convolution's bias added as PyTorch adds it after cuDNN's convolution (in place):
    channels-last on CUDA in a Triton kernel (the same bits, faster than PyTorch's broadcast add runs
    there: ``docs/benchmarks.md``), else with ``add_``."""
    if bias is None:
        return out
    if kernels_take(out, bias):
        stride = pixel_stride(out)
        if stride is not None and (kernel := exact_kernel("bias_add")) is not None:
            return kernel(out, bias, stride)
    return out.add_(bias.reshape(-1, *(1,) * (out.dim() - 2)))


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(x: torch.Tensor) -> torch.Tensor:
    """``x``'s memory seen as integers of its element size (its bits, NaN payloads and signs of zero included)."""
    return x.view(_BITS[x.element_size()])


def copy_bits(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out.copy_(x)``, but while a CUDA graph is captured as an elementwise kernel on the bits: a
    graph runs a captured device-to-device memcpy with copy kernels of its own, slower than both
    (0.123 s against 0.077 s of memcpy a float32 480x832 decode, H200)."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        torch.bitwise_or(bits(x), 0, out=bits(out))
    else:
        out.copy_(x)


def silu_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``F.silu(x)``'s bits into ``out`` (any strides): CUDA's elementwise kernels do the same
    arithmetic whatever the output's strides; the CPU's vectorized SiLU runs on contiguous outputs only."""
    if out.is_cuda:
        torch.ops.aten.silu.out(x, out=out)
    else:
        out.copy_(F.silu(x))


# A convolution's channels-last (and padded) copies of its weight and bias, kept while the module
# lives and its parameters are the tensors they were made from, unchanged: a stream of videos makes
# them once, not at each video's first chunk. conv -> (parameters_state, {kind: copies})
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parameters_state(module: torch.nn.Module) -> tuple:
    """What tells that ``module``'s parameters or buffers changed (what is made from them, or reads
    them by address, is then stale): which tensors they are (weakly held), their memory and their
    version counters (bumped by in-place writes, ``load_state_dict``'s included; writes through
    ``.data`` are not counted, as autograd does not count them)."""
    return tuple((weakref.ref(t), t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def same_parameters(state: tuple | None, module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters and buffers are still those ``parameters_state`` saw, unchanged."""
    if state is None:
        return False
    now = (*module.parameters(), *module.buffers())
    return len(now) == len(state) and all(
        ref() is t and (at, version) == (t.data_ptr(), t._version)
        for (ref, at, version), t in zip(state, now, strict=True)
    )


def kept_copy(conv: torch.nn.Module, kind: object, make: Callable[[torch.nn.Module], tuple]) -> tuple:
    """``make(conv)``, made once per ``kind`` and kept until ``conv``'s parameters change."""
    state, copies = _COPIES.get(conv, (None, {}))
    if not same_parameters(state, conv):
        copies = {}
        _COPIES[conv] = (parameters_state(conv), copies)
    if kind not in copies:
        copies[kind] = made_apart(lambda: make(conv), conv.weight.device)
    return copies[kind]


def made_apart(make: Callable[[], tuple], device: torch.device) -> tuple:
    """``make()``; on CUDA on a stream of its own that first waits for the current one, and finished
    before it returns: copies kept for every decode may be read at once from any stream (two videos
    decoding at once, or the next video of a stream), not only from the one that made them."""
    if device.type != "cuda":
        return make()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        made = make()
    side.synchronize()
    return made


def conv_copies(conv: torch.nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s weight channels-last, and its bias, with zero output channels added up to ``channels``
    (cuDNN's tile, ``padded_channels``, or the window convolution's): made at first use, again where
    the parameters changed."""

    def make(conv: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        if (extra := channels - conv.out_channels) > 0:
            weight = torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])])
            bias = None if bias is None else torch.cat([bias, bias.new_zeros(extra)])
        return weight.contiguous(memory_format=channels_last_format(weight.dim())), bias

    return kept_copy(conv, channels, make)
