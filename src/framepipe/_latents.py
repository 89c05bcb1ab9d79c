"""Latent videos: read them from disk, check them against a VAE, undo WanPipeline's normalization."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ._errors import UNREADABLE, LatentsError, SettingsError, why_unreadable
from ._input_files import checked_latent_file
from ._optional import require

LatentFormat = Literal["pipeline", "raw"]
LATENT_FORMATS: tuple[str, ...] = ("pipeline", "raw")


def load_latents(path: str | Path) -> torch.Tensor:
    """Read a latent video from ``.safetensors``, ``.pt``/``.pth`` (``weights_only``) or ``.npy``.

    A safetensors file must hold one tensor or one named ``latents``; a ``.pt`` file a tensor or a
    dict with a ``latents`` tensor. Returns the tensor on the CPU, as stored (shape checked later).
    """
    path = checked_latent_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensor = _from_mapping(_read_safetensors(path), path)
        elif suffix == ".npy":
            tensor = _read_npy(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            tensor = obj if isinstance(obj, torch.Tensor) else _from_mapping(obj, path)
    except LatentsError:
        raise
    except UNREADABLE as e:
        raise LatentsError(f"Cannot read latents from {path}: {why_unreadable(e)}") from e
    if isinstance(tensor, torch.Tensor):
        declared, held = tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes()
        if declared > held:  # a broadcast view (expand): a few bytes on disk, any size once copied
            raise LatentsError(
                f"{path} holds a view of shape {tuple(tensor.shape)} ({declared / 2**30:.2f} GiB) over only {held} "
                "bytes of data; save the latents themselves (tensor.contiguous())."
            )
    return tensor


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    SafetensorError = require("safetensors", "video").SafetensorError
    load_file = require("safetensors.torch", "video").load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise LatentsError(f"Cannot read latents from {path}: not a valid safetensors file ({e}).") from e


def _read_npy(path: Path) -> torch.Tensor:
    """A ``.npy`` array, its header checked against the file before anything is allocated."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise LatentsError(f"{path} is not a .npy array (a .pt or .npz file renamed?).") from None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype.kind not in "fiu":
            raise LatentsError(f"Latents in {path} have dtype {dtype}; expected a numeric array.")
        declared, held = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, path.stat().st_size - f.tell()
        if declared > held:
            raise LatentsError(
                f"{path} declares latents of shape {shape} ({declared / 2**30:.2f} GiB) but holds {held} bytes "
                "of data; the file is truncated or not what it claims."
            )
    array = np.load(path, allow_pickle=False)
    return torch.from_numpy(np.ascontiguousarray(array))


