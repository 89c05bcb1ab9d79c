"""Which convolutions the decoders may also compute with framepipe's own Triton kernel, and in which
tiles (Note [Window convolution], ``_fast_kernels.py``). Each tile is one more way ``fastest_way``
times against cuDNN's at first use; a shape keeps cuDNN where no tile is clearly faster. In the fast
decoder a tile of two dots, where one applies, is taken without timing (``two_dot_tile``); the exact
decoder's tiles sum in cuDNN's order and are kept only where they give its bits (``exact_tiles``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class WindowTile:
    """One launch configuration of the window convolution: output pixels, output channels and input
    channels a step; ``channels_outer``: the sum in cuDNN's order (each step's channels, then the taps)."""

    rows: int
    columns: int
    depth: int
    warps: int
    stages: int
    channels_outer: bool = False

    def weight_rows(self, channels: int) -> int:
        """The output channels of the weights it reads: ``channels`` rounded up to its column tile, zero
        rows of a copy. TMA reads rows past a weight's end as zeros too, but slower: 96 and 192
        channels took 15-20 % longer so, 384 (a whole number of tiles) no longer (H200, bf16,
        2026-12-01; the decodes: ``docs/benchmarks.md``, "Its own convolution")."""
        return -(-channels // self.columns) * self.columns


@functools.cache
def kernel_runs_on(device: torch.device) -> bool:
    """Whether the kernel can run on ``device`` (asked once a device, not at every convolution): a
    Hopper or newer GPU, and a Triton with host-side tensor descriptors (TMA loads)."""
    if torch.cuda.get_device_capability(device) < (9, 0):
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_fits(conv: torch.nn.Module, x: torch.Tensor, channels: int) -> bool:
    """Whether the kernel's loop can run ``conv`` over x (its window, or what fills it): a plain 3x3x3
    convolution of one video on a Hopper or newer GPU, input channels a multiple of ``channels``."""
    fits = (
        x.is_cuda and x.dim() == 5 and x.shape[0] == 1 and x.shape[1] % channels == 0
        and isinstance(conv, torch.nn.Conv3d) and conv.kernel_size == (3, 3, 3) and conv.padding == (0, 0, 0)
        and conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1) and conv.groups == 1
    )  # fmt: skip
    return fits and kernel_runs_on(x.device)


def _applies(conv: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether the kernel can compute ``conv`` over the window ``x`` in x's dtype: ``kernel_fits`` with
    input channels a multiple of 32, bfloat16, or float32 where cuDNN may use TF32 (the kernel's
    float32 products are TF32)."""
    tf32 = x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return (x.dtype == torch.bfloat16 or tf32) and kernel_fits(conv, x, 32)


def window_tiles(conv: torch.nn.Module, x: torch.Tensor) -> tuple[WindowTile, ...]:
    """The tiles to time for ``conv`` over the window ``x`` (none where the kernel does not apply),
    each of a power of two of output channels. Two tiles a dtype: of 7 (bf16) and 6 (fp32) tried on
    Wan 2.1's and 2.2's shapes with a throwaway sweep (H200, 2026-12-01), the two fastest most often."""
    if not _applies(conv, x):
        return ()
    columns = min(128, max(16, 1 << (conv.out_channels - 1).bit_length()))  # Triton's blocks: powers of 2
    if x.dtype == torch.bfloat16:
        return WindowTile(256, columns, _depth(x), 8, 4), WindowTile(128, columns, _depth(x), 4, 4)
    return WindowTile(256, columns, 32, 8, 4), WindowTile(128, columns, 32, 8, 5)


def exact_tiles(conv: torch.nn.Module, x: torch.Tensor) -> tuple[WindowTile, ...]:
    """The tiles the exact decoder offers for ``conv`` over the window ``x``: in bfloat16, each slice of
    32 input channels outer and the taps inner, the K tile and order of the 256x32x32 kernel cuDNN runs
    for Wan 2.1's 96 output channels. Such a tile gave that kernel's bits at 1.46 against 2.69 ms for
    a 96 -> 96 convolution at 480x832 (H200, cuDNN 9.19, 2026-12-02: ``docs/benchmarks.md``); where
    cuDNN picks another kernel the first-use check finds other bits, and the shape keeps cuDNN. The
    tile of two dots where one applies (``two_dot_tile``: no product padded), else the two tiles timed for
    the fast decoder. Not float32: cuDNN's sm90 TF32 kernels there round the operands to TF32 first;
    a kernel that rounded them so gave their bits, but no decode's shape took it (cuDNN's padded way
    was faster for 96 -> 96: ``docs/benchmarks.md``, the tried table); the last convolution's sm80
    kernel matched no order tried."""
    if x.dtype != torch.bfloat16:
        return ()
    tiles = (two,) if (two := two_dot_tile(conv, x)) else window_tiles(conv, x)
    return tuple(replace(t, depth=32, channels_outer=True) for t in tiles)


def two_dot_tile(conv: torch.nn.Module, x: torch.Tensor) -> WindowTile | None:
    """The tile the fast decoder takes for ``conv`` over ``x`` without timing, if any: in bfloat16,
    where the output channels are two dots' (``two_dots``: 96 = 64 + 32, 192 = 128 + 64), one tile of
    two dots on the same rows computes them all, no product padded. Timed alone, in bursts too short
    for the card's power limit, it looked slower than a tile padded to a power of two, and so was not
    chosen; in whole decodes, which run at that limit, it made Wan 2.1's fast bf16 decode 2.4-2.9 %
    faster at a lower power (H200, 2026-12-01: ``docs/benchmarks.md``, "Its own convolution"). Not
    measured in float32, so not taken there."""
    co = conv.out_channels
    if x.dtype != torch.bfloat16 or not two_dots(co) or not _applies(conv, x):
        return None
    return WindowTile(256 if co <= 128 else 128, co, _depth(x), 8, 4)


def _depth(x: torch.Tensor) -> int:
    """A bfloat16 tile's input channels a step: 64 where they divide the window's, else 32."""
    return 64 if x.shape[1] % 64 == 0 else 32


def two_dots(channels: int) -> bool:
    """Whether ``channels`` is the sum of two powers of two from 16 to 128 (96 = 64 + 32, 192 = 128 +
    64): one tile of two dots on the same rows computes them all, none padded."""
    low = channels & -channels
    return 16 <= low < channels <= 192 and (channels - low) & (channels - low - 1) == 0 and channels - low <= 128


def window_convolved(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    channels: int,
    tile: WindowTile,
    *,
    out: torch.Tensor | None = None,
    norm: tuple[torch.Tensor, float] | None = None,
    weight_scales: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The convolution of the window ``x`` (contiguous channels-last) with the first ``channels`` output
    channels of ``weight`` (channels-last; rows past them, if any, are zeros: ``weight_rows``) and
    ``bias``, in ``tile``: a channels-last tensor of ``channels`` channels, ``out`` (channels innermost,
    e.g. the next window's interior) or a new one. ``norm`` = (gamma, scale): silu of the output's RMS
    norm stored instead, for a tile of every channel; ``weight_scales``, ``out_dtype``: FP8 operands
    (``window_conv``)."""
    from ._fast_kernels import window_conv

    return window_conv(x, weight, bias, channels, tile.rows, tile.columns, tile.depth, tile.warps, tile.stages,
                       out, norm, tile.channels_outer, weight_scales, out_dtype)  # fmt: skip
