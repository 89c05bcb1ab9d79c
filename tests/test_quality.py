"""The quality yardstick (pixel error, PSNR, SSIM), compare, and the procedural clips."""

import json
from pathlib import Path

import pytest
import torch

from conftest import small_latents, small_vae
from framepipe._compare import compare
from framepipe._quality import frame_error, psnr, ssim
from framepipe._synth import synth_clips
from framepipe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_frame_error_figures():
    a = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0, 0] = 10
    e = frame_error(a, b)
    assert e.max_abs == 10 and e.share_differing == pytest.approx(1 / 96) and e.frames == 2
    assert e.psnr_db == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 / (100 / 96))).item())
    assert frame_error(a, a).to_dict()["psnr_db"] is None
    assert psnr(a.float(), a.float()) == float("inf")
    big = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    assert ssim(big, big) == pytest.approx(1.0)
    assert ssim(big, 255 - big) < 0
    with pytest.raises(ValueError, match="Shapes differ"):
        frame_error(a, b[:1])


def test_compare_finds_nothing_for_the_exact_paths_and_something_for_bfloat16(version):
    vae = small_vae(version)
    z = small_latents(version, batch=2, frames=3)
    for mode in ("sync", "async"):
        same = compare(vae, z, dtype="float32", mode=mode)
        assert same["error"]["max_abs"] == 0 and same["error"]["psnr_db"] is None
    differs = compare(vae, z, dtype="bfloat16")
    assert differs["error"]["max_abs"] > 0 and 20 < differs["error"]["psnr_db"] < 80
    assert len(differs["per_video"]) == 2


def test_compare_cli(tmp_path, capsys):
    small_vae("wan2.2").save_pretrained(tmp_path / "vae")
    code = main(["compare", "--vae", str(tmp_path / "vae"), "--shape", "1x2x3x3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["candidate"]["dtype"] == "bfloat16" and report["error"]["max_abs"] > 0
    assert report["candidate"]["path"] == "framepipe async, framepipe decoder"
    code = main(["compare", "--vae", str(tmp_path / "vae"), "--shape", "1x2x3x3", "--decoder", "fast", "--json"])
    fast = json.loads(capsys.readouterr().out)
    assert code == 0 and fast["candidate"]["path"] == "framepipe async, fast decoder"
    assert fast["error"] == report["error"]  # on the CPU the fast decoder's convolutions are the exact ones
    assert "framepipe compare: decoding the fp32 reference" in err and "decoding the candidate (bfloat16" in err
    code = main(["compare", "--vae", str(tmp_path / "vae"), "--shape", "1x2x3x3", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and "PSNR" in out  # --quiet: the result alone
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--vae", str(tmp_path / "vae"), "--shape", "1x2x3", "--json"])
    assert exit_info.value.code == 2 and "expected 4 whole numbers" in capsys.readouterr().err
    code = main(["compare", "--vae", str(tmp_path / "vae"), "--clip", "16x128x128", "--json"])
    assert code == 1 and "decodes 1 + 4k frames" in capsys.readouterr().err


def test_synth_clips_are_seeded_varied_and_in_range():
    a = synth_clips(2, 5, 32, 48, seed=7)
    assert a.shape == (2, 3, 5, 32, 48) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, synth_clips(2, 5, 32, 48, seed=7))
    assert not torch.equal(a[0], a[1])
    assert (a[:, :, 1:] - a[:, :, :-1]).abs().mean() > 0.001  # things move
    assert a.std() > 0.2


def test_synth_crop_is_a_window_of_the_full_scene():
    full = synth_clips(3, 5, 40, 56, seed=11)
    crops = synth_clips(3, 5, 40, 56, seed=11, crop=16)
    assert crops.shape == (3, 3, 5, 16, 16)
    for clip, crop in zip(full, crops, strict=True):
        windows = clip.unfold(2, 16, 1).unfold(3, 16, 1)  # [3, F, rows, cols, 16, 16]
        match = (windows - crop[:, :, None, None]).abs().amax(dim=(0, 1, 4, 5))
        assert match.min() < 1e-5  # the crop is exactly one window of the uncropped clip
    with pytest.raises(ValueError, match="crop"):
        synth_clips(1, 1, 16, 16, crop=32)
