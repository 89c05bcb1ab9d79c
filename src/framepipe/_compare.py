"""``framepipe compare``: the pixel error of a candidate path against the plain fp32 decode.

The reference is what diffusers gives: ``AutoencoderKLWan.decode`` of the whole video in float32,
converted with framepipe's uint8 rule. The candidate is framepipe's decode with the settings
under test (dtype, executor, decoder, ring depth). Any faster path that changes pixels reports its
error here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._api import decode
from ._latents import check_latents, denormalize
from ._models import model_name, move_vae, resolve_dtype
from ._postprocess import to_uint8_frames
from ._quality import frame_error
from .sinks import ArraySink


@torch.inference_mode()
def reference_frames(vae, latents: torch.Tensor, *, latent_format: str = "pipeline") -> np.ndarray:
    """diffusers' plain decode in the VAE's dtype: [B, N, H, W, 3] uint8 on the host."""
    param = next(vae.parameters())
    z = latents.to(param.device)
    if latent_format == "pipeline":
        z = denormalize(z, vae.config.latents_mean, vae.config.latents_std, dtype=param.dtype)
    else:
        z = z.to(param.dtype)
    return to_uint8_frames(vae.decode(z).sample).cpu().numpy()


def compare(
    vae,
    latents: torch.Tensor,
    *,
    dtype: str | torch.dtype = "bfloat16",
    mode: str = "async",
    decoder: str = "framepipe",
    slots: int = 2,
    latent_format: str = "pipeline",
    on_phase: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode ``latents`` with the fp32 reference and with the candidate; return their error.

    ``vae`` must be in float32; a copy is cast to ``dtype`` for the candidate. ``on_phase`` hears what
    starts (the reference's one long call, the candidate's decode); ``progress``: the candidate's bar.
    """
    phase = on_phase or (lambda words: None)
    param = next(vae.parameters())
    if param.dtype != torch.float32:
        raise ValueError(f"The reference VAE must be float32, got {param.dtype}.")
    latents = check_latents(latents, z_dim=vae.config.z_dim)
    phase("decoding the fp32 reference (diffusers' vae.decode of the whole video, in one call)")
    reference = reference_frames(vae, latents, latent_format=latent_format)
    candidate_dtype = resolve_dtype(dtype)
    candidate_vae = vae if candidate_dtype == torch.float32 else move_vae(
        copy.deepcopy(vae), device=param.device, dtype=candidate_dtype
    )  # fmt: skip
    sinks = [ArraySink() for _ in range(latents.shape[0])]
    phase(f"decoding the candidate ({str(candidate_dtype).removeprefix('torch.')}, {mode}, {decoder} decoder)")
    decode(latents, sinks, vae=candidate_vae, mode=mode, decoder=decoder, slots=slots, latent_format=latent_format,
           progress=progress)  # fmt: skip
    candidate = np.stack([s.frames for s in sinks])
    overall = frame_error(torch.from_numpy(reference), torch.from_numpy(candidate))
    pairs = zip(reference, candidate, strict=True)
    per_video = [frame_error(torch.from_numpy(r), torch.from_numpy(c)).to_dict() for r, c in pairs]
    return {
        "model": model_name(vae),
        "reference": {"path": "diffusers AutoencoderKLWan.decode", "dtype": "float32", "device": str(param.device)},
        "candidate": {
            "path": f"framepipe {mode}, {decoder} decoder",
            "dtype": str(candidate_dtype).removeprefix("torch."),
            "device": str(param.device),
            "slots": slots,
        },
        "videos": int(reference.shape[0]),
        "frames_per_video": int(reference.shape[1]),
        "height": int(reference.shape[2]),
        "width": int(reference.shape[3]),
        "error": overall.to_dict(),
        "per_video": per_video,
    }
