"""Train framepipe's embedded VAE: a small Wan 2.1-architecture AutoencoderKLWan on procedural clips.

The model is diffusers' ``AutoencoderKLWan`` at reduced width (encoder 16, decoder 32 channels at
the first level; Wan 2.1 uses 96), with the same causal structure (4x temporal, 8x spatial, 16
latent channels, 1 + 4 (T - 1) frames). Training data comes from ``framepipe._synth``: moving and
scaling shapes, gradients, textures, text and camera pans, all drawn from seeds, as crops of
256x256 scenes. Losses: L1 + 0.2 (1 - SSIM) + 10 x squared error on pixels (``--ssim-weight``,
``--mse-weight``), and a KL term (weight 1e-6) on the latent posterior.

On CUDA every training step (forward, backward, gradient clipping, AdamW) is captured once per
clip shape as a CUDA graph and replayed: diffusers' Wan VAE runs one latent frame at a time and
launches thousands of small kernels per step, so without graphs the host's launching, not the
GPU, sets the pace at this width.

    python scripts/train_tiny_vae.py --workers 14 --out runs/tiny                 # one H100/H200, 17.4 min
    python scripts/train_tiny_vae.py --steps 2 --size 32 --crop 16 --device cpu   # smoke test

The defaults are the best settings measured so far (docs/tiny-vae.md): batches of 32 and the
squared-error term. The shipped model (src/framepipe/models/tiny-wan2.1/README.md) was trained
with them; ``--batch 16 --mse-weight 0`` repeats the run of the model shipped before it.
Writes to --out: the diffusers folder (config.json + fp16 safetensors, with latents_mean/std
measured on training clips), metrics.json (held-out PSNR/SSIM at 256x256), and train_state.pt for
--resume (--stop-after splits a run across several calls; the schedule follows the total).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from framepipe._postprocess import to_uint8_frames
from framepipe._quality import psnr, ssim, ssim_map
from framepipe._source import causal_conv_count
from framepipe._synth import synth_clips

CONFIG = dict(base_dim=16, decoder_base_dim=32, z_dim=16)
HELD_OUT_SEED = 1_000_000  # training seeds stay far below this; the model card's scores use these
VALIDATION_SEED = 1_500_000  # for choices made during training (EMA or raw weights), never reported


class Clips(torch.utils.data.IterableDataset):
    """An endless stream of training batches; each worker draws from its own seed range.

    Batches cycle through the clip lengths in ``frames``; longer clips come in smaller batches so
    that every batch holds about as many pixels. Long clips teach the causal cache to stay stable
    past the first few latent frames."""

    def __init__(self, batch: int, frames: list[int], size: int, crop: int | None, seed: int):
        self.batch, self.frames, self.size, self.crop, self.seed = batch, frames, size, crop, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = worker
        while True:
            seed = self.seed + index * self.batch
            assert seed + self.batch < HELD_OUT_SEED
            frames = self.frames[index % len(self.frames)]
            batch = max(1, round(self.batch * (self.frames[0] - 1) / (frames - 1))) if frames > 1 else self.batch
            yield synth_clips(batch, frames, self.size, self.size, seed=seed, crop=self.crop)
            index += workers


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # many workers, one core each: no oversubscription


def init_weights(vae) -> None:
    """Start training from an identity-like network, as Wan's own training code does.

    PyTorch's default initialization shrinks the signal at every convolution, and a deep encoder
    and decoder then start out ignoring their input: training first has to undo that, and at these
    widths it took thousands of steps. Here every convolution starts variance-preserving (fan-in,
    gain 1), residual branches and attention outputs start at zero (each block is an identity), and
    the temporal convolutions of the resampling blocks start by passing frames through (the
    downsampling one keeps the newest frame, the upsampling one repeats it)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock

    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                torch.nn.init.zeros_(m.bias)
        for m in vae.modules():
            if isinstance(m, WanResidualBlock):
                torch.nn.init.kaiming_normal_(m.conv1.weight, nonlinearity="relu")  # after SiLU
                torch.nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, WanAttentionBlock):
                torch.nn.init.zeros_(m.proj.weight)
            elif isinstance(m, WanResample) and hasattr(m, "time_conv"):
                weight = m.time_conv.weight  # [out, in, 3, 1, 1]; out is 2 x in when upsampling
                weight.zero_()
                eye = torch.eye(weight.shape[1])
                for half in range(weight.shape[0] // weight.shape[1]):
                    weight[half * len(eye) : (half + 1) * len(eye), :, -1, 0, 0] = eye


def reconstruct(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode ``latents`` frame by frame like ``vae.decode``, but with gradients and without its
    final clamp, so saturated pixels still get a gradient."""
    cache = [None] * causal_conv_count(vae)
    z = vae.post_quant_conv(latents)
    frames = [
        vae.decoder(z[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0) for i in range(z.shape[2])
    ]
    return torch.cat(frames, dim=2)


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of [-1, 1] video tensors (a range of 2), frame by frame."""
    b, c, f, h, w = x.shape
    x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).float()
    y = y.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).float()
    return 1 - ssim_map(x, y, peak=2.0).mean()


