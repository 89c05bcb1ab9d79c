"""Two host-side questions behind the "keep the GPU busy" directions, answered on the CPU alone.

1. How much of the encoder thread's work is FFmpeg's RGB -> yuv420p conversion, which
   ``--device-yuv`` moves to the GPU? Times swscale's conversion per frame against a whole
   single-threaded libx264 encode of the same frames (which includes that conversion).
2. Does the interpreter lock serialize encoders on Python threads (segments, a stream's writers)?
   Encodes the same clip twice, one after the other and then on two threads at once, with
   libx264 ``threads=1`` so that only Python's threads can run them in parallel.

    python benchmarks/host_costs.py   # 41 procedural frames of 480x832, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

from framepipe._postprocess import to_uint8_frames
from framepipe._sinks import VideoFileSink
from framepipe._synth import synth_clips


def encode(frames: np.ndarray, path: Path, preset: str, crf: int) -> None:
    sink = VideoFileSink(path, preset=preset, crf=crf, options={"threads": "1"})
    sink.open(frames=len(frames), height=frames.shape[1], width=frames.shape[2])
    for i in range(0, len(frames), 4):
        sink.write(frames[i : i + 4])
    sink.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=41)
    p.add_argument("--size", default="480x832")
    p.add_argument("--preset", default="medium")
    p.add_argument("--crf", type=int, default=18)
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    src = to_uint8_frames(synth_clips(1, args.frames, height, width, seed=11))[0].numpy()

    start = time.perf_counter()
    for frame in src:
        av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
    convert = (time.perf_counter() - start) / len(src)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        encode(src, tmp / "one.mp4", args.preset, args.crf)
        one = (time.perf_counter() - start) / len(src)
        start = time.perf_counter()
        for i in range(2):
            encode(src, tmp / f"seq{i}.mp4", args.preset, args.crf)
        sequential = time.perf_counter() - start
        threads = [
            threading.Thread(target=encode, args=(src, tmp / f"par{i}.mp4", args.preset, args.crf)) for i in range(2)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel = time.perf_counter() - start
    print(f"{args.frames} frames of {args.size}, libx264 {args.preset} crf {args.crf} threads=1, "
          f"PyAV {av.__version__}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"swscale rgb24 -> yuv420p: {1000 * convert:.2f} ms per frame; whole encode: {1000 * one:.1f} ms per frame "
          f"(the conversion is {100 * convert / one:.1f} % of it)")  # fmt: skip
    print(f"two encodes: one after the other {sequential:.2f} s, on two Python threads at once {parallel:.2f} s "
          f"({sequential / parallel:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
