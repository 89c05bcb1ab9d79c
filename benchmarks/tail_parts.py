"""Where the time after the last chunk goes with segmented encoding (``--segment-frames``).

Decodes seeded random latents with the Wan 2.1 architecture (random weights) through ``decode``
with each segment plan, and times, from the moment the pipeline closes the sink (every frame is
on the host), when each segment got its last frame and when its encoder finished, and when the
joining of segments into the output ended. Timers are wrapped around framepipe's own segment
threads and joiner; nothing else changes. The first decode per plan is a warm-up.

    python benchmarks/tail_parts.py --dtype bfloat16   # one GPU: 81 frames of 480x832, libx264 medium crf 18
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import framepipe._segments as segments
from framepipe import decode, load_vae


def instrument(events: list[tuple[str, str, float]]) -> None:
    """Record (kind, segment file, perf_counter) for segment starts, last frames, ends, joins and close."""
    init, run = segments._Segment.__init__, segments._Segment._run
    append, close = segments._Joiner._append, segments.SegmentedVideoSink.close
    names: dict[int, str] = {}  # segment sink -> its number in the video, from the order they are made

    def named_init(self, sink, *args, **kwargs):
        names[id(sink)] = f"{sum(1 for kind, _, _ in events if kind == 'start'):05d}"
        events.append(("start", names[id(sink)], time.perf_counter()))
        init(self, sink, *args, **kwargs)

    def timed_run(self):
        name, get = names[id(self.sink)], self.frames.get

        def timed_get(*args, **kwargs):
            item = get(*args, **kwargs)
            if item is segments._DONE:
                events.append(("last frame", name, time.perf_counter()))
            return item

        self.frames.get = timed_get
        run(self)
        events.append(("encoded", name, time.perf_counter()))

    def timed_append(self, sink, length):
        append(self, sink, length)
        events.append(("joined", names[id(sink)], time.perf_counter()))

    def timed_close(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        events.append(("close", "", time.perf_counter()))
        close(self)
        events.append(("closed", "", time.perf_counter()))

    segments._Segment.__init__ = named_init
    segments._Segment._run = timed_run
    segments._Joiner._append = timed_append
    segments.SegmentedVideoSink.close = timed_close


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--size", default="480x832")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--plans", default="tail,tail:1.5,tail:1.25", help="segment_frames values, comma-separated")
    p.add_argument("--runs", type=int, default=2, help="timed decodes per plan, after one warm-up")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    vae = load_vae(arch="wan2.1", dtype=args.dtype, device=args.device, seed=0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, generator=g).to(args.device)
    events: list[tuple[str, str, float]] = []
    instrument(events)
    print(f"{args.frames} frames of {args.size}, {args.dtype}, {args.device}, libx264 medium crf 18; "
          "seconds from the close of the sink (all frames on the host)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for plan in map(segments.parse_segment_frames, args.plans.split(",")):
            for run in range(args.runs + 1):
                events.clear()
                start = time.perf_counter()
                decode(latents, Path(tmp) / "out.mp4", vae=vae, latent_format="raw", segment_frames=plan,
                       preset="medium", crf=18)  # fmt: skip
                total = time.perf_counter() - start
                if run == 0:
                    continue
                t = {(kind, name): at for kind, name, at in events}
                close = t["close", ""]
                names = sorted({name for kind, name, _ in events if kind == "encoded"})
                last_join = max(at for (kind, _), at in t.items() if kind == "joined")
                parts = " ".join(f"{n[:5]}: in {t['last frame', n] - close:+.3f} / done {t['encoded', n] - close:+.3f}"
                                 for n in names)  # fmt: skip
                print(f"{plan!s:9} total {total:.3f} s, after close {t['closed', ''] - close:.3f} s "
                      f"(last join done {last_join - close:+.3f}) | {parts}")  # fmt: skip


if __name__ == "__main__":
    main()
