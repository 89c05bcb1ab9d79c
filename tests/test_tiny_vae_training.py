"""scripts/train_tiny_vae.py, which trained the embedded VAE: reproducible, but not part of the
product's test run. Run on demand with ``make test-slow`` (``pytest -m slow``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framepipe._synth import synth_clips

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_training_script_smoke(tmp_path):
    out = tmp_path / "run"
    script = ROOT / "scripts" / "train_tiny_vae.py"
    cmd = [sys.executable, str(script), "--steps", "2", "--size", "32", "--crop", "16", "--batch", "2",
           "--out", str(out), "--device", "cpu", "--workers", "0", "--eval-size", "32",
           "--eval-clips", "1", "--mse-weight", "0.5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["held_out"]["psnr_db"] > 0
    assert (metrics["ssim_weight"], metrics["mse_weight"]) == (0.2, 0.5)
    from framepipe import load_vae

    vae = load_vae(out / "model", device="cpu")
    assert vae.config.base_dim == 16 and len(vae.config.latents_std) == 16


def test_training_script_refuses_to_resume_without_a_state(tmp_path):
    """A --resume that finds nothing to resume must not quietly train from scratch."""
    out = tmp_path / "run"
    script = ROOT / "scripts" / "train_tiny_vae.py"
    cmd = [sys.executable, str(script), "--resume", "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "train_state.pt does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def _train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tiny_vae", ROOT / "scripts" / "train_tiny_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identity_like_init_makes_the_output_follow_the_input():
    """With the training script's initialization, an untrained VAE's output already depends on its
    input; from PyTorch's default start it is mostly the same whatever comes in."""
    from diffusers import AutoencoderKLWan

    train = _train_module()
    a, b = synth_clips(2, 5, 64, 64, seed=5), synth_clips(2, 5, 64, 64, seed=50)
    sensitivity = []
    for init in (False, True):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**train.CONFIG).eval()
        if init:
            train.init_weights(vae)
        with torch.no_grad():
            ya, yb = (vae.decode(vae.encode(x).latent_dist.mode()).sample for x in (a, b))
        sensitivity.append(((ya - yb).norm() / ya.norm()).item())
    default, identity_like = sensitivity  # measured: 0.26 and 0.90
    assert identity_like > 0.6 and identity_like > 2 * default


def test_training_keeps_a_moving_average_of_the_weights():
    from diffusers import AutoencoderKLWan

    train = _train_module()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**train.CONFIG)
    train.init_weights(vae)
    start = [p.detach().clone() for p in vae.parameters()]
    trainer = train.Trainer(vae, lr=1e-3, kl_weight=1e-6, device=torch.device("cpu"), graphs=False, ema_decay=0.75)
    trainer.step(synth_clips(1, 5, 32, 32, seed=3), 1e-3)
    trained = [p.detach().clone() for p in vae.parameters()]
    for ema, before, after in zip(trainer.ema, start, trained, strict=True):
        torch.testing.assert_close(ema, 0.75 * before + 0.25 * after)
    with trainer.ema_weights():
        assert all(torch.equal(p, e) for p, e in zip(vae.parameters(), trainer.ema, strict=True))
    assert all(torch.equal(p, t) for p, t in zip(vae.parameters(), trained, strict=True))  # restored


def test_loss_weights_change_the_step():
    from diffusers import AutoencoderKLWan

    train = _train_module()
    x = synth_clips(1, 5, 32, 32, seed=3)
    grads = {}
    for weights in [(0.2, 0.0), (0.0, 0.0), (0.2, 1.0)]:
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**train.CONFIG)
        train.init_weights(vae)
        trainer = train.Trainer(vae, lr=1e-3, kl_weight=1e-6, device=torch.device("cpu"), graphs=False,
                                ssim_weight=weights[0], mse_weight=weights[1])  # fmt: skip
        torch.manual_seed(1)  # the same posterior sample
        trainer.step(x, 1e-3)
        grads[weights] = torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])
    assert not torch.allclose(grads[(0.2, 0.0)], grads[(0.0, 0.0)])
    assert not torch.allclose(grads[(0.2, 0.0)], grads[(0.2, 1.0)])


@pytest.mark.needs_cuda
def test_training_step_as_cuda_graphs():
    from diffusers import AutoencoderKLWan

    train = _train_module()
    vae = AutoencoderKLWan(**train.CONFIG)
    train.init_weights(vae)
    vae.to("cuda").train()
    trainer = train.Trainer(vae, lr=1e-3, kl_weight=1e-6, device=torch.device("cuda"), graphs=True, ema_decay=0.9)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    batches = [synth_clips(2, f, 64, 64, seed=s, crop=32).pin_memory() for s, f in ((0, 5), (9, 9), (20, 5))]
    losses = [trainer.step(x, 1e-3).clone() for x in batches]
    torch.cuda.synchronize()
    assert len(trainer._captured) == 2  # one graph per clip shape, replayed for the third batch
    assert all(torch.isfinite(loss).all() for loss in losses)
    moved = [n for n, p in vae.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # the replayed graph's AdamW updated every weight in place
    averaged = [e for e, b in zip(trainer.ema, before.values(), strict=True) if not torch.equal(e, b)]
    assert len(averaged) == len(before)  # and the moving average, inside the same graph
