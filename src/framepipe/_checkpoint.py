"""Read Wan VAE checkpoints in the layouts users download, and map them onto diffusers' names.

Three layouts are recognized by their keys: diffusers (``decoder.conv_in.weight``), the original Wan
release (``Wan2.1_VAE.pth``, ``Wan2.2_VAE.pth``; ``decoder.conv1.weight``), which ComfyUI repackages
as ``wan_2.1_vae.safetensors`` / ``wan2.2_vae.safetensors`` with the same keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ._errors import UNREADABLE, CheckpointError, why_unreadable
from ._optional import require

_WRAPPER_KEYS = ("state_dict", "model", "vae")
_PREFIXES = ("first_stage_model.", "vae.", "model.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load the tensors of a single-file checkpoint on the CPU (``weights_only`` for pickles)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"VAE checkpoint is empty: {path}.")
    SafetensorError = require("safetensors", "video").SafetensorError

    try:
        if path.suffix.lower() == ".safetensors":
            state = require("safetensors.torch", "video").load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except SafetensorError as e:
        raise CheckpointError(f"Cannot read VAE checkpoint {path}: not a valid safetensors file ({e}).") from e
    except UNREADABLE as e:
        raise CheckpointError(f"Cannot read VAE checkpoint {path}: {why_unreadable(e)}") from e
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no state dict of tensors.")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "decoder.") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"diffusers"`` or ``"original"``; CheckpointError if the keys are not a Wan VAE's."""
    if "decoder.conv_in.weight" in state and "post_quant_conv.weight" in state:
        return "diffusers"
    if "decoder.conv1.weight" in state and "decoder.middle.0.residual.0.gamma" in state and "conv2.weight" in state:
        return "original"
    sample = ", ".join(sorted(state)[:3])
    raise CheckpointError(
        f"Not a Wan VAE checkpoint: expected keys such as 'decoder.conv_in.weight' (diffusers) or "
        f"'decoder.middle.0.residual.0.gamma' (Wan/ComfyUI), found {sample}, ..."
    )


def infer_config(state: dict[str, torch.Tensor], layout: str) -> dict[str, Any]:
    """The ``AutoencoderKLWan`` config arguments that a checkpoint's tensor shapes imply.

    Widths, latent channels, patching and the Wan 2.2 residual variant are read from the shapes;
    ``dim_mult`` (1, 2, 4, 4), two residual blocks per level and the temporal schedule are Wan's
    own and are checked by the strict load that follows.
    """
    if layout == "diffusers":
        names = {
            "post": "post_quant_conv.weight",
            "enc_in": "encoder.conv_in.weight",
            "dec_in": "decoder.conv_in.weight",
            "dec_out": "decoder.conv_out.weight",
        }
        residual = any(k.startswith("encoder.down_blocks.0.resnets.") for k in state)
    else:
        names = {
            "post": "conv2.weight",
            "enc_in": "encoder.conv1.weight",
            "dec_in": "decoder.conv1.weight",
            "dec_out": "decoder.head.2.weight",
        }
        residual = any(k.startswith("decoder.upsamples.0.upsamples.") for k in state)
    try:
        z_dim = state[names["post"]].shape[0]
        base_dim, in_channels = state[names["enc_in"]].shape[:2]
        decoder_width = state[names["dec_in"]].shape[0]
        out_channels = state[names["dec_out"]].shape[0]
    except KeyError as e:
        raise CheckpointError(f"Wan VAE checkpoint is missing tensor {e.args[0]!r}.") from e
    patch = round((in_channels / 3) ** 0.5)
    if patch * patch * 3 != in_channels:
        raise CheckpointError(f"Unexpected VAE input channels {in_channels}: expected 3 x patch_size^2.")
    config: dict[str, Any] = dict(
        base_dim=int(base_dim),
        decoder_base_dim=int(decoder_width) // 4,
        z_dim=int(z_dim),
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        is_residual=residual,
        patch_size=patch if patch > 1 else None,
        scale_factor_spatial=8 * patch,
    )
    return config


def to_diffusers(state: dict[str, torch.Tensor], layout: str, *, residual: bool) -> dict[str, torch.Tensor]:
    """Rename an original-layout state dict to diffusers' ``AutoencoderKLWan`` names."""
    if layout == "diffusers":
        return state
    if not residual:
        single_file = require("diffusers.loaders.single_file_utils", "video")
        return single_file.convert_wan_vae_to_diffusers(state)
    return {_rename_wan22(k): v for k, v in state.items()}


_COMMON = {
    "conv1.": "quant_conv.",
    "conv2.": "post_quant_conv.",
    "encoder.conv1.": "encoder.conv_in.",
    "decoder.conv1.": "decoder.conv_in.",
    "encoder.head.0.": "encoder.norm_out.",
    "encoder.head.2.": "encoder.conv_out.",
    "decoder.head.0.": "decoder.norm_out.",
    "decoder.head.2.": "decoder.conv_out.",
}
_RESIDUAL_PARTS = {
    "residual.0.": "norm1.",
    "residual.2.": "conv1.",
    "residual.3.": "norm2.",
    "residual.6.": "conv2.",
    "shortcut.": "conv_shortcut.",
}
_MIDDLE = re.compile(r"^(encoder|decoder)\.middle\.(\d)\.(.*)$")
_LEVEL = re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.*)$")


def _rename_residual_part(rest: str) -> str:
    for old, new in _RESIDUAL_PARTS.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _rename_wan22(key: str) -> str:
    """One Wan 2.2 (TI2V-5B) VAE key in diffusers' naming; unknown keys pass through to the strict load."""
    for old, new in _COMMON.items():
        if key.startswith(old) and "." not in key[len(old) :]:
            return new + key[len(old) :]
    if m := _MIDDLE.match(key):
        side, index, rest = m.groups()
        if index == "1":  # attention block: norm, to_qkv and proj keep their names
            return f"{side}.mid_block.attentions.0.{rest}"
        return f"{side}.mid_block.resnets.{int(index) // 2}.{_rename_residual_part(rest)}"
    if m := _LEVEL.match(key):
        stage, level, inner, rest = m.groups()
        block = "encoder.down_blocks" if stage.startswith("encoder") else "decoder.up_blocks"
        if rest.startswith(("resample.", "time_conv.")):
            sampler = "downsampler" if stage.startswith("encoder") else "upsampler"
            return f"{block}.{level}.{sampler}.{rest}"
        return f"{block}.{level}.resnets.{inner}.{_rename_residual_part(rest)}"
    return key
