"""Whether decoding two videos at once, on two CUDA streams, fills the gaps one decode leaves.

One decode alone leaves the GPU idle a few percent of the time: 1-2 us between back-to-back
kernels and short launch gaps. Kernels of a second, independent decode on another stream can run
in those gaps. Measured here on the decode alone (``decode_chunks`` plus the yuv420p conversion,
as ``framepipe bench``'s ``gpu-only``), ``videos`` copies of one seeded latent video, Wan 2.1
architecture with random weights, side by side in one process on one GPU:

- ``one-stream``: the videos one after another on one stream (``gpu-only`` repeated);
- ``lanes-N``: N videos at a time, their chunks launched round robin from one thread, each video
  on its own stream.

Every mode's frames are compared with ``one-stream``'s for equality. One profiled run of each
reports the share of its span with a kernel running (kernels of two streams overlapping count
once) and with a kernel or a device-side copy running.

    python benchmarks/concurrent_decode.py --out results.json   # one CUDA GPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from cuda_graphs import gpu_busy, run_cases, wan_case

from framepipe._decode import decode_chunks
from framepipe._postprocess import converter


def decode_lanes(vae, latents: torch.Tensor, videos: int, lanes: int) -> list[list[torch.Tensor]]:
    """Decode ``videos`` copies of ``latents``, ``lanes`` at a time on their own streams; uint8 chunks per video."""
    convert = converter("yuv420p")
    streams = [torch.cuda.Stream() for _ in range(lanes)]
    out: list[list[torch.Tensor]] = [[] for _ in range(videos)]
    pending = list(range(videos))
    running: dict[int, tuple[Iterator[torch.Tensor], torch.cuda.Stream]] = {}
    with torch.inference_mode():
        while pending or running:
            while pending and len(running) < lanes:
                stream = next(s for s in streams if all(s is not r[1] for r in running.values()))
                stream.wait_stream(torch.cuda.current_stream())
                running[pending.pop(0)] = (decode_chunks(vae, latents), stream)
            for video, (chunks, stream) in list(running.items()):
                with torch.cuda.stream(stream):
                    chunk = next(chunks, None)
                    if chunk is None:
                        del running[video]
                        continue
                    out[video].append(convert(chunk))
    torch.cuda.synchronize()
    return out


def measure(dtype: torch.dtype, height: int, width: int, frames: int, videos: int, lanes: list[int], runs: int) -> dict:
    vae, latents = wan_case(dtype, height, width, frames)
    modes = {"one-stream": 1, **{f"lanes-{n}": n for n in lanes}}
    reference = decode_lanes(vae, latents, videos, 1)
    row: dict = {"dtype": str(dtype).removeprefix("torch."), "size": f"{height}x{width}", "frames": frames,
                 "videos": videos}  # fmt: skip
    for name, n in modes.items():
        if n > 1:
            got = decode_lanes(vae, latents, videos, n)
            row[f"{name}_same_frames"] = all(
                len(a) == len(b) and all(map(torch.equal, a, b)) for a, b in zip(got, reference, strict=True)
            )
            del got
    del reference
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(runs):
        for name, n in modes.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            decode_lanes(vae, latents, videos, n)
            seconds[name].append(round(time.perf_counter() - start, 4))
    peak: dict[str, float] = {}
    profile: dict[str, dict] = {}
    for name, n in modes.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        profile[name] = gpu_busy(lambda n=n: decode_lanes(vae, latents, videos, n))
        peak[name] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    row.update(seconds=seconds, peak_gib=peak, profile=profile)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="bfloat16:480x832,float32:480x832,bfloat16:720x1280")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--lanes", default="2", help="comma-separated lane counts to measure beside one stream")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("concurrent_decode.py needs a CUDA GPU")
    lanes = [int(n) for n in args.lanes.split(",")]
    rows = run_cases(args.cases, lambda dtype, h, w: measure(dtype, h, w, args.frames, args.videos, lanes, args.runs),
                     args.out)  # fmt: skip
    print(f"{'case':18} {'mode':10} {'same':5} {'s/video':>8} {'x one':>6} {'kernels':>8} {'+copies':>8} "
          f"{'peak GiB':>9}")  # fmt: skip
    for r in rows:
        base = min(r["seconds"]["one-stream"])
        for name, s in r["seconds"].items():
            p = r["profile"][name]
            same = r.get(f"{name}_same_frames", True)
            print(f"{r['dtype'] + ' ' + r['size']:18} {name:10} {str(same):5} {min(s) / r['videos']:8.3f} "
                  f"{min(s) / base:6.3f} {p['kernel_utilization']:8.1%} {p['busy_with_copies']:8.1%} "
                  f"{r['peak_gib'][name]:9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
