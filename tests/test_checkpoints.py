"""Loading VAEs from the layouts users download.

The original Wan and ComfyUI layouts are checked against key names and shapes recorded from the Wan
repositories' own VAE modules, and against diffusers' own conversion of them
(tests/fixtures/wan-checkpoint-layouts.json, written by scripts/record_checkpoint_layouts.py), not
against an inversion of framepipe's mapping.
"""

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import small_vae
from framepipe import CheckpointError, load_vae
from framepipe._checkpoint import detect_layout, infer_config, to_diffusers

LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "wan-checkpoint-layouts.json").read_text())
# diffusers' AutoencoderKLWan arguments for the small configurations recorded in the fixture.
SMALL_DIFFUSERS = {
    "wan2.1": dict(base_dim=8, z_dim=16),
    "wan2.2": dict(
        base_dim=8, decoder_base_dim=16, z_dim=48, in_channels=12, out_channels=12,
        is_residual=True, patch_size=2, scale_factor_spatial=16,
    ),
}  # fmt: skip


def upstream_state(version: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded tensors under exactly the keys and shapes of the Wan repository's module (small config)."""
    g = torch.Generator().manual_seed(seed)
    tensors = LAYOUTS[version]["small"]["tensors"]
    return {k: torch.randn(shape, generator=g) * 0.2 for k, shape in sorted(tensors.items())}


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_diffusers_folder_and_pipeline_folder(tmp_path, version):
    vae = small_vae(version)
    vae.save_pretrained(tmp_path / "vae")
    _assert_same_weights(load_vae(tmp_path / "vae", device="cpu"), vae)
    _assert_same_weights(load_vae(tmp_path, device="cpu"), vae)  # a pipeline folder holding vae/


def test_release_layouts_as_their_sources_define_them(version):
    """The full-size release keys and shapes (meta tensors): detected, sized and named as diffusers does."""
    layout = LAYOUTS[version]
    state = {k: torch.empty(shape, device="meta") for k, shape in layout["release"]["tensors"].items()}
    assert all(marker in state for marker in layout["comfyui_markers"])  # what ComfyUI keys these files off
    assert detect_layout(state) == "original"
    config = infer_config(state, "original")
    from diffusers import AutoencoderKLWan

    defaults = {n: p.default for n, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()}
    expected = {**defaults, **layout["diffusers_config"]}
    expected["decoder_base_dim"] = expected["decoder_base_dim"] or expected["base_dim"]  # None: the same
    for key, value in config.items():  # clip_output (newer diffusers) is moot: the uint8 rule clamps anyway
        assert value == expected[key], key
    assert config["base_dim"] == layout["release"]["config"]["dim"]
    renamed = to_diffusers(state, "original", residual=config["is_residual"])
    origin = {id(v): k for k, v in state.items()}
    assert {origin[id(v)]: k for k, v in renamed.items()} == layout["diffusers_names"]
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    vae.load_state_dict(renamed, strict=True, assign=True)  # every name and shape, both ways


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_original_and_comfyui_files_decode_as_diffusers_converts_them(tmp_path, version, fmt):
    """A file with the upstream keys (.pth as released, .safetensors as ComfyUI repackages it) decodes
    to the same frames as the same weights put through diffusers' own conversion."""
    from diffusers import AutoencoderKLWan

    state = upstream_state(version)
    path = tmp_path / f"{version}_vae.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    loaded = load_vae(path, device="cpu")
    names = LAYOUTS[version]["diffusers_names"]
    reference = AutoencoderKLWan(**SMALL_DIFFUSERS[version]).eval()
    reference.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)
    _assert_same_weights(loaded, reference)
    z = torch.randn(1, loaded.config.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = loaded.decode(z).sample, reference.decode(z).sample
    assert torch.isfinite(theirs).all() and theirs.std() > 0.01
    assert torch.equal(ours, theirs)


def test_single_file_diffusers_layout_and_prefixed_keys(tmp_path):
    vae = small_vae("wan2.1")
    save_file(
        {f"first_stage_model.{k}": v.contiguous() for k, v in vae.state_dict().items()},
        tmp_path / "v.safetensors",
    )
    _assert_same_weights(load_vae(tmp_path / "v.safetensors", device="cpu"), vae)


def test_bfloat16_load(tmp_path):
    vae = small_vae("wan2.1")
    vae.save_pretrained(tmp_path)
    assert next(load_vae(tmp_path, dtype="bfloat16", device="cpu").parameters()).dtype == torch.bfloat16


def test_random_weights_warn(recwarn):
    vae = load_vae(None, arch="tiny-wan2.2", device="cpu")
    assert vae.config.z_dim == 48
    assert any("random weights" in str(w.message) for w in recwarn)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "Cannot read VAE checkpoint"),
        (lambda p: torch.save({"unet.weight": torch.zeros(2)}, p), "Not a Wan VAE checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "no state dict"),
    ],
)
def test_unusable_checkpoints(tmp_path, make, match):
    path = tmp_path / "vae.pth"
    make(path)
    with pytest.raises(CheckpointError, match=match):
        load_vae(path, device="cpu")


def test_truncated_safetensors(tmp_path):
    vae = small_vae("wan2.1")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "v.safetensors")
    data = (tmp_path / "v.safetensors").read_bytes()
    (tmp_path / "v.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="Cannot read VAE checkpoint"):
        load_vae(tmp_path / "v.safetensors", device="cpu")


def test_mismatched_checkpoint(tmp_path):
    state = upstream_state("wan2.1")
    del state["decoder.head.0.gamma"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="does not match"):
        load_vae(tmp_path / "broken.pth", device="cpu")


def test_arch_flag_checked_against_checkpoint(tmp_path):
    small_vae("wan2.1").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is a Wan 2.1 VAE, but --arch wan2.2"):
        load_vae(tmp_path, arch="wan2.2", device="cpu")


def test_missing_checkpoint_and_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "nope.pth", device="cpu")
    with pytest.raises(CheckpointError, match="without config.json"):
        load_vae(tmp_path, device="cpu")
