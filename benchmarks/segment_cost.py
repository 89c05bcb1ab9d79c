"""What segment-parallel encoding (``--segment-frames``) costs in file size and pixels.

Encodes one procedural clip with one encoder and with ``SegmentedVideoSink`` at several segment
lengths, same codec, preset and crf, then decodes each file and compares it with the source
frames. Runs on the CPU; it measures size and error, not speed.

    python benchmarks/segment_cost.py   # 81 frames of 480x832, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from framepipe._postprocess import to_uint8_frames
from framepipe._synth import synth_clips
from framepipe.sinks import SegmentedVideoSink, VideoFileSink, VideoSettings, parse_segment_frames, tail_plan, tail_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="480x832")
    p.add_argument("--preset", default="medium")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--segments", default="41,20,11,tail,tail:1.5,tail:1.25",
                   help="segment lengths to try; 'tail[:G[:L]]': tail_plan growing by 2 (G) from 4 (L)")  # fmt: skip
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    src = to_uint8_frames(synth_clips(1, args.frames, height, width, seed=args.seed))[0].numpy()
    settings = VideoSettings(codec="libx264", preset=args.preset, crf=args.crf)
    sinks = {"one encoder": lambda path: VideoFileSink(path, settings)}
    for n in map(parse_segment_frames, args.segments.split(",")):
        spec = tail_spec(n)
        name = f"segments of {n}" if spec is None else f"{n} {tail_plan(args.frames, last=spec[1], growth=spec[0])}"
        sinks[name] = lambda path, n=n: SegmentedVideoSink(path, replace(settings, segment_frames=n))
    print(f"{args.frames} frames of {args.size}, synth seed {args.seed}, libx264 {args.preset} crf {args.crf}, "
          f"PyAV {av.__version__}")  # fmt: skip
    print(f"{'encoding':<44} {'bytes':>9} {'vs one':>7} {'PSNR dB':>8} {'max err':>8} {'s (CPU)':>8}")
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in sinks.items():
            path = Path(tmp) / f"{len(list(Path(tmp).iterdir()))}.mp4"
            sink, start = make(path), time.perf_counter()
            sink.open(frames=len(src), height=height, width=width)
            for i in range(0, len(src), 4):  # the pipeline's chunks: 4 frames per latent frame
                sink.write(src[i : i + 4])
            sink.close()
            seconds = time.perf_counter() - start
            with av.open(str(path)) as c:
                got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            assert got.shape == src.shape, f"{name}: {got.shape} frames decoded, {src.shape} written"
            size = path.stat().st_size
            baseline = baseline or size
            err = got.astype(np.float64) - src
            psnr = 10 * np.log10(255**2 / (err**2).mean())
            print(f"{name:<44} {size:>9} {size / baseline:>7.2f} {psnr:>8.2f} {int(np.abs(err).max()):>8} "
                  f"{seconds:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
