"""How much host memory a closed video sink keeps while something still holds it, as a stream does.

Encodes the same clip into several files, one sink each, and keeps every closed sink, as
``decode_many`` keeps the sinks it opened until the stream ends. Prints the process's resident
memory after each video. A closed sink that kept its encoder (and, segmented, one per segment)
grows it by that encoder's buffers per video. Runs on the CPU.

    python benchmarks/sink_memory.py   # 81 static frames of 720x1280, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import av
import numpy as np

from framepipe._segments import SegmentedVideoSink
from framepipe._sinks import VideoFileSink


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="720x1280")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--plans", default="none,tail:1.25:2", help="'none' (one encoder) or segment plans, comma-separated")
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    # one random picture repeated: every frame costs the encoder the same, and encoding stays quick
    frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(frame[None], args.frames, axis=0)
    print(f"{args.frames} frames of {args.size}, libx264 medium crf 18, PyAV {av.__version__}; resident memory, MB")
    with tempfile.TemporaryDirectory() as tmp:
        for plan in args.plans.split(","):
            kept, growth, start = [], [], resident_mb()
            for i in range(args.videos):
                path = Path(tmp) / f"{plan.replace(':', '_')}-{i}.mp4"
                sink = VideoFileSink(path) if plan == "none" else SegmentedVideoSink(path, segment_frames=plan)
                sink.open(frames=len(frames), height=height, width=width)
                for j in range(0, len(frames), 4):
                    sink.write(frames[j : j + 4])
                sink.close()
                kept.append(sink)
                growth.append(resident_mb() - start)
            per_video = (growth[-1] - growth[0]) / max(1, args.videos - 1)
            print(f"{plan:12} growth after each video: {' '.join(f'{g:.0f}' for g in growth)}; "
                  f"{per_video:.0f} MB per video after the first")  # fmt: skip
            del kept


if __name__ == "__main__":
    main()