def _from_mapping(obj: object, path: Path) -> torch.Tensor:
    if not isinstance(obj, dict):
        raise LatentsError(f"{path} holds a {type(obj).__name__}; expected a tensor or a dict of tensors.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if "latents" in tensors:
        return tensors["latents"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if not tensors:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        raise LatentsError(f"{path} holds no tensor (its keys: {keys}); save the latents tensor, or a dict of it.")
    keys = ", ".join(sorted(map(str, tensors)))
    raise LatentsError(f"{path} holds several tensors ({keys}) and none is named 'latents'; save one tensor.")


def check_latents(latents: torch.Tensor, *, z_dim: int) -> torch.Tensor:
    """Return ``latents`` as (B, C, T, H, W), or raise LatentsError saying what is wrong.

    Accepts (C, T, H, W) for one video. C must equal the VAE's ``z_dim``; every value must be finite.
    """
    if not isinstance(latents, torch.Tensor):
        raise LatentsError(f"Expected latents as a torch.Tensor, got {type(latents).__name__}.")
    if latents.dim() == 4:
        latents = latents.unsqueeze(0)
    if latents.dim() != 5:
        raise LatentsError(
            f"Expected latents of shape (C, T, H, W) or (B, C, T, H, W), got shape {tuple(latents.shape)}."
        )
    if not latents.is_floating_point():
        raise LatentsError(f"Expected floating-point latents, got dtype {latents.dtype}.")
    b, c, t, h, w = latents.shape
    if c != z_dim:
        raise LatentsError(
            f"Latents have {c} channels but this VAE expects {z_dim} (shape {tuple(latents.shape)}); "
            "check that the latents and the VAE come from the same model (Wan 2.1: 16, Wan 2.2: 48)."
        )
    if min(b, t, h, w) < 1:
        raise LatentsError(f"Latents have an empty dimension: shape {tuple(latents.shape)}.")
    if not bool(torch.isfinite(latents).all()):
        bad = int((~torch.isfinite(latents)).sum())
        raise LatentsError(f"Latents contain {bad} NaN or Inf value(s); they cannot be decoded.")
    return latents


def check_one_video(latents: torch.Tensor) -> None:
    """LatentsError unless ``latents`` ([B, C, T, H, W]) hold one video: a batch's file, like a
    service's job, is one video and one output."""
    if latents.dim() == 5 and latents.shape[0] != 1:
        raise LatentsError(
            f"The latents hold {latents.shape[0]} videos (batch dimension); give one video per latent file "
            "(split them, e.g. latents[i:i+1])."
        )


def denormalize(
    latents: torch.Tensor, latents_mean: list[float], latents_std: list[float], *, dtype: torch.dtype
) -> torch.Tensor:
    """Undo Wan's latent normalization exactly as ``WanPipeline`` does before ``vae.decode``.

    ``latents.to(dtype) / (1 / std) + mean`` with mean and std cast to ``dtype`` first; the same
    operations in the same order, so the decoded pixels match the pipeline's bit for bit.
    """
    z = latents.shape[1]
    latents = latents.to(dtype)
    mean = torch.tensor(latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    return latents / inv_std + mean


def latent_shape(vae, *, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    """The latent shape (B, T, H, W) that ``vae`` decodes into ``batch`` videos of ``frames`` frames
    of ``height`` x ``width`` pixels; ``SettingsError`` if it cannot decode that size."""
    spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    if min(frames, height, width, batch) < 1 or (frames - 1) % temporal or height % spatial or width % spatial:
        raise SettingsError(
            f"This VAE decodes 1 + {temporal}k frames of multiples of {spatial} pixels; "
            f"got {frames} frames of {height}x{width} (HxW)."
        )
    return batch, 1 + (frames - 1) // temporal, height // spatial, width // spatial


def random_latents(vae, shape: tuple[int, int, int, int], *, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal latents of ``shape`` (B, T, H, W) with ``vae``'s channels, on the CPU
    (for benchmarks: they decode to noise)."""
    b, t, h, w = shape
    return torch.randn(b, vae.config.z_dim, t, h, w, generator=torch.Generator().manual_seed(seed))


def looks_raw(latents: torch.Tensor, latents_mean: list[float], latents_std: list[float]) -> bool:
    """Whether latents given in pipeline format (normalized: about 0 +- 1 per channel) look raw
    instead: their per-channel mean and spread match the VAE's ``latents_mean``/``latents_std``
    far better than 0 and 1. De-normalizing raw latents again decodes a washed-out video with no
    error, so the caller warns. (Too few values, or statistics near 0 and 1, never look raw.)"""
    # latents: [B, C, T, H, W]
    z = latents.detach().float().transpose(0, 1).reshape(latents.shape[1], -1)
    if z.shape[1] < 64:
        return False
    mean, std = z.mean(dim=1), z.std(dim=1).clamp_min(1e-6)
    want_mean = torch.tensor(latents_mean, dtype=torch.float32, device=z.device)
    want_std = torch.tensor(latents_std, dtype=torch.float32, device=z.device)

    def misfit(m: torch.Tensor, s: torch.Tensor) -> float:
        return float((torch.log(std / s) ** 2 + ((mean - m) / s) ** 2).mean())

    as_pipeline, as_raw = misfit(torch.zeros_like(mean), torch.ones_like(std)), misfit(want_mean, want_std)
    return as_raw < 0.1 and as_pipeline > max(0.1, 4 * as_raw)
