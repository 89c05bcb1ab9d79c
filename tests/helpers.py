"""Shared by the tests: reference decodes and original-layout checkpoints written from scratch."""

import re

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


_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}  # fmt: skip


def to_original_layout(state: dict[str, torch.Tensor], *, residual: bool, res_blocks: int = 2):
    """Rename a diffusers AutoencoderKLWan state dict to the Wan release's names (Wan2.x_VAE.pth)."""
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.middle.{2 * int(m[2])}.", k)
        if residual:
            k = re.sub(
                r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.",
                r"encoder.downsamples.\1.downsamples.\2.",
                k,
            )
            k = re.sub(
                r"^encoder\.down_blocks\.(\d+)\.downsampler\.",
                lambda m: f"encoder.downsamples.{m[1]}.downsamples.{res_blocks}.",
                k,
            )
            k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2.", k)
            k = re.sub(
                r"^decoder\.up_blocks\.(\d+)\.upsampler\.",
                lambda m: f"decoder.upsamples.{m[1]}.upsamples.{res_blocks + 1}.",
                k,
            )
        else:
            k = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", k)
            per_level = res_blocks + 2  # res_blocks + 1 resnets, then one upsampler
            k = re.sub(
                r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                lambda m, per_level=per_level: f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}.",
                k,
            )
            k = re.sub(
                r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                lambda m, per_level=per_level: f"decoder.upsamples.{int(m[1]) * per_level + res_blocks + 1}.",
                k,
            )
        if re.search(r"\.(middle\.[02]|downsamples\.\d+|upsamples\.\d+)\.", k):
            for new, old in _RESNET.items():
                k = re.sub(rf"\.{new}\.(weight|bias|gamma)$", rf".{old}.\1", k)
        out[k] = value
    return out
