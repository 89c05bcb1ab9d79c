"""Wan VAEs: the embedded trained model, the known architectures with random weights, and loading
of user checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._checkpoint import detect_layout, infer_config, read_state_dict, to_diffusers
from ._errors import CheckpointError, DeviceError, SettingsError, first_line
from ._input_files import checked_vae_path
from ._optional import require

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

# Wan 2.2 TI2V-5B latent statistics, as in the Wan-AI release's VAE config.
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

_WAN22 = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    latents_mean=WAN22_LATENTS_MEAN,
    latents_std=WAN22_LATENTS_STD,
)

#: Architectures buildable without a checkpoint. ``tiny-*`` keep Wan's structure at a width a CPU
#: decodes in seconds; they are for demos and tests.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "wan2.1": {},  # diffusers' AutoencoderKLWan defaults are the Wan 2.1 VAE
    "wan2.2": _WAN22,
    "tiny-wan2.1": dict(base_dim=16),
    "tiny-wan2.2": {**_WAN22, "base_dim": 16, "decoder_base_dim": 24},
}

#: framepipe's own trained VAE, shipped in the package: Wan 2.1's architecture at reduced width,
#: trained on procedural clips (scripts/train_tiny_vae.py; its model card is README.md beside it).
EMBEDDED_VAE = Path(__file__).with_name("models") / "tiny-wan2.1"

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"Invalid device {device!r}; use 'cuda', 'cuda:N' or 'cpu'.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    if device.type not in ("cuda", "cpu"):
        raise DeviceError(f"Unsupported device {str(device)!r}; use 'cuda' or 'cpu'.")
    return device


def resolve_gpus(spec: str, option: str = "--gpus") -> list[str]:
    """``"all"`` or ``"0,1,..."`` (given as ``option``) as device names; ``DeviceError`` where they are not there."""
    count = torch.cuda.device_count()  # NVML's count where it can: the driver is not initialized for it
    if spec == "all":
        if count == 0:
            raise DeviceError(f"{option} all: no CUDA GPU is available; leave {option} out to decode on the CPU.")
        return [f"cuda:{i}" for i in range(count)]
    try:
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SettingsError(f"{option} takes 'all' or GPU numbers such as 0,1; got {spec!r}.") from None
    if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
        raise SettingsError(f"{option} takes 'all' or distinct GPU numbers such as 0,1; got {spec!r}.")
    if max(indices) >= count:
        raise DeviceError(f"{option} {spec}: this machine has {count} CUDA GPU(s).")
    return [f"cuda:{i}" for i in indices]


def resolve_devices(gpus: str | None, device: str | None) -> list[str]:
    """The devices of ``--gpus`` (one worker each), or the one ``device`` resolves to."""
    return resolve_gpus(gpus) if gpus else [str(resolve_device(device))]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise DeviceError(f"Unsupported dtype {dtype}; supported: {', '.join(DTYPES)}.")
        return dtype
    if dtype not in DTYPES:
        raise DeviceError(f"Unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def describe_vae(checkpoint: str | Path | None, arch: str | None, seed: int = 0) -> str:
    """How ``load_vae(checkpoint, arch=arch)`` picks its model, in words (for reports)."""
    if checkpoint is not None:
        return f"checkpoint {checkpoint}"
    return f"random {arch} (seed {seed})" if arch else "embedded tiny-wan2.1 (trained)"


def model_name(vae: AutoencoderKLWan) -> str:
    """Which VAE this is, for reports: what ``load_vae`` recorded, or "a caller's AutoencoderKLWan"."""
    return getattr(vae, "framepipe_model", None) or f"a caller's AutoencoderKLWan (z_dim {vae.config.z_dim})"


def random_vae(arch: str = "wan2.1", *, seed: int = 0) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` of a known architecture with seeded random weights (for benchmarks)."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return require("diffusers", "video").AutoencoderKLWan(**ARCHITECTURES[arch]).eval()


def embedded_vae() -> AutoencoderKLWan:
    """framepipe's trained tiny Wan 2.1 VAE (fp32, CPU, eval mode), loaded from the package."""
    return _load_checkpoint(EMBEDDED_VAE).float()


def load_vae(
    checkpoint: str | Path | None = None,
    *,
    arch: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    seed: int = 0,
) -> AutoencoderKLWan:
    """Return an ``AutoencoderKLWan`` in eval mode on ``device`` in ``dtype``.

    ``checkpoint`` may be a diffusers folder (``config.json`` + weights, or a pipeline folder with a
    ``vae/`` subfolder) or a single file in diffusers, Wan or ComfyUI layout; ``arch``, if given too,
    is checked against it. With neither, the embedded trained tiny VAE (``EMBEDDED_VAE``) is used.
    ``arch`` alone builds that architecture with seeded random weights, with a warning: its output
    is noise, for benchmarking a full-size architecture.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if checkpoint is None and arch is None:
        vae = embedded_vae()
    elif checkpoint is None:
        warnings.warn(
            f"No VAE checkpoint given: using {arch} with random weights (seed {seed}). "
            "The output is noise, good for benchmarking only; pass a checkpoint for real video.",
            UserWarning,
            stacklevel=2,
        )
        vae = random_vae(arch, seed=seed)
    else:
        vae = _load_checkpoint(Path(checkpoint))
        if arch is not None:
            _check_arch(vae, arch, checkpoint)
    vae.framepipe_model = describe_vae(checkpoint, arch, seed)
    try:
        return move_vae(vae, device=torch_device, dtype=torch_dtype)
    except torch.OutOfMemoryError as e:
        raise DeviceError(f"Out of memory while moving the VAE to {torch_device}.") from e


def move_vae(vae: AutoencoderKLWan, *, device: torch.device, dtype: torch.dtype) -> AutoencoderKLWan:
    """Move and cast every weight. (diffusers' ``ModelMixin.to`` warns about fp32-pinned modules;
    the Wan VAE has none, so the plain ``nn.Module.to`` does the same without the noise.)"""
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)


def _check_arch(vae, arch: str, checkpoint: str | Path) -> None:
    want_z = ARCHITECTURES.get(arch, {}).get("z_dim", 16)
    if arch in ARCHITECTURES and vae.config.z_dim != want_z:
        found = "Wan 2.2" if vae.config.z_dim == 48 else "Wan 2.1"
        raise CheckpointError(f"{checkpoint} is a {found} VAE, but --arch {arch} was given.")


def _load_checkpoint(path: Path):
    AutoencoderKLWan = require("diffusers", "video").AutoencoderKLWan
    checked_vae_path(path)
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder without config.json; expected a diffusers VAE folder.")
        try:
            vae = AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"Cannot load the diffusers VAE in {folder}: {first_line(e)}") from e
        return vae.eval()

    state = read_state_dict(path)
    layout = detect_layout(state)
    config = infer_config(state, layout)
    if config["z_dim"] == 48:
        config.update(latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    elif config["z_dim"] != 16:
        raise CheckpointError(f"{path}: {config['z_dim']} latent channels; Wan VAEs have 16 (2.1) or 48 (2.2).")
    try:
        state = to_diffusers(state, layout, residual=config["is_residual"])
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot map its keys onto the Wan VAE ({type(e).__name__}: {e}).") from e
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    try:
        vae.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise CheckpointError(f"{path} does not match the Wan VAE architecture its keys suggest: {detail}") from e
    return vae.float().eval()
