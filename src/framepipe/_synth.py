"""Procedural video clips for training and checking a VAE without downloading a dataset.

A clip shows a textured gradient background and moving, scaling shapes with soft edges. It also
carries a line of text, and the camera pans and zooms. Everything is drawn from a seed, so a clip
is the same on every machine. Drawing is vectorized with torch and runs on the CPU or a GPU;
text is rasterized once per clip with Pillow.
"""

from __future__ import annotations

import math
import random
import string

import numpy as np
import torch
import torch.nn.functional as F

from ._optional import require


def _text_mask(rng: random.Random, size: int) -> np.ndarray:
    require("PIL", "video")
    from PIL import Image, ImageDraw, ImageFont

    length = rng.randint(4, 10)
    text = "".join(rng.choice(string.ascii_letters + string.digits + "  ") for _ in range(length)).strip() or "Wan"
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 4, bottom - top + 4))
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, font=font, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def synth_clips(
    batch: int,
    frames: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    crop: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Return ``batch`` clips, each made from ``seed + index``.

    With ``crop``, each clip is a ``crop`` x ``crop`` window, at a seeded position, of a
    ``height`` x ``width`` scene: content keeps the scale of the full frame, at a fraction of the
    drawing cost (for training on crops).

    # -> [B, 3, frames, height, width] float32 in [-1, 1], or [B, 3, frames, crop, crop]
    """
    if crop is not None and not 0 < crop <= min(height, width):
        raise ValueError(f"crop {crop} must be between 1 and the scene's smaller side {min(height, width)}")
    device = torch.device(device)
    return torch.stack([_clip(frames, height, width, seed=seed + i, crop=crop, device=device) for i in range(batch)])


def _clip(frames: int, height: int, width: int, *, seed: int, crop: int | None, device: torch.device) -> torch.Tensor:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(shape, generator=g).to(device)

    # Scene coordinates of every pixel at every frame: camera pan and zoom about the centre.
    t = torch.arange(frames, device=device, dtype=torch.float32).view(frames, 1, 1)
    y = torch.linspace(-0.5, 0.5, height, device=device).view(1, height, 1) * (height / max(height, width))
    x = torch.linspace(-0.5, 0.5, width, device=device).view(1, 1, width) * (width / max(height, width))
    pan = (rand(2) - 0.5) * 0.03
    zoom = 1.0 + (rng.random() - 0.5) * 0.02 * t
    if crop is not None:  # drawn from its own generator, so the scene is the same as uncropped
        where = torch.Generator().manual_seed(seed + 7_919)
        top = int(torch.randint(0, height - crop + 1, (1,), generator=where))
        left = int(torch.randint(0, width - crop + 1, (1,), generator=where))
        y, x = y[:, top : top + crop], x[..., left : left + crop]
    rows, cols = y.shape[1], x.shape[2]
    sx = (x / zoom + pan[0] * t).expand(frames, rows, cols)  # [F, rows, cols]
    sy = (y / zoom + pan[1] * t).expand(frames, rows, cols)

    # Background: a two-colour gradient along a random direction, plus sinusoidal texture whose
    # amplitude falls with frequency, as in natural images (about 1/f).
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (sx * math.cos(angle) + sy * math.sin(angle) + 0.75) / 1.5
    c0, c1 = rand(3, 1, 1, 1), rand(3, 1, 1, 1)
    image = c0 + (c1 - c0) * ramp.clamp(0, 1).unsqueeze(0)  # [3, F, H, W]
    for _ in range(rng.randint(1, 3)):
        freq, theta = rng.uniform(1.5, 12), rng.uniform(0, math.pi)
        wave = torch.sin(2 * math.pi * freq * (sx * math.cos(theta) + sy * math.sin(theta)) + rng.uniform(0, 6.3))
        image = image + (rand(3, 1, 1, 1) - 0.5) * 0.25 * min(1.0, 3 / freq) * wave.unsqueeze(0)

    # Shapes: circles, boxes and rings that move and grow or shrink; soft, anti-aliased edges.
    pixel = 1.0 / max(height, width)
    for _ in range(rng.randint(2, 6)):
        cx = rng.uniform(-0.4, 0.4) + rng.uniform(-0.01, 0.01) * t
        cy = rng.uniform(-0.4, 0.4) + rng.uniform(-0.01, 0.01) * t
        size = rng.uniform(0.04, 0.2) * (1 + rng.uniform(-0.02, 0.02) * t)
        dx, dy = sx - cx, sy - cy
        kind = rng.choice(("circle", "box", "ring"))
        if kind == "circle":
            sdf = torch.sqrt(dx**2 + dy**2) - size
        elif kind == "box":
            aspect = rng.uniform(0.4, 1.0)
            sdf = torch.maximum(dx.abs() - size, dy.abs() - size * aspect)
        else:
            sdf = (torch.sqrt(dx**2 + dy**2) - size).abs() - size * 0.25
        alpha = (0.5 - sdf / (1.5 * pixel)).clamp(0, 1).unsqueeze(0)
        colour = rand(3, 1, 1, 1)
        if rng.random() < 0.4:  # striped fill
            freq = rng.uniform(4, 14)
            stripes = torch.sin(2 * math.pi * freq * (dx + dy)).unsqueeze(0)
            colour = colour + 0.3 * min(1.0, 6 / freq) * stripes * (rand(3, 1, 1, 1) - 0.5)
        image = image * (1 - alpha) + colour * alpha

    # Text: a random string that drifts across the frame.
    mask = torch.from_numpy(_text_mask(rng, size=rng.randint(max(8, height // 16), max(10, height // 6)))).to(device)
    mh, mw = mask.shape
    scale = max(height, width)
    ox = rng.uniform(-0.45, 0.1) + rng.uniform(-0.008, 0.008) * t
    oy = rng.uniform(-0.45, 0.35) + rng.uniform(-0.008, 0.008) * t
    u = (sx - ox) * scale / mw * 2 - 1  # the mask's normalized coordinates for each pixel
    v = (sy - oy) * scale / mh * 2 - 1
    grid = torch.stack([u, v], dim=-1)  # [F, H, W, 2]
    alpha = F.grid_sample(mask.expand(frames, 1, mh, mw), grid, align_corners=False, padding_mode="zeros")
    alpha = alpha.permute(1, 0, 2, 3)  # [1, F, H, W]
    colour = rand(3, 1, 1, 1)
    image = image * (1 - alpha) + colour * alpha

    return image.clamp(0, 1) * 2 - 1
