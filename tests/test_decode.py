"""Same pixels: chunked decode and both executors against diffusers' AutoencoderKLWan.decode."""

import numpy as np
import pytest
import torch

import framepipe
from conftest import small_latents, small_vae
from framepipe import CheckpointError, decode, decode_chunks, denormalize
from helpers import diffusers_frames


@pytest.mark.parametrize("per_chunk", [1, 2])
def test_chunks_equal_diffusers_decode(version, per_chunk):
    vae = small_vae(version)
    z = small_latents(version, batch=2, frames=4)
    with torch.no_grad():
        whole = vae.decode(z).sample
    chunks = list(decode_chunks(vae, z, latent_frames_per_chunk=per_chunk))
    expected_sizes = [1 + 4 * (per_chunk - 1)] + [4 * per_chunk] * ((4 - per_chunk) // per_chunk)
    assert [c.shape[2] for c in chunks] == expected_sizes
    assert torch.equal(torch.cat(chunks, dim=2), whole)  # bit for bit, not approximately


def test_test_latents_are_not_saturated(version):
    # Guards the tests: clamped (saturated) outputs would hide pixel differences.
    frames = diffusers_frames(small_vae(version), small_latents(version))
    share_extreme = ((frames == 0) | (frames == 255)).float().mean().item()
    assert share_extreme < 0.05
    assert frames.float().std() > 10


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("batch", [1, 2])
def test_executors_write_diffusers_pixels(tmp_path, version, mode, batch, no_thread_leak):
    vae = small_vae(version)
    z = small_latents(version, batch=batch, frames=4)
    result = decode(z, tmp_path / "out.npy", vae=vae, mode=mode)
    reference = diffusers_frames(vae, z).numpy()
    paths = [tmp_path / "out.npy"] if batch == 1 else [tmp_path / f"out_{i}.npy" for i in range(batch)]
    assert result.outputs == [str(p) for p in paths]
    assert result.frames_per_video == 13 and result.videos == batch
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(np.load(path), reference[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_sync_and_async_identical_bfloat16(tmp_path, version):
    vae = small_vae(version).to(torch.bfloat16)
    z = small_latents(version, frames=3)
    decode(z, tmp_path / "sync.npy", vae=vae, mode="sync")
    decode(z, tmp_path / "async.npy", vae=vae, mode="async", slots=1)
    np.testing.assert_array_equal(np.load(tmp_path / "sync.npy"), np.load(tmp_path / "async.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "sync.npy"), diffusers_frames(vae, z).numpy()[0])


def test_raw_latents_skip_denormalization(tmp_path):
    vae = small_vae("wan2.1")
    z = small_latents("wan2.1")
    decode(z, tmp_path / "raw.npy", vae=vae, latent_format="raw")
    np.testing.assert_array_equal(np.load(tmp_path / "raw.npy"), diffusers_frames(vae, z, latent_format="raw")[0])


def test_denormalize_matches_wan_pipeline_formula(version):
    vae = small_vae(version)
    z = small_latents(version)
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    ours = denormalize(z, vae.config.latents_mean, vae.config.latents_std, dtype=torch.float32)
    assert torch.equal(ours, z / (1.0 / std) + mean)
    torch.testing.assert_close(ours, z * std + mean)


def test_uint8_rule_rounds_half_to_even():
    x = torch.tensor([-1.0, 1.0, 0.0, -2.0, 2.0, (2 * 127.5 / 255) - 1]).view(1, 3, 1, 1, 2)
    frames = framepipe.to_uint8_frames(x)
    assert frames.shape == (1, 1, 1, 2, 3)
    # -1 -> 0, 1 -> 255, 0 -> 127.5 -> 128 (half to even), out of range clamps.
    assert sorted(frames.flatten().tolist()) == sorted([0, 255, 128, 0, 255, 128])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_vae_that_decodes_nan_writes_nothing(tmp_path, mode, device):
    # NaN weights made an all-black video with exit 0: the uint8 rule turns NaN into 0.
    vae = small_vae("wan2.1").to(device)
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="decoded NaN or infinite values"):
        decode(small_latents("wan2.1"), tmp_path / "v.mp4", vae=vae, mode=mode)
    assert list(tmp_path.iterdir()) == []


def test_a_size_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    import framepipe._source as source

    monkeypatch.setattr(source, "free_bytes", lambda device: 2**10)  # 1 KiB free
    with pytest.raises(framepipe.DeviceError, match=r"needs at least .* GiB on cpu, which has 0\.0 GiB free"):
        decode(small_latents("wan2.1"), tmp_path / "v.mp4", vae=small_vae("wan2.1"))
    assert list(tmp_path.iterdir()) == []
    # The bound is a lower one: the measured peak of a real decode lies above it.
    vae = small_vae("wan2.1")
    g = source.geometry(vae, (1, 16, 3, 60, 104))
    assert source.minimum_decode_bytes(framepipe.random_vae("wan2.1"), g, torch.float32) < 8.9 * 2**30
