"""Decoded chunk -> uint8 RGB frames, by the one rounding rule every path uses.

Rule (the same as diffusers' ``VideoProcessor`` for PIL output): in float32,
``round(clamp(x * 0.5 + 0.5, 0, 1) * 255)`` with round-half-to-even, then uint8. Each step is one
correctly rounded IEEE float32 operation, so the CPU and CUDA give the same bytes. (diffusers'
``export_to_video`` of float frames truncates instead of rounding; framepipe always rounds.)
"""

from __future__ import annotations

import torch


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
