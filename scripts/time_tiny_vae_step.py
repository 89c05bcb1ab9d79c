"""Time one training step of the tiny VAE (forward, backward, AdamW) at a given batch and clip size.

It runs the training script's own step (``Trainer``: the same model, reconstruction, losses,
clipping and AdamW) on one fixed batch of procedural clips, so only the step is timed: the mean
of ``--steps`` steps after 3 warm-up steps, with the GPU synchronized before and after. On CUDA
the step is a replayed CUDA graph unless ``--no-graphs``.

    python scripts/time_tiny_vae_step.py --batch 16 --frames 9 --size 128            # bf16 autocast
    python scripts/time_tiny_vae_step.py --batch 16 --frames 9 --size 128 --no-graphs
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import train_tiny_vae  # scripts/ is on sys.path when a script runs

from framepipe._synth import synth_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument(
        "--decoder-width", type=int, default=train_tiny_vae.CONFIG["decoder_base_dim"], help="decoder_base_dim"
    )
    p.add_argument("--no-graphs", action="store_true", help="run the step eagerly instead of as a CUDA graph")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    from diffusers import AutoencoderKLWan

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    config = {**train_tiny_vae.CONFIG, "decoder_base_dim": args.decoder_width}
    vae = AutoencoderKLWan(**config, latents_mean=[0.0] * 16, latents_std=[1.0] * 16).to(device).train()
    x = synth_clips(args.batch, args.frames, args.size, args.size, seed=1)
    x = x.pin_memory() if device.type == "cuda" else x
    trainer = train_tiny_vae.Trainer(vae, lr=1e-4, kl_weight=1e-6, device=device, graphs=not args.no_graphs)

    def step() -> None:
        trainer.step(x, 1e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # with graphs, the first call also captures
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    pixels = args.batch * args.frames * args.size**2
    print(json.dumps({"batch": args.batch, "frames": args.frames, "size": args.size, "cuda_graph": trainer.graphs,
                      "cudnn_benchmark": args.cudnn_benchmark,
                      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "s_per_step": round(seconds, 4), "mpixels_per_s": round(pixels / seconds / 1e6, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
