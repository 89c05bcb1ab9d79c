"""Time one training step of the tiny VAE (forward, backward, AdamW) at a given batch and clip size.

It uses the same model, reconstruction and losses as ``train_tiny_vae.py``, on one fixed batch of
procedural clips, so only the step is timed: the mean of ``--steps`` steps after 3 warm-up
steps, with the GPU synchronized before and after.

    python scripts/time_tiny_vae_step.py --batch 16 --frames 9 --size 128            # bf16 autocast
    python scripts/time_tiny_vae_step.py --batch 16 --frames 9 --size 128 --dtype float32
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from framepipe._synth import synth_clips


def _train_module():
    path = Path(__file__).with_name("train_tiny_vae.py")
    spec = importlib.util.spec_from_file_location("train_tiny_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d conv weights and input")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    from diffusers import AutoencoderKLWan

    train = _train_module()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**train.CONFIG, latents_mean=[0.0] * 16, latents_std=[1.0] * 16).to(device).train()
    x = synth_clips(args.batch, args.frames, args.size, args.size, seed=1, device=device)
    if args.channels_last:
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step() -> None:
        with autocast:
            rec = train.reconstruct(vae, vae.encode(x).latent_dist)
        loss = (rec.float() - x).abs().mean() + 0.2 * train.ssim_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    pixels = args.batch * args.frames * args.size**2
    print(json.dumps({"batch": args.batch, "frames": args.frames, "size": args.size, "dtype": args.dtype,
                      "channels_last": args.channels_last, "cudnn_benchmark": args.cudnn_benchmark,
                      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "s_per_step": round(seconds, 4), "mpixels_per_s": round(pixels / seconds / 1e6, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
