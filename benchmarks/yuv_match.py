"""How closely can an RGB -> yuv420p conversion done in torch (so, on the GPU) match FFmpeg's?

The frames framepipe writes today reach the encoder as RGB, and PyAV converts them with swscale.
A GPU conversion would send half the bytes over PCIe (1.5 instead of 3 per pixel) and spare the
host the conversion, but only if it matches FFmpeg's result. This script converts frames with
BT.601 limited-range coefficients and a 2x2 box average for chroma, in float64, rounded. It
compares the result with swscale under each interpolation flag, per plane: the max absolute
difference and the share of values that differ. "default" is what the encoder receives today
(checked by encoding through rawvideo and reading the planes back: identical to BILINEAR).

    python benchmarks/yuv_match.py            # procedural frames and uniform noise, 480x832
"""

from __future__ import annotations

import argparse

import av
import numpy as np
import torch

from framepipe._postprocess import to_uint8_frames
from framepipe._synth import synth_clips


def torch_yuv420p(frame: np.ndarray) -> list[np.ndarray]:
    """[H, W, 3] uint8 RGB -> Y [H, W], U and V [H/2, W/2], BT.601 limited range, box-filtered chroma."""
    x = torch.from_numpy(frame).double()
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255

    def pool(c: torch.Tensor) -> torch.Tensor:
        return c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(dim=(1, 3))

    r, g, b = pool(r), pool(g), pool(b)
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return [p.round().clamp(0, 255).numpy().astype(np.int32) for p in (y, u, v)]


def ffmpeg_yuv420p(frame: np.ndarray, interpolation: str | None) -> list[np.ndarray]:
    h, w = frame.shape[:2]
    planes = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", interpolation=interpolation)
    a = planes.to_ndarray().astype(np.int32)  # Y, then U, then V, stacked as (H * 3 / 2, W)
    return [a[:h], a[h : h + h // 4].reshape(h // 2, w // 2), a[h + h // 4 :].reshape(h // 2, w // 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="480x832")
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    inputs = {f"procedural seed {s}": to_uint8_frames(synth_clips(1, 1, height, width, seed=s))[0, 0].numpy()
              for s in range(3)}  # fmt: skip
    inputs["uniform noise"] = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    print(f"PyAV {av.__version__}, libswscale {'.'.join(map(str, av.library_versions['libswscale']))}, {args.size}")
    print(f"{'swscale interpolation':<22} {'input':<20} {'max |diff| Y U V':<18} share differing Y U V")
    for interpolation in (None, "BILINEAR", "BICUBIC", "AREA", "POINT"):
        for name, frame in inputs.items():
            ours, theirs = torch_yuv420p(frame), ffmpeg_yuv420p(frame, interpolation)
            worst = " ".join(f"{int(np.abs(a - b).max()):>3}" for a, b in zip(ours, theirs, strict=True))
            share = " ".join(f"{100 * float((a != b).mean()):5.2f}%" for a, b in zip(ours, theirs, strict=True))
            print(f"{interpolation or 'default (as encoded)':<22} {name:<20} {worst:<18} {share}")


if __name__ == "__main__":
    main()
