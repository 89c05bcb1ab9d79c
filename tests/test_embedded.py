"""framepipe's embedded trained VAE: what ships, that it loads by default, and that it reconstructs."""

import json
import shlex

import numpy as np
import pytest
import torch

from framepipe import ArraySink, embedded_vae, load_vae
from framepipe._demo import SideBySideSink, clip_latents, run_demo
from framepipe._models import EMBEDDED_VAE
from framepipe._postprocess import to_uint8_frames
from framepipe._quality import psnr
from framepipe._synth import synth_clips
from framepipe.cli import main


def test_shipped_files_are_small_and_documented():
    weights = EMBEDDED_VAE / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 20 * 2**20
    card = (EMBEDDED_VAE / "README.md").read_text()
    for needed in ("scripts/train_tiny_vae.py", "PSNR", "SSIM", "AutoencoderKLWan", "synth_clips"):
        assert needed in card


def test_embedded_vae_is_the_default_and_keeps_wan21_structure(recwarn):
    vae = load_vae(device="cpu")
    assert not [w for w in recwarn if "random weights" in str(w.message)]
    config = vae.config
    assert (config.z_dim, config.scale_factor_spatial, config.scale_factor_temporal) == (16, 8, 4)
    assert config.temperal_downsample == [False, True, True] and not config.is_residual
    assert next(vae.parameters()).dtype == torch.float32
    reference = embedded_vae()
    expected = reference.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in vae.state_dict().items())


def test_embedded_vae_reconstructs_held_out_clips():
    """A regression guard on the shipped weights (the model card has the full evaluation)."""
    vae = embedded_vae()
    clip = synth_clips(1, 9, 256, 256, seed=1_000_000)  # the card's first held-out clip, 9 frames: 28.2 dB
    with torch.no_grad():
        rec = vae.decode(clip_latents(vae, clip)).sample
    assert psnr(to_uint8_frames(clip).float(), to_uint8_frames(rec).float()) > 27


def test_side_by_side_sink_and_its_psnr():
    original = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    decoded = original.copy()
    decoded[1, 0, 0, 0] ^= 4
    inner = ArraySink()
    sink = SideBySideSink(inner, original)
    sink.open(frames=3, height=8, width=8)
    sink.write(decoded[:2])
    sink.write(decoded[2:])
    sink.close()
    assert np.array_equal(inner.frames, np.concatenate([original, decoded], axis=2))
    assert sink.psnr_db == pytest.approx(10 * np.log10(255**2 / (16 / original.size)))
    with pytest.raises(ValueError, match="original"):
        SideBySideSink(ArraySink(), original).open(frames=4, height=8, width=8)


def test_run_demo_writes_both_halves(tmp_path):
    vae = embedded_vae()
    result = run_demo(tmp_path / "d.npy", vae, frames=5, size=64, seed=3, mode="sync")
    frames = np.load(tmp_path / "d.npy")
    assert frames.shape == (5, 64, 128, 3) and result.decode.mode == "sync"
    original = to_uint8_frames(synth_clips(1, 5, 64, 64, seed=3))[0].numpy()
    assert np.array_equal(frames[:, :, :64], original)
    decoded = torch.from_numpy(frames[:, :, 64:]).float()
    assert result.psnr_db == pytest.approx(psnr(torch.from_numpy(original).float(), decoded))


def test_compare_defaults_to_a_clip_encoded_by_the_model(capsys):
    code = main(["compare", "--clip", "1x32x32", "--json", "--device", "cpu"])  # bf16 conv3d is slow on a CPU
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["latents"].startswith("procedural clip 1x32x32") and report["frames_per_video"] == 1
    assert report["candidate"]["dtype"] == "bfloat16" and report["error"]["max_abs"] > 0
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["gpu"] is None
    command = shlex.split(report["command"])  # every setting spelled out: the same comparison again
    assert command[:2] == ["framepipe", "compare"] and "--clip" in command and "1x32x32" in command
    assert main(command[1:]) == 0 and json.loads(capsys.readouterr().out)["error"] == report["error"]
