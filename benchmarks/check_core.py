"""Core acceptance check on a GPU: same pixels at full size, and peak VRAM against video length.

Runs the Wan 2.1 and Wan 2.2 VAE architectures (seeded random weights) at 480x832 through diffusers'
``AutoencoderKLWan.decode`` and framepipe's ``sync`` and ``async`` executors, compares the uint8
frames, then measures peak VRAM of framepipe (async, to MP4) and of diffusers' decode at two lengths.

    python benchmarks/check_core.py --out results/   # prints a table, writes results/core_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from framepipe import ArraySink, decode, random_vae
from framepipe._compare import reference_frames


def diffusers_decode(vae, latents):
    """What users do today: de-normalize as WanPipeline, ``vae.decode`` the whole video, convert."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    frames = reference_frames(vae, latents)[0]
    seconds = time.perf_counter() - start
    return frames, seconds, torch.cuda.max_memory_allocated()


def environment() -> dict:
    import av
    import diffusers

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {
        "gpu": smi or torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "pyav": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def same_pixels(arch: str, z_shape, dtype: torch.dtype) -> dict:
    vae = random_vae(arch, seed=0).to("cuda", dtype)
    latents = torch.randn(z_shape, generator=torch.Generator().manual_seed(1))
    decode(latents[:, :, :2], [ArraySink()], vae=vae)  # warm-up: cuDNN autotuning, allocator
    ref, ref_s, ref_peak = diffusers_decode(vae, latents)
    row = {
        "arch": arch,
        "dtype": str(dtype).removeprefix("torch."),
        "frames": len(ref),
        "size": f"{ref.shape[2]}x{ref.shape[1]}",
        "diffusers_s": ref_s,
        "diffusers_peak_gib": ref_peak / 2**30,
    }
    for mode in ("sync", "async"):
        sink = ArraySink()
        result = decode(latents, [sink], vae=vae, mode=mode)
        row[f"{mode}_identical"] = bool(np.array_equal(sink.frames, ref))
        row[f"{mode}_max_abs_diff"] = int(np.abs(sink.frames.astype(int) - ref.astype(int)).max())
        row[f"{mode}_s"] = result.seconds
        row[f"{mode}_peak_gib"] = result.peak_vram_bytes / 2**30
    row["share_saturated"] = float(((ref == 0) | (ref == 255)).mean())
    return row


def vram_vs_length(latent_frames: int, tmp: Path) -> dict:
    vae = random_vae("wan2.1", seed=0).to("cuda")
    latents = torch.randn(1, 16, latent_frames, 60, 104, generator=torch.Generator().manual_seed(2))
    result = decode(latents, tmp / f"v{latent_frames}.mp4", vae=vae, preset="veryfast")
    _, ref_s, ref_peak = diffusers_decode(vae, latents)
    return {
        "frames": result.frames_per_video,
        "async_mp4_peak_gib": result.peak_vram_bytes / 2**30,
        "async_mp4_s": result.seconds,
        "diffusers_decode_peak_gib": ref_peak / 2**30,
        "diffusers_decode_s": ref_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "same_pixels": [], "vram": []}
    for arch, shape in [("wan2.1", (1, 16, 21, 60, 104)), ("wan2.2", (1, 48, 21, 30, 52))]:
        for dtype in (torch.float32, torch.bfloat16):
            report["same_pixels"].append(same_pixels(arch, shape, dtype))
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        for latent_frames in (21, 81):
            report["vram"].append(vram_vs_length(latent_frames, Path(tmp)))
            torch.cuda.empty_cache()
    (args.out / "core_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["environment"]))
    print(
        "\narch    dtype     frames size     sync==diffusers async==diffusers  diffusers_s sync_s async_s  "
        "peak GiB diffusers/framepipe  saturated"
    )
    for r in report["same_pixels"]:
        print(
            f"{r['arch']:7} {r['dtype']:9} {r['frames']:6} {r['size']:8} {r['sync_identical']!s:15} "
            f"{r['async_identical']!s:16} {r['diffusers_s']:11.2f} {r['sync_s']:6.2f} {r['async_s']:7.2f}  "
            f"{r['diffusers_peak_gib']:.2f} / {r['async_peak_gib']:.2f}            {r['share_saturated']:.3f}"
        )
    print("\nframes  framepipe async->MP4 peak GiB  diffusers decode peak GiB")
    for r in report["vram"]:
        print(f"{r['frames']:6}  {r['async_mp4_peak_gib']:27.2f}  {r['diffusers_decode_peak_gib']:25.2f}")


if __name__ == "__main__":
    main()
