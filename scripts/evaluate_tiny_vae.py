"""Score a VAE on held-out procedural clips: the numbers of the embedded model's card.

Reconstruction PSNR and SSIM of uint8 frames (posterior mean, fp32) on the training script's
held-out clips, next to a yardstick that needs no training: each frame shrunk 8x by area
averaging and blown up again with bicubic interpolation (3 values per 8x8 pixels per frame,
where the VAE keeps 16 per 8x8 pixels per 4 frames).

    python scripts/evaluate_tiny_vae.py                       # the embedded model, 8 clips, 17 and 33 frames
    python scripts/evaluate_tiny_vae.py --vae runs/tiny/model --clips 2
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import train_tiny_vae  # scripts/ is on sys.path when a script runs

from framepipe import load_vae


def down_up_8x(clip: torch.Tensor) -> torch.Tensor:
    """Each frame of ``clip`` ([B, 3, F, H, W]) shrunk 8x by area averaging, enlarged again (bicubic)."""
    frames = clip[0].transpose(0, 1)  # [F, 3, H, W]
    out = F.interpolate(F.avg_pool2d(frames, 8), scale_factor=8, mode="bicubic").clamp(-1, 1)
    return out.transpose(0, 1)[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default=None, help="a diffusers VAE folder (default: the embedded model)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", default="17,33", help="clip lengths to score, comma-separated")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    vae = load_vae(args.vae, device=args.device)
    report = {"vae": args.vae or "embedded", "device": args.device, "size": f"{args.size}x{args.size}"}
    for frames in (int(f) for f in args.frames.split(",")):
        model = train_tiny_vae.evaluate(vae, torch.device(args.device), clips=args.clips, frames=frames, size=args.size)
        cpu = torch.device("cpu")
        yardstick = train_tiny_vae.score_held_out(down_up_8x, cpu, clips=args.clips, frames=frames, size=args.size)
        report[f"{frames}_frames"] = {
            "vae": model,
            "bicubic_8x": {"psnr_db": yardstick["psnr_db"], "ssim": yardstick["ssim"]},
        }
        print(json.dumps({frames: report[f"{frames}_frames"]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
