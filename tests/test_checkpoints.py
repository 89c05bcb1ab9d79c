"""Loading VAEs from the layouts users download, written here from small models."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import small_vae
from framepipe import CheckpointError, load_vae
from helpers import to_original_layout


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


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_single_file_original_and_comfyui_layouts(tmp_path, version, fmt):
    vae = small_vae(version)
    state = to_original_layout(vae.state_dict(), residual=version == "wan2.2")
    path = tmp_path / f"{version}_vae.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    loaded = load_vae(path, device="cpu")
    _assert_same_weights(loaded, vae)
    assert loaded.config.z_dim == vae.config.z_dim
    assert loaded.config.latents_mean == vae.config.latents_mean


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
    state = to_original_layout(small_vae("wan2.1").state_dict(), residual=False)
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
