"""The FP8 decoder's arithmetic (``decoder="fast-fp8"``, opt-in, lower fidelity): its residual blocks'
3x3x3 convolutions take e4m3 operands, twice the tensor-core rate of bfloat16 on Hopper.

Note [FP8 convolutions]
~~~~~~~~~~~~~~~~~~~~~~~
A residual block's convolution reads silu(norm(x)), whose channel c is at most ``scale * |gamma_c|``
in size (a channel's share of a pixel's RMS norm is at most 1; SiLU shrinks it). So the fast norm
kernel writes the window in e4m3 scaled by ``factor_c = 448 / (scale * |gamma_c|)`` (e4m3's largest
value, 448, at that bound): a static scale a channel, no pass over the values to find it. The
convolution of those scaled values undoes the scales in its weights, ``w[o, c] / factor_c``, which
are then rounded to e4m3 with a scale a output channel (their largest value at 448), undone on the
float32 sums before the bias. The causal cache holds the e4m3 windows' last frames (half the bytes).
The resamplers', the time and the first and last convolutions stay bfloat16: their windows are
copies, not a norm's output, or they are small; so do convolutions of fewer than 64 or a number of
input channels not a multiple of 64, and every convolution where the fast decoder runs PyTorch's ops
(a batch of videos, frames under 128 latent pixels: ``fused_fits``). Measured error and speed:
``docs/benchmarks.md``, "The FP8 decoder".
"""

from __future__ import annotations

import torch

from ._layouts import channels_last_format, kept_copy
from ._window_conv import WindowTile, kernel_fits

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
COLUMNS = 128  # output channels a tile (``fp8_tiles``)


def fp8_fits(conv: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv`` can run on x ([1, C, T, H, W], before its norm) with e4m3 operands: the window
    kernel's (``kernel_fits``), input channels a multiple of 64, x bfloat16 or float32."""
    return x.dtype in (torch.bfloat16, torch.float32) and kernel_fits(conv, x, 64)


def fp8_copies(conv: torch.nn.Conv3d, norm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``conv`` over silu(``norm``(x)) takes in e4m3: the window's factors a channel
    (``norm_factors``), the weights and their scales (``fp8_weights``, output channels rounded up to
    ``COLUMNS``). Made once and kept while both modules' parameters are unchanged."""

    def make(conv: torch.nn.Conv3d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        factors = norm_factors(norm)
        return factors, *fp8_weights(conv, factors, -(-conv.out_channels // COLUMNS) * COLUMNS)

    gamma = norm.gamma  # which tensor, where, how often written: a new gamma makes them again
    return kept_copy(conv, ("fp8", norm, gamma.data_ptr(), gamma._version), make)


def norm_factors(norm) -> torch.Tensor:
    """The factors a channel (float32) that bring silu(``norm``(x)) into e4m3's range (Note [FP8
    convolutions]); a channel whose gamma is 0 (always 0) gets 0."""
    bound = norm.gamma.detach().reshape(-1).float().abs() * float(norm.scale)
    return torch.where(bound > 0, E4M3_MAX / bound, torch.zeros_like(bound))


def fp8_weights(conv: torch.nn.Conv3d, factors: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv``'s weights for windows scaled by ``factors``: e4m3, channels-last, with zero output
    channels added up to ``rows``, and their scales a output channel (float32, 0 for the added ones)."""
    weight = conv.weight.detach().float()
    inverse = torch.where(factors > 0, 1.0 / factors, torch.zeros_like(factors))
    folded = weight * inverse.view(1, -1, 1, 1, 1)
    scales = folded.abs().amax(dim=(1, 2, 3, 4)) / E4M3_MAX
    quantized = folded / torch.where(scales > 0, scales, torch.ones_like(scales)).view(-1, 1, 1, 1, 1)
    if (extra := rows - conv.out_channels) > 0:
        quantized = torch.cat([quantized, quantized.new_zeros(extra, *quantized.shape[1:])])
        scales = torch.cat([scales, scales.new_zeros(extra)])
    return quantized.to(E4M3).contiguous(memory_format=channels_last_format(5)), scales


def fp8_tiles(window: torch.Tensor) -> tuple[WindowTile, ...]:
    """The tiles timed for an e4m3 window: ``COLUMNS`` output channels, 128 or 256 output pixels, 128
    input channels a step where they divide the window's (else 64): the fastest in ``fp8_conv_probe.py``."""
    depth = 128 if window.shape[1] % 128 == 0 else 64
    return WindowTile(128, COLUMNS, depth, 4, 4), WindowTile(256, COLUMNS, depth, 8, 4)
