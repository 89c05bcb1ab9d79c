"""One video split by rows over several processes (Gloo on the CPU here; NCCL on GPUs in test_cuda)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import framepipe
from conftest import small_latents, small_vae
from framepipe._errors import DeviceError, SettingsError
from framepipe._split import SplitDecoder, bands


def test_bands_are_contiguous_and_as_even_as_the_rows_allow():
    assert bands(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert bands(60, 2) == [(0, 30), (30, 60)]
    with pytest.raises(SettingsError, match="at most 2"):
        bands(2, 3)


@pytest.fixture(scope="module")
def vae_folders(tmp_path_factory):
    folders = {}
    for version in ("wan2.1", "wan2.2"):
        folders[version] = tmp_path_factory.mktemp(version)
        small_vae(version).save_pretrained(folders[version])
    return folders


@pytest.mark.parametrize("version, parts", [("wan2.1", 2), ("wan2.1", 3), ("wan2.2", 2)])
def test_a_split_decode_gives_the_single_decodes_frames(tmp_path, vae_folders, version, parts):
    """Bands of 3-4 latent rows, halos at every 3x3 conv, the attention over the gathered frame.
    On the CPU, vectorized SiLU rounds a few elements differently where a band's size moves them
    to a vector's tail: at most one level in a few pixels here; on the H200 the bits are compared."""
    latents = small_latents(version, frames=3, height=7, width=6)
    framepipe.decode(latents, tmp_path / "one.npy", vae=str(vae_folders[version]), device="cpu")
    with SplitDecoder(["cpu"] * parts, vae=vae_folders[version]) as split:
        result = framepipe.decode(latents, tmp_path / "split.npy", vae=split.vae, chunk_source=split.chunks)
        framepipe.decode(latents, tmp_path / "again.npy", vae=split.vae, chunk_source=split.chunks)  # reusable
    one, both = np.load(tmp_path / "one.npy").astype(int), np.load(tmp_path / "split.npy").astype(int)
    assert result.frames_per_video == 9 and both.shape == one.shape
    assert np.abs(one - both).max() <= 1 and (one != both).mean() < 1e-3
    assert np.array_equal(np.load(tmp_path / "again.npy"), np.load(tmp_path / "split.npy"))
    assert not torch.distributed.is_initialized()  # the group is gone with the decoder


def test_a_helper_that_dies_mid_video_fails_the_decode_in_one_line(tmp_path, vae_folders, no_thread_leak):
    latents = small_latents("wan2.1", frames=6, height=8, width=6)
    with SplitDecoder(["cpu", "cpu"], vae=vae_folders["wan2.1"], timeout_s=30) as split:

        def dying(vae, latents, **kwargs):
            for index, chunk in enumerate(split.chunks(vae, latents, **kwargs)):
                if index == 1:
                    split.helpers[0].kill()
                yield chunk

        with pytest.raises(DeviceError) as error:
            framepipe.decode(latents, tmp_path / "out.mp4", vae=split.vae, chunk_source=dying)
    assert "\n" not in str(error.value) and "split" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_split_decode_refusals(tmp_path, capsys):
    from framepipe.cli import main

    with pytest.raises(SettingsError, match="different GPUs"):
        SplitDecoder(["cpu"])
    latents, out = tmp_path / "x.safetensors", str(tmp_path / "x.mp4")
    save_file({"latents": small_latents("wan2.1")}, latents)
    assert main(["decode", str(latents), "-o", out, "--split-gpus", "all"]) == 1
    assert "--split-gpus all: no CUDA GPU" in capsys.readouterr().err
    assert main(["decode", str(latents), "-o", out, "--split-gpus", "0,1", "--mode", "sync"]) == 1
    assert "--split-gpus decodes one video at a time" in capsys.readouterr().err
