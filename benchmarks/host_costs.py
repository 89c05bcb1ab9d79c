"""Three host-side questions behind the "keep the GPU busy" directions, answered on the CPU alone.

1. How much of the encoder thread's work is FFmpeg's RGB -> yuv420p conversion, which
   ``--device-yuv`` moves to the GPU? Times swscale's conversion per frame against a whole
   single-threaded libx264 encode of the same frames (which includes that conversion).
2. Does the interpreter lock serialize encoders on Python threads (segments, a stream's writers)?
   Encodes the same clip twice, one after the other and then on two threads at once, with
   libx264 ``threads=1`` so that only Python's threads can run them in parallel.
3. Do encoders on other threads slow a thread that launches many small operations, as the
   decode thread launches kernels? Times a loop of tiny torch operations alone, then while
   encoders run on other threads: one encoder, and five (as tail segments run at once), with
   libx264 ``threads=1`` or its default thread count, at normal priority or with the encoding
   threads at nice 10 or 19 (the threads x264 creates inherit it from the thread that opens it).
   The same five encoders in worker processes (``ProcessVideoSink``, ``--encoder-processes``)
   take the interpreter lock out of the picture and leave only the competition for cores.
   Reports the median, mean and worst of 20 loops against the median alone: the worst cases are
   the delays that leave a GPU waiting.

    python benchmarks/host_costs.py   # 41 procedural frames of 480x832, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import torch

from framepipe._postprocess import to_uint8_frames
from framepipe._priority import lower_thread_priority
from framepipe._sinks import open_sink
from framepipe._synth import synth_clips


def encode(
    frames: np.ndarray,
    path: Path,
    preset: str,
    crf: int,
    threads: str | None = "1",
    *,
    nice: int = 0,
    processes: bool = False,
) -> None:
    options = {"threads": threads} if threads else {}
    # in a worker process, nice lowers the whole process; on a thread, the caller has lowered the thread
    sink = open_sink(path, preset=preset, crf=crf, options=options, nice=nice if processes else 0, processes=processes)
    sink.open(frames=len(frames), height=frames.shape[1], width=frames.shape[2])
    for i in range(0, len(frames), 4):
        sink.write(frames[i : i + 4])
    sink.close()


def launch_loop(ops: int = 5_000) -> float:
    """Seconds for ``ops`` tiny in-place torch operations: Python and dispatch, almost no arithmetic."""
    t = torch.zeros(16)
    start = time.perf_counter()
    for _ in range(ops):
        t.add_(1)
    return time.perf_counter() - start


def launch_loop_beside_encoders(
    frames: np.ndarray,
    folder: Path,
    preset: str,
    crf: int,
    *,
    encoders: int,
    threads: str | None,
    nice: int,
    processes: bool = False,
) -> list[float]:
    """20 ``launch_loop`` timings while ``encoders`` threads encode ``frames`` over and over."""
    stop = threading.Event()

    def keep_encoding(i: int) -> None:
        if not processes:  # as the pipeline's writer: the encoder's threads inherit this thread's nice value
            lower_thread_priority(nice)
        while not stop.is_set():
            encode(frames, folder / f"bg{i}.mp4", preset, crf, threads, nice=nice, processes=processes)

    workers = [threading.Thread(target=keep_encoding, args=(i,)) for i in range(encoders)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)  # the encoders are under way
        return [launch_loop() for _ in range(20)]
    finally:
        stop.set()
        for w in workers:
            w.join()


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
        torch.set_num_threads(1)
        alone = statistics.median(launch_loop() for _ in range(20))
        cases = [(1, None, 0, False), *itertools.product((5,), (None, "1"), (0, 10, 19), (False,))]
        cases += [(1, None, 19, True), (5, None, 0, True), (5, None, 19, True)]
        beside = {
            case: launch_loop_beside_encoders(
                src[:21], tmp, args.preset, args.crf, encoders=case[0], threads=case[1], nice=case[2],
                processes=case[3],
            )
            for case in cases
        }  # fmt: skip
    print(f"{args.frames} frames of {args.size}, libx264 {args.preset} crf {args.crf} threads=1, "
          f"PyAV {av.__version__}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"swscale rgb24 -> yuv420p: {1000 * convert:.2f} ms per frame; whole encode: {1000 * one:.1f} ms per frame "
          f"(the conversion is {100 * convert / one:.1f} % of it)")  # fmt: skip
    print(f"two encodes: one after the other {sequential:.2f} s, on two Python threads at once {parallel:.2f} s "
          f"({sequential / parallel:.2f}x)")  # fmt: skip
    print(f"5,000 tiny torch ops: {1000 * alone:.1f} ms alone (median of 20); beside encoders on other threads, "
          "median / mean / worst of 20 against that:")  # fmt: skip
    for (encoders, threads, nice, processes), times in beside.items():
        where = "worker processes" if processes else "threads"
        print(f"  {encoders} x libx264 threads={threads or 'default'} in {where}, nice {nice}: "
              f"{statistics.median(times) / alone:.2f}x / {statistics.mean(times) / alone:.2f}x / "
              f"{max(times) / alone:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
