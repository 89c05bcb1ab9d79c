"""Shared by the tests: writing frames through a sink, and the reference decode."""

import torch

from framepipe import to_uint8_frames


def write_all(sink, frames, chunk=4, *, height=None, width=None):
    """Open ``sink``, write ``frames`` ([N, H, W, 3], or planes with ``height``/``width`` given) in
    chunks of ``chunk`` frames as the pipeline does, and close it."""
    sink.open(frames=len(frames), height=height or frames.shape[1], width=width or frames.shape[2])
    for i in range(0, len(frames), chunk):
        sink.write(frames[i : i + chunk])
    sink.close()


def diffusers_frames(vae, latents: torch.Tensor, *, latent_format="pipeline") -> torch.Tensor:
    """What diffusers gives: WanPipeline's de-normalization, ``vae.decode``, framepipe's uint8 rule.

    # -> [B, N, H, W, 3] uint8
    """
    dtype = next(vae.parameters()).dtype
    z = latents.to(dtype)
    if latent_format == "pipeline":  # written as pipeline_wan.py does it
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        z = z / std + mean
    with torch.no_grad():
        video = vae.decode(z).sample
    return to_uint8_frames(video).cpu()
