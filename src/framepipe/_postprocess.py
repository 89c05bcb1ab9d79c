"""Decoded chunk -> uint8 frames: RGB by the one rounding rule every path uses, or yuv420p from it.

Rule (the same as diffusers' ``VideoProcessor`` for PIL output): in float32,
``round(clamp(x * 0.5 + 0.5, 0, 1) * 255)`` with round-half-to-even, then uint8. Each step is one
correctly rounded IEEE float32 operation, so the CPU and CUDA give the same bytes. (diffusers'
``export_to_video`` of float frames truncates instead of rounding; framepipe always rounds.)
"""

from __future__ import annotations

import torch

from ._frames import check_frame_format


def to_uint8_frames(chunk: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Convert a decoded chunk to frames, on whatever device ``chunk`` lives.

    # chunk: [B, 3, t, H, W] float in [-1, 1] -> [B, t, H, W, 3] uint8
    With ``out`` (a uint8 tensor of that shape), writes into it and returns it.
    """
    x = chunk.float()
    x = x.mul(0.5).add_(0.5).clamp_(0.0, 1.0).mul_(255.0).round_()
    frames = x.permute(0, 2, 3, 4, 1)
    if out is None:
        return frames.to(torch.uint8).contiguous()
    out.copy_(frames)
    return out


# BT.601 limited range, as FFmpeg's swscale converts RGB for yuv420p encoders, per unit of 8-bit RGB.
_Y = tuple(w / 255 for w in (65.481, 128.553, 24.966))
_U = tuple(w / 255 for w in (-37.797, -74.203, 112.0))
_V = tuple(w / 255 for w in (112.0, -93.786, -18.214))


def _weighted(rgb: torch.Tensor, weights: tuple[float, float, float], offset: float) -> torch.Tensor:
    # One multiply or add at a time, each correctly rounded in float32, so the CPU and CUDA give the
    # same bytes (no division: CUDA divides by a scalar through its reciprocal).
    r, g, b = rgb.unbind(-1)
    total = r * weights[0]
    total = total + g * weights[1]
    total = total + b * weights[2]
    return (total + offset).round_().clamp_(0.0, 255.0)


def to_yuv420p_frames(chunk: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Convert a decoded chunk to yuv420p frames on its device (opt-in ``device_yuv``).

    # chunk: [B, 3, t, H, W] float in [-1, 1] -> [B, t, H * 3 / 2, W] uint8: the Y plane, then U
    and V (each H/2 x W/2, row-major), FFmpeg's yuv420p layout. The RGB frames are exactly those of
    ``to_uint8_frames``; they become YUV with BT.601 limited-range coefficients, chroma averaged
    over 2x2 pixels. This matches swscale's ``AREA`` conversion within one level, and differs from
    its default (bilinear) chroma, which the encoder gets from RGB frames (docs/benchmarks.md).
    """
    b, _, t, h, w = chunk.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {w}x{h}.")
    rgb = to_uint8_frames(chunk).float()  # [B, t, H, W, 3], whole numbers
    y = _weighted(rgb, _Y, 16.0)
    pooled = rgb.reshape(b, t, h // 2, 2, w // 2, 2, 3).sum(dim=(3, 5)) * 0.25  # exact: sums of 4 bytes
    u, v = _weighted(pooled, _U, 128.0), _weighted(pooled, _V, 128.0)
    planes = torch.cat([y.reshape(b, t, -1), u.reshape(b, t, -1), v.reshape(b, t, -1)], dim=2)
    planes = planes.reshape(b, t, h * 3 // 2, w)
    if out is None:
        return planes.to(torch.uint8)
    out.copy_(planes)
    return out


def converter(frame_format: str):
    """The chunk -> frames conversion for ``frame_format``."""
    return to_uint8_frames if check_frame_format(frame_format) == "rgb24" else to_yuv420p_frames
