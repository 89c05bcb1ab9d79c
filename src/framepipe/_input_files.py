"""The files a command reads (latents, a VAE checkpoint), checked without torch: a mistyped path fails
at once, before a stream starts or a model loads, not seconds later."""

from __future__ import annotations

from pathlib import Path

from ._errors import CheckpointError, LatentsError

LATENT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".npy")


def checked_latent_file(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it is a non-empty file of a latent type, else a ``LatentsError`` that
    says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise LatentsError(f"Latent file not found: {path}.")
    if not path.is_file():
        raise LatentsError(f"Latent path is not a file: {path}.")
    if path.stat().st_size == 0:
        raise LatentsError(f"Latent file is empty: {path}.")
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise LatentsError(
            f"Unsupported latent file type {suffix!r} ({path}). Supported: {', '.join(LATENT_SUFFIXES)}."
        )
    return path


def checked_vae_path(path: str | Path) -> Path:
    """``path`` as a ``Path`` if something is there (a checkpoint file or a diffusers folder, read
    later), else a ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint not found: {path}.")
    return path
