"""What the end of a segmented encode costs on this host: joining a segment, and the last chunk.

Decodes seeded random latents with the Wan 2.1 architecture (random weights) to frames, then,
on the CPU alone:

- joins the ``tail:1.25`` segments of those frames into one file as a file-based joiner would:
  reopening each segment's file (``av.open``, which probes it) against muxing its packets;
- encodes the last chunk's 4 frames, which arrive together, with one encoder and split over 2 to
  4 encoders on threads: the encoding left after the last chunk.

    python benchmarks/last_chunk.py   # one GPU: 81 frames of 480x832 and 720x1280, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from framepipe import decode, load_vae
from framepipe._segments import tail_plan
from framepipe._sinks import VideoFileSink

SPLITS = ([4], [2, 2], [1, 1, 2], [1, 1, 1, 1])


def decoded_frames(height: int, width: int, frames: int, dtype: str, device: str) -> np.ndarray:
    vae = load_vae(arch="wan2.1", dtype=dtype, device=device, seed=0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=g).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        decode(latents, Path(tmp) / "frames.npy", vae=vae, latent_format="raw")
        return np.load(Path(tmp) / "frames.npy")


def encode(path: Path, frames: np.ndarray) -> None:
    sink = VideoFileSink(path)
    sink.open(frames=len(frames), height=frames.shape[1], width=frames.shape[2])
    sink.write(frames)
    sink.close()


def join_costs(frames: np.ndarray, folder: Path, repeats: int = 3) -> tuple[list[float], list[float]]:
    """Milliseconds per segment to reopen a segment's file, and to mux its packets, per repeat."""
    plan, paths, start = tail_plan(len(frames), growth=1.25), [], 0
    for i, n in enumerate(plan):
        paths.append(folder / f"{i:05d}.mp4")
        encode(paths[-1], frames[start : start + n])
        start += n
    reopen, mux = [], []
    for repeat in range(repeats):
        out, target, first, t_open, t_mux = av.open(str(folder / f"joined{repeat}.mp4"), "w"), None, 0, 0.0, 0.0
        for path, n in zip(paths, plan, strict=True):
            t0 = time.perf_counter()
            container = av.open(str(path))
            stream = container.streams.video[0]
            t1 = time.perf_counter()
            target = target or out.add_stream_from_template(stream)
            shift = int(Fraction(first, 16) / stream.time_base)
            for packet in container.demux(stream):
                if packet.dts is not None:
                    packet.pts, packet.dts, packet.stream = packet.pts + shift, packet.dts + shift, target
                    out.mux(packet)
            container.close()
            t_open, t_mux, first = t_open + t1 - t0, t_mux + time.perf_counter() - t1, first + n
        out.close()
        reopen.append(1e3 * t_open / len(paths))
        mux.append(1e3 * t_mux / len(paths))
    return reopen, mux


def split_encode(last: np.ndarray, split: list[int], folder: Path, repeats: int = 5) -> list[float]:
    """Milliseconds from handing ``last`` to ``len(split)`` open encoders to all of them finished."""
    times = []
    for repeat in range(repeats):
        bounds = np.cumsum([0, *split])
        sinks = [VideoFileSink(folder / f"split{repeat}_{i}.mp4") for i in range(len(split))]
        for sink, n in zip(sinks, split, strict=True):
            sink.open(frames=n, height=last.shape[1], width=last.shape[2])
        threads = [
            threading.Thread(target=lambda s=s, a=a, b=b: (s.write(last[a:b]), s.close()))
            for s, a, b in zip(sinks, bounds[:-1], bounds[1:], strict=True)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="480x832,720x1280", help="HxW, comma-separated; joins are timed at the first")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(f"{args.frames} frames, {args.dtype} decode on {args.device}, libx264 medium crf 18, "
          f"{torch.get_num_threads()} torch threads, PyAV {av.__version__}")  # fmt: skip
    for index, size in enumerate(args.sizes.split(",")):
        height, width = (int(v) for v in size.split("x"))
        frames = decoded_frames(height, width, args.frames, args.dtype, args.device)
        with tempfile.TemporaryDirectory() as tmp:
            if index == 0:
                reopen, mux = join_costs(frames, Path(tmp))
                print(f"{size}: join per segment, ms: reopen {' '.join(f'{v:.1f}' for v in reopen)}, "
                      f"mux its packets {' '.join(f'{v:.1f}' for v in mux)}")  # fmt: skip
            for split in SPLITS:
                times = split_encode(frames[-4:], split, Path(tmp))
                print(f"{size}: last 4 frames as {split}: {statistics.median(times):.1f} ms median "
                      f"({' '.join(f'{v:.0f}' for v in times)})")  # fmt: skip


if __name__ == "__main__":
    main()