class Trainer:
    """One optimizer step per call. On CUDA each input shape is captured as a CUDA graph the first
    time it comes (after three eager warm-up steps on a side stream) and replayed from then on."""

    def __init__(
        self,
        vae,
        *,
        lr: float,
        kl_weight: float,
        device: torch.device,
        graphs: bool,
        ema_decay: float = 0.0,
        ssim_weight: float = 0.2,
        mse_weight: float = 0.0,
    ):
        self.vae, self.kl_weight, self.device, self.ema_decay = vae, kl_weight, device, ema_decay
        self.ssim_weight, self.mse_weight = ssim_weight, mse_weight
        self.graphs = graphs and device.type == "cuda"
        # A tensor learning rate lets the schedule change it without recapturing the graphs.
        self.lr = torch.tensor(lr, device=device) if self.graphs else lr
        self.opt = torch.optim.AdamW(
            vae.parameters(), lr=self.lr, betas=(0.9, 0.99), weight_decay=0.01, capturable=self.graphs
        )
        # Graphs take autocast without its weight cache, which would otherwise outlive a capture.
        self.autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=not self.graphs
        )
        self._captured: dict[tuple, tuple] = {}
        # An exponential moving average of the weights, updated inside the (captured) step.
        self.ema = [p.detach().clone() for p in vae.parameters()] if ema_decay else []

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the model holds the EMA weights; the trained weights come back after."""
        params = list(self.vae.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, trained)

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            posterior = self.vae.encode(x).latent_dist
            rec = reconstruct(self.vae, posterior.sample())
        error = rec.float() - x
        l1 = error.abs().mean()
        structural = ssim_loss(rec, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + self.ssim_weight * structural + self.kl_weight * kl
        if self.mse_weight:  # closer to what PSNR measures
            loss = loss + self.mse_weight * error.pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0, foreach=self.device.type == "cuda")
        self.opt.step()
        if self.ema:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, list(self.vae.parameters()), 1 - self.ema_decay)
        return torch.stack([l1.detach(), structural.detach(), kl.detach()])

    def step(self, x: torch.Tensor, lr: float) -> torch.Tensor:
        """Train on ``x`` at learning rate ``lr``; returns [l1, 1 - ssim, kl] (not synchronized)."""
        if not self.graphs:
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            return self._step(x.to(self.device, non_blocking=True))
        self.lr.fill_(lr)
        key = tuple(x.shape)
        if key not in self._captured:
            self._captured[key] = self._capture(x.to(self.device))
        graph, static_x, static_losses = self._captured[key]
        static_x.copy_(x, non_blocking=True)
        graph.replay()
        return static_losses

    def _capture(self, x: torch.Tensor) -> tuple:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: allocator, cuDNN plans and AdamW state, outside the graph
                self.opt.zero_grad(set_to_none=True)
                self._step(x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # Gradients allocated during the capture belong to this graph's private memory pool.
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # the pinning thread runs on
            losses = self._step(x)
        return graph, x, losses


def score_held_out(
    reconstruct, device: torch.device, *, clips: int, frames: int, size: int, first_seed: int = HELD_OUT_SEED
) -> dict:
    """PSNR and SSIM of uint8 frames of ``reconstruct(x)`` against the held-out clips ``x``
    (seeds from ``first_seed`` on)."""
    scores = []
    for i in range(clips):
        x = synth_clips(1, frames, size, size, seed=first_seed + i).to(device)
        a, b = to_uint8_frames(x), to_uint8_frames(reconstruct(x))  # scored where they are
        scores.append((psnr(a.float(), b.float()), ssim(a, b)))
    return {
        "psnr_db": sum(s[0] for s in scores) / len(scores),
        "ssim": sum(s[1] for s in scores) / len(scores),
        "clips": clips,
        "frames": frames,
        "size": f"{size}x{size}",
        "per_clip_psnr_db": [s[0] for s in scores],
    }


@torch.no_grad()
def evaluate(
    vae, device: torch.device, *, clips: int = 4, frames: int = 17, size: int = 256, first_seed: int = HELD_OUT_SEED
) -> dict:
    """Held-out reconstruction quality: PSNR and SSIM of uint8 frames, fp32, posterior mean."""
    vae.eval()
    try:
        return score_held_out(
            lambda x: vae.decode(vae.encode(x).latent_dist.mode()).sample,
            device, clips=clips, frames=frames, size=size, first_seed=first_seed,
        )  # fmt: skip
    finally:
        vae.train()


@torch.no_grad()
def validate(vae, trainer: Trainer, device: torch.device, *, clips: int, size: int) -> dict[str, float]:
    """PSNR of the trained and the EMA weights on validation clips (17 frames), which the model card's
    held-out scores never use."""
    scores = {"trained": evaluate(vae, device, clips=clips, size=size, first_seed=VALIDATION_SEED)["psnr_db"]}
    if trainer.ema:
        with trainer.ema_weights():
            scores["ema"] = evaluate(vae, device, clips=clips, size=size, first_seed=VALIDATION_SEED)["psnr_db"]
    return scores


@torch.no_grad()
def latent_statistics(
    vae, device: torch.device, *, clips: int = 16, size: int = 128
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means on training clips (Wan's latents_mean/std)."""
    zs = []
    for i in range(clips):
        x = synth_clips(1, 17, size, size, seed=HELD_OUT_SEED // 2 + i).to(device)
        zs.append(vae.encode(x).latent_dist.mode().float().transpose(0, 1).reshape(vae.config.z_dim, -1))
    z = torch.cat(zs, dim=1)
    return z.mean(dim=1).tolist(), z.std(dim=1).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/tiny-wan2.1"))
    p.add_argument("--minutes", type=float, default=17.4, help="wall-clock budget over all resumes, without --steps")
    p.add_argument(
        "--stop-after", type=float, default=None, help="end this run after so many minutes (then --resume continues)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="train this many steps (the schedule follows steps, not --minutes)"
    )
    p.add_argument("--encoder-width", type=int, default=CONFIG["base_dim"], help="base_dim (Wan 2.1: 96)")
    p.add_argument(
        "--decoder-width", type=int, default=CONFIG["decoder_base_dim"], help="decoder_base_dim (Wan 2.1: 96)"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--frames",
        default="9,17,33",
        help="frames per training clip (1 + 4k), cycled batch by batch; --batch is for the first",
    )
    p.add_argument("--size", type=int, default=256, help="scene size in pixels (multiple of 8)")
    p.add_argument("--crop", type=int, default=64, help="training crop of each scene (multiple of 8); 0: whole scene")
    p.add_argument("--no-graphs", action="store_true", help="on CUDA, run eagerly instead of replaying CUDA graphs")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--ssim-weight", type=float, default=0.2, help="weight of 1 - SSIM in the loss (L1 has weight 1)")
    p.add_argument("--mse-weight", type=float, default=10.0, help="weight of a squared-error term in the loss")
    p.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="decay of the weights' moving average (0: none); the export takes whichever of the average "
        "and the trained weights scores better on validation clips",
    )
    p.add_argument(
        "--logvar-init",
        type=float,
        default=-8.0,
        help="initial posterior log-variance: a narrow start keeps sampling noise from drowning the latents",
    )
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-size", type=int, default=256, help="held-out clip size for metrics.json")
    p.add_argument("--eval-clips", type=int, default=8, help="held-out clips for metrics.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    args = p.parse_args()
    if args.resume and not (args.out / "train_state.pt").exists():
        p.error(f"--resume: {args.out / 'train_state.pt'} does not exist; run without --resume to start afresh")
    args.frames = [int(f) for f in args.frames.split(",")]
    if any(f < 1 or (f - 1) % 4 for f in args.frames):
        p.error("--frames must be 1 + 4k, e.g. 9,17,33")

    from diffusers import AutoencoderKLWan

    device = torch.device(args.device)
    if device.type == "cuda":
        # The data workers take the cores; this process only drives the GPU and the evaluations' host side.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores - args.workers))
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    config = {**CONFIG, "base_dim": args.encoder_width, "decoder_base_dim": args.decoder_width}
    vae = AutoencoderKLWan(**config, latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    init_weights(vae)
    vae.to(device).train()
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.z_dim :].fill_(args.logvar_init)
    trainer = Trainer(vae, lr=args.lr, kl_weight=args.kl, device=device, graphs=not args.no_graphs, ema_decay=args.ema,
                      ssim_weight=args.ssim_weight, mse_weight=args.mse_weight)  # fmt: skip
    opt = trainer.opt
    step, trained, log = 0, 0.0, []
    state_path = args.out / "train_state.pt"
    if args.resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if trainer.ema:
            torch._foreach_copy_(trainer.ema, state["ema"])
        step, trained = int(state["step"]), float(state["seconds"])
        print(f"resumed at step {step} after {trained / 60:.1f} min", flush=True)

    crop = args.crop or None
    loader = torch.utils.data.DataLoader(
        Clips(args.batch, args.frames, args.size, crop, seed=args.seed * 10_000_000 + step * args.batch * 4),
        batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda", worker_init_fn=_one_thread,
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
    )  # fmt: skip
    warmup, start, budget = 200, time.monotonic() - trained, args.minutes * 60
    stop = time.monotonic() + (args.stop_after * 60 if args.stop_after else math.inf)
    first_step = step

    def save() -> None:
        state = {"model": vae.state_dict(), "opt": opt.state_dict(), "ema": trainer.ema, "step": step,
                 "seconds": time.monotonic() - start}  # fmt: skip
        torch.save(state, state_path)

    waited, fetched = 0.0, time.monotonic()
    for x in loader:
        waited += time.monotonic() - fetched
        now = time.monotonic()
        finished = step >= args.steps if args.steps else now - start > budget
        if finished or now > stop:
            break
        progress = step / args.steps if args.steps else min(1.0, (now - start) / budget)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        losses = trainer.step(x, lr)
        step += 1
        if step % 200 == 0 or step == first_step + 1:
            l1, structural, kl = losses.tolist()
            entry = {"step": step, "s": round(time.monotonic() - start, 1), "data_wait_s": round(waited, 1),
                     "lr": lr, "l1": l1, "ssim_loss": structural, "kl": kl}  # fmt: skip
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if step % args.eval_every == 0:
            scores = validate(vae, trainer, device, clips=2, size=args.eval_size)
            print(json.dumps({"step": step, "validation_psnr_db": scores}), flush=True)
            save()
        fetched = time.monotonic()

    trained = time.monotonic() - start
    save()
    if time.monotonic() > stop and (step < args.steps if args.steps else trained < budget):
        print(json.dumps({"stopped_at_step": step, "minutes": round(trained / 60, 2), "continue": "--resume"}))
        return
    # The export needs no more batches: end the data workers (and their pinning thread) first.
    del loader, x
    exported = time.monotonic()

    def stage(name: str) -> None:
        print(json.dumps({"export": name, "s": round(time.monotonic() - exported, 1)}), flush=True)

    stage("validating")
    scores = validate(vae, trainer, device, clips=4, size=args.eval_size)
    if scores.get("ema", -math.inf) > scores["trained"]:
        with torch.no_grad():
            torch._foreach_copy_(list(vae.parameters()), trainer.ema)
    vae.eval()
    # Ship half-precision weights; measure the model as shipped (fp16 weights, fp32 compute).
    with torch.no_grad():
        for param in vae.parameters():
            param.copy_(param.half().float())
    stage("latent statistics")
    mean, std = latent_statistics(vae, device, size=min(128, args.eval_size))
    stage("held-out scores")
    vae.register_to_config(latents_mean=mean, latents_std=std)
    metrics = {"steps": step, "train_seconds": round(trained, 1), "batch": args.batch,
               "frames": args.frames, "size": args.size, "crop": crop, "lr": args.lr, "kl_weight": args.kl,
               "ssim_weight": args.ssim_weight, "mse_weight": args.mse_weight,
               "encoder_width": args.encoder_width, "decoder_width": args.decoder_width,
               "parameters": sum(p.numel() for p in vae.parameters()), "ema_decay": args.ema,
               "validation_psnr_db": scores, "weights": max(scores, key=scores.get), "cuda_graphs": trainer.graphs,
               "held_out": evaluate(vae, device, clips=args.eval_clips, size=args.eval_size),
               "held_out_33_frames": evaluate(vae, device, clips=args.eval_clips, frames=33, size=args.eval_size),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__}  # fmt: skip
    stage("saving")
    vae.to(torch.float16).save_pretrained(args.out / "model", safe_serialization=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (args.out / "log.json").write_text(json.dumps(log))
    print(json.dumps({"final": metrics}), flush=True)


if __name__ == "__main__":
    main()
