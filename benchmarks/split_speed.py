"""One video split by rows over several GPUs against one GPU: time, peak VRAM, the frames' difference.

For each dtype and frame size (seeded random weights): the chunked GPU-only decode + uint8 on the
first GPU alone (``decode_chunks``) and split over ``--gpus`` (``SplitDecoder.chunks``: every chunk
gathered on the first GPU), timed alternately in one process (best of ``--runs``); the split
frames compared with the single GPU's (float bits per chunk, uint8 levels). With ``--mp4``, the
whole decode -> MP4 (``framepipe.decode``) both ways, and the encoders alone on the same frames.

    python benchmarks/split_speed.py --gpus 0,1 --arch wan2.1 --sizes 480x832 720x1280 \
        --dtypes float32 bfloat16 --frames 81 --mp4 --out results/
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
from gpu_timing import peak, timed
from script_inputs import add_encoder_arguments, video_settings

import framepipe
from framepipe import to_uint8_frames
from framepipe._equivalence import same_bits
from framepipe._latents import latent_shape, random_latents
from framepipe._source import decode_chunks
from framepipe._split import SplitDecoder
from framepipe.sinks import open_sink


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="0,1")
    p.add_argument("--arch", default="wan2.1")
    p.add_argument("--sizes", nargs="+", default=["480x832", "720x1280"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--mp4", action="store_true", help="also decode -> MP4 both ways, and the encoders alone")
    add_encoder_arguments(p)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    devices = [f"cuda:{i}" for i in args.gpus.split(",")]
    torch.cuda.set_device(devices[0])
    rows = []
    for dtype in args.dtypes:
        with SplitDecoder(devices, arch=args.arch, dtype=dtype) as split:
            vae = split.vae
            for size in args.sizes:
                height, width = (int(v) for v in size.split("x"))
                shape = latent_shape(vae, frames=args.frames, height=height, width=width)
                z = random_latents(vae, shape).to(devices[0], vae.dtype)
                row = {"arch": args.arch, "dtype": dtype, "size": size, "frames": args.frames, "gpus": len(devices)}

                row.update(measure(split, z, args))
                if args.mp4:
                    row.update(to_mp4(split, z, args))
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(devices[0]),
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "python": platform.python_version(),
        "rows": rows,
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "split_speed.json").write_text(json.dumps(result, indent=2) + "\n")


def measure(split: SplitDecoder, z: torch.Tensor, args) -> dict:
    """The frames both ways (float bits per chunk, uint8 levels), then time and peak VRAM."""
    vae, row = split.vae, {}
    single = [c.clone() for c in decode_chunks(vae, z)]
    both = list(split.chunks(vae, z))
    pairs = list(zip(single, both, strict=True))
    row["same_bits"] = all(same_bits(a, b) for a, b in pairs)
    levels = [(to_uint8_frames(a).int() - to_uint8_frames(b).int()).abs() for a, b in pairs]
    row["max_level_difference"] = max(int(d.max()) for d in levels)
    row["pixels_differing"] = sum(int((d > 0).sum()) for d in levels) / sum(d.numel() for d in levels)
    mse = sum(float((d.double() ** 2).sum()) for d in levels) / sum(d.numel() for d in levels)
    row["psnr_db"] = round(10 * math.log10(255**2 / mse), 2) if mse else None  # None: identical
    row["max_float_difference"] = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
    del single, both, pairs, levels

    def one_gpu() -> None:
        for chunk in decode_chunks(vae, z):
            to_uint8_frames(chunk)

    def all_gpus() -> None:
        for chunk in split.chunks(vae, z):
            to_uint8_frames(chunk)

    times: dict[str, list[float]] = {"one": [], "split": []}
    one_gpu(), all_gpus()  # warm-up: cuDNN's plans, NCCL's channels
    for _ in range(args.runs):
        times["one"].append(timed(one_gpu))
        times["split"].append(timed(all_gpus))
    row["one_gpu_s"], row["split_s"] = round(min(times["one"]), 4), round(min(times["split"]), 4)
    row["speedup"] = round(row["one_gpu_s"] / row["split_s"], 3)
    row["peak_gib_one"], row["peak_gib_split_first_gpu"] = round(peak(one_gpu), 3), round(peak(all_gpus), 3)
    row["peak_share"] = round(row["peak_gib_split_first_gpu"] / row["peak_gib_one"], 3)
    return row


def to_mp4(split: SplitDecoder, z: torch.Tensor, args) -> dict:
    """decode -> MP4 on one GPU and split (best of ``--runs``), and the encoders alone on the frames."""
    settings = video_settings(args)
    out: dict = {"encoder": f"libx264 {args.preset} crf {args.crf}, segments {args.segment_frames}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        one = [framepipe.decode(z, path, vae=split.vae, video=settings, latent_format="raw").seconds
               for _ in range(args.runs + 1)][1:]  # fmt: skip
        both = [framepipe.decode(z, path, vae=split.vae, video=settings, latent_format="raw",
                                 chunk_source=split.chunks).seconds for _ in range(args.runs + 1)][1:]  # fmt: skip
        frames = [to_uint8_frames(c).cpu().numpy() for c in decode_chunks(split.vae, z)]
        encode = []
        for _ in range(args.runs):
            start = time.perf_counter()
            sink = open_sink(path, settings)
            sink.open(frames=sum(f.shape[1] for f in frames), height=frames[0].shape[2], width=frames[0].shape[3])
            for f in frames:
                sink.write(f[0])
            sink.close()
            encode.append(time.perf_counter() - start)
    out["mp4_one_gpu_s"], out["mp4_split_s"] = round(min(one), 4), round(min(both), 4)
    out["mp4_speedup"] = round(out["mp4_one_gpu_s"] / out["mp4_split_s"], 3)
    out["encode_only_s"] = round(min(encode), 4)
    return out


if __name__ == "__main__":
    main()
