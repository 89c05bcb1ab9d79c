"""The embedded default run: a procedural clip goes through framepipe's trained VAE and back.

``run_demo`` draws a seeded clip, encodes it to latents with the VAE's encoder, decodes the
latents through the asynchronous pipeline, and writes original and reconstruction side by side
into one video, measuring the reconstruction's PSNR on the way. No file, GPU or download needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._api import DecodeResult, decode
from ._latents import latent_shape
from ._postprocess import to_uint8_frames
from ._quality import psnr_from_mse
from ._synth import synth_clips
from .sinks import Sink, VideoSettings, open_sink


@torch.no_grad()
def clip_latents(vae, clip: torch.Tensor) -> torch.Tensor:
    """Raw (de-normalized) latents of ``clip`` ([B, 3, F, H, W] in [-1, 1]): the posterior mean of
    ``vae``'s encoder, computed on the VAE's device and in its dtype, returned as float32 on the CPU."""
    param = next(vae.parameters())
    z = vae.encode(clip.to(param.device, param.dtype)).latent_dist.mode()
    return z.float().cpu()


def procedural_latents(vae, frames: int, height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """Raw latents of a seeded procedural clip of ``frames`` x ``height`` x ``width`` encoded by ``vae``
    itself: latents whose decode can be judged against the clip (``SettingsError`` for a size the
    VAE cannot encode)."""
    latent_shape(vae, frames=frames, height=height, width=width)  # checks the size
    return clip_latents(vae, synth_clips(1, frames, height, width, seed=seed))


class SideBySideSink:
    """Writes each decoded frame to the right of its original, and measures the reconstruction.

    Wraps another sink, which receives frames twice as wide. ``psnr_db`` is the PSNR of every
    decoded frame against its original, over the frames written so far."""

    def __init__(self, inner: Sink, original: np.ndarray):
        self.inner, self.original = inner, original  # original: [F, H, W, 3] uint8
        self.count, self.squared_error = 0, 0.0
        self.path = getattr(inner, "path", None)

    def open(self, *, frames: int, height: int, width: int) -> None:
        if (frames, height, width) != self.original.shape[:3]:
            raise ValueError(f"Decoding {frames}x{height}x{width}, but the original is {self.original.shape[:3]}.")
        self.inner.open(frames=frames, height=height, width=2 * width)

    def write(self, frames: np.ndarray) -> None:
        original = self.original[self.count : self.count + len(frames)]
        self.squared_error += float(np.square(original.astype(np.float64) - frames).sum())
        self.count += len(frames)
        self.inner.write(np.concatenate([original, frames], axis=2))

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def psnr_db(self) -> float:
        values = self.count * self.original[0].size
        return psnr_from_mse(self.squared_error / values) if values else float("nan")


@dataclass
class DemoResult:
    """What ``run_demo`` did: the decode's own result, the reconstruction's PSNR in dB, and the
    whole demo's wall time (drawing, encoding and decoding)."""

    decode: DecodeResult
    psnr_db: float
    seconds: float


def run_demo(
    output: str | os.PathLike[str],
    vae,
    *,
    frames: int = 33,
    size: int = 256,
    seed: int = 0,
    video: VideoSettings | None = None,
    on_phase: Callable[[str], None] | None = None,
    **decode_options,
) -> DemoResult:
    """Encode a procedural ``frames`` x ``size`` x ``size`` clip with ``vae``, decode it through
    ``decode`` (async by default; ``decode_options`` as ``decode_many`` takes them) and write
    original | reconstruction to ``output`` with the ``video`` settings. ``on_phase(words)`` is
    told when each phase before the decode starts (the decode has its own progress bar)."""
    start = time.perf_counter()
    say = on_phase or (lambda words: None)
    latent_shape(vae, frames=frames, height=size, width=size)  # checks the size before any work
    inner = open_sink(output, video)  # a bad output path fails here, before any work
    say(f"drawing a procedural {frames}-frame {size}x{size} clip")
    clip = synth_clips(1, frames, size, size, seed=seed)
    sink = SideBySideSink(inner, to_uint8_frames(clip)[0].numpy())
    say("encoding it to latents with the VAE's encoder (on a CPU, the longest phase)")
    latents = clip_latents(vae, clip)
    say("decoding the latents through the pipeline and writing original | decoded")
    result = decode(latents, sink, vae=vae, latent_format="raw", **decode_options)
    return DemoResult(decode=result, psnr_db=sink.psnr_db, seconds=time.perf_counter() - start)
