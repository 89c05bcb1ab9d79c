"""Pixel error between two decodes of the same latents: the yardstick for every fast path."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class FrameError:
    """Error of ``candidate`` against ``reference`` uint8 frames."""

    max_abs: int
    mean_abs: float
    psnr_db: float  # inf when identical
    share_differing: float  # share of uint8 values that differ at all
    frames: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["psnr_db"] = None if math.isinf(self.psnr_db) else self.psnr_db
        return d


def frame_error(reference: torch.Tensor, candidate: torch.Tensor) -> FrameError:
    """Compare uint8 frames of any equal shape ([..., H, W, 3])."""
    if reference.shape != candidate.shape:
        raise ValueError(f"Shapes differ: reference {tuple(reference.shape)}, candidate {tuple(candidate.shape)}.")
    diff = reference.to(torch.int16) - candidate.to(torch.int16)
    mse = diff.float().pow(2).mean().item()
    return FrameError(
        max_abs=int(diff.abs().max()) if diff.numel() else 0,
        mean_abs=diff.abs().float().mean().item(),
        psnr_db=psnr_from_mse(mse),
        share_differing=(diff != 0).float().mean().item(),
        frames=int(reference.shape[-4]) if reference.dim() >= 4 else 1,
    )


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 255.0) -> float:
    """PSNR in dB of two tensors on the same scale (0-255 for uint8 frames)."""
    return psnr_from_mse((a.double() - b.double()).pow(2).mean().item(), peak)


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, peak: float, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Local SSIM (Wang et al. 2004, Gaussian window) per pixel and channel; differentiable.

    # x, y: [N, C, H, W] float, values on a scale of 0..peak -> [N, C, H - window + 1, W - window + 1]
    """
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}.")
    c = x.shape[1]
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    rows, cols = g.view(1, 1, window, 1).expand(c, -1, -1, -1), g.view(1, 1, 1, window).expand(c, -1, -1, -1)

    def blur(t):
        # The Gaussian is separable: two 1-D passes cost 2 x 11 taps instead of 121 (5-6x faster in
        # float64 on the CPU).
        return F.conv2d(F.conv2d(t, rows, groups=c), cols, groups=c)

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, *, peak: float = 255.0) -> float:
    """Mean SSIM over frames and channels of uint8 frames.

    # a, b: [..., H, W, 3] -> float
    """
    x = a.double().reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)  # [N, 3, H, W]
    y = b.double().reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    return ssim_map(x, y, peak=peak).mean().item()
