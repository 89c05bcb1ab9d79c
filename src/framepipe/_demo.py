"""The embedded default: a deterministic sample latent video and a CPU-sized Wan 2.1 VAE."""

from __future__ import annotations

import math

import torch


def sample_latents(*, frames: int = 6, height: int = 32, width: int = 32, z_dim: int = 16, seed: int = 0):
    """A smooth latent video that drifts over time (B=1, C=z_dim, T=frames, H, W), fixed by ``seed``.

    Low-frequency waves with seeded phases and speeds, so the decoded frames show moving structure
    rather than per-pixel noise. No file and no download needed.
    """
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(z_dim, 4, generator=g) * 2 * math.pi
    speed = (torch.rand(z_dim, 2, generator=g) - 0.5) * 0.6
    t = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1)
    y = torch.linspace(0, 2 * math.pi, height).view(1, 1, height, 1)
    x = torch.linspace(0, 2 * math.pi, width).view(1, 1, 1, width)
    p = phase.view(z_dim, 4, 1, 1, 1)
    s = speed.view(z_dim, 2, 1, 1, 1)
    wave = torch.sin(x + s[:, 0] * t * 2 + p[:, 0]) * torch.cos(y + s[:, 1] * t * 2 + p[:, 1])
    wave = wave + 0.5 * torch.sin(2 * x - y + t * 0.4 + p[:, 2]) + 0.3 * torch.cos(x + 2 * y + p[:, 3])
    return wave.unsqueeze(0).contiguous()  # [1, z_dim, T, H, W]
