"""One steady chunk of framepipe's exact decoder step, with one of its steps replaced while it runs:
for the scripts beside this file that look at each call a chunk makes (its shapes, its inputs)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from framepipe._decoder import WanDecoderStep


def third_chunk_with(vae, z: torch.Tensor, owner: object, name: str, replacement: Callable) -> None:
    """Decode z's first three latent frames one chunk at a time, ``owner.name`` replaced by
    ``replacement`` during the third only: a steady chunk, the first two having filled its history."""
    plain = getattr(owner, name)
    step, cache = WanDecoderStep(vae), [None] * 64
    for i in range(3):
        if i == 2:
            setattr(owner, name, replacement)
        try:
            step(z[:, :, i : i + 1], cache, first_chunk=i == 0)
        finally:
            setattr(owner, name, plain)
