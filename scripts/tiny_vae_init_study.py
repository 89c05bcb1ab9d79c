"""The two CPU experiments behind the tiny VAE's training settings (docs/tiny-vae.md).

1. Initialization: the same training (``Trainer``, fresh 64x64 single frames from 256x256 scenes
   each step) from PyTorch's default start and from ``init_weights``; held-out PSNR every 25 steps.
2. Learning rate: plain Adam overfitting 4 fixed frames (MSE, posterior mean, default start);
   the loss after 60 steps at each rate.

    python scripts/tiny_vae_init_study.py   # about 7 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json

import torch
import train_tiny_vae  # scripts/ is on sys.path when a script runs
from diffusers import AutoencoderKLWan

from framepipe._quality import psnr
from framepipe._synth import synth_clips


def _vae(identity_like: bool) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**train_tiny_vae.CONFIG)
    if identity_like:
        train_tiny_vae.init_weights(vae)
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.z_dim :].fill_(-8.0)
    return vae.train()


@torch.no_grad()
def _held_out_psnr(vae, crop: int) -> float:
    vae.eval()
    x = synth_clips(4, 1, 256, 256, seed=train_tiny_vae.HELD_OUT_SEED, crop=crop)
    score = psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample, x, peak=2.0)  # [-1, 1]: a range of 2
    vae.train()
    return score


def init_study(steps: int, lr: float, batch: int, crop: int) -> dict:
    curves = {}
    for name, identity_like in (("default", False), ("init_weights", True)):
        vae = _vae(identity_like)
        trainer = train_tiny_vae.Trainer(vae, lr=lr, kl_weight=1e-6, device=torch.device("cpu"), graphs=False)
        curve = {}
        for step in range(1, steps + 1):
            x = synth_clips(batch, 1, 256, 256, seed=step * batch, crop=crop)
            trainer.step(x, lr * min(1.0, step / 50))
            if step % 25 == 0:
                curve[step] = round(_held_out_psnr(vae, crop), 2)
        curves[name] = curve
        print(json.dumps({"init": name, "held_out_psnr_db": curve}), flush=True)
    return curves


def lr_study(rates: list[float], steps: int = 60) -> dict:
    x = synth_clips(4, 1, 256, 256, seed=3, crop=64)
    final = {}
    for lr in rates:
        vae = _vae(identity_like=False)
        opt = torch.optim.Adam(vae.parameters(), lr)
        for _ in range(steps):
            rec = train_tiny_vae.reconstruct(vae, vae.encode(x).latent_dist.mode())
            loss = (rec - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[lr] = round(loss.item(), 4)
        print(json.dumps({"lr": lr, "mse_after_steps": steps, "mse": final[lr]}), flush=True)
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--rates", default="1e-3,3e-4,2e-4")
    args = p.parse_args()
    report = {"init": init_study(args.steps, args.lr, args.batch, args.crop),
              "lr": lr_study([float(r) for r in args.rates.split(",")])}  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
