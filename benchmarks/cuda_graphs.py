"""What CUDA graphs per chunk would buy the Wan decode, measured before building them in.

The decode alone (``gpu-only``: decode_chunks plus the yuv420p conversion, no encoder) is timed
three ways, side by side in one process on one GPU, with seeded random latents and the Wan 2.1
architecture (random weights):

- ``eager``: framepipe's ``decode_chunks``, as the pipeline runs it;
- ``graph-per-video``: chunks 0-2 eager (their causal-cache shapes differ), then one CUDA graph of
  a whole chunk, captured for this video and replayed for every later chunk. The graph reads the
  cache from fixed buffers and copies the new cache back into them at its end;
- ``graph-reused``: the same, captured once and replayed for later videos of the same shape (the
  stream case); each video still runs its first three chunks eagerly and copies their cache in.

Every mode's frames are compared with ``eager``'s for equality. One profiled run each of
``eager`` and ``graph-reused`` reports, over the span from its first GPU operation to its last,
the share with a kernel running and the share with a kernel or a device-side copy or memset
running, and sums the idle gaps by length.

    python benchmarks/cuda_graphs.py --out results.json   # one CUDA GPU; 81 frames, bf16 and fp32
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import torch

from framepipe._decode import _causal_conv_count, decode_chunks
from framepipe._models import move_vae, random_vae
from framepipe._postprocess import converter
from framepipe._profile import Interval, merge, profile_run, union_length

EAGER_CHUNKS = 3  # chunk 0 has no cache, chunk 1 a one-frame cache; from chunk 2 on all shapes repeat
GAP_BUCKETS_US = ((5, "<5us"), (20, "5-20us"), (100, "20-100us"), (1000, "100us-1ms"), (float("inf"), ">1ms"))


class GraphedDecoder:
    """Chunks 0-2 eager, then replays of one captured chunk; the graph is kept across videos."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None

    def _capture(self, x: torch.Tensor, cache: list) -> None:
        self.static_x = x.clone()
        self.static_cache = [None if c is None else c.clone() for c in cache]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            work = list(self.static_cache)
            out = self.vae.decoder(self.static_x, feat_cache=work, feat_idx=[0], first_chunk=False)
            self.static_out = torch.clamp(out, min=-1.0, max=1.0)
            for dst, src in zip(self.static_cache, work, strict=True):
                if (dst is None) != (src is None):
                    raise RuntimeError("the causal cache changed its layout after the eager chunks")
                if dst is not None:
                    dst.copy_(src)

    @torch.inference_mode()
    def chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        cache: list = [None] * _causal_conv_count(self.vae)
        x = self.vae.post_quant_conv(latents)
        n = x.shape[2]
        for i in range(min(n, EAGER_CHUNKS)):
            out = self.vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))
            yield torch.clamp(out, min=-1.0, max=1.0)
        if n <= EAGER_CHUNKS:
            return
        key = (tuple(latents.shape), latents.dtype)
        if self.graph is None or key != self.key:
            self.graph, self.key = None, key
            self._capture(x[:, :, EAGER_CHUNKS : EAGER_CHUNKS + 1], cache)
        else:
            for dst, src in zip(self.static_cache, cache, strict=True):
                if dst is not None:
                    dst.copy_(src)
        del cache
        for i in range(EAGER_CHUNKS, n):
            self.static_x.copy_(x[:, :, i : i + 1])
            self.graph.replay()
            yield self.static_out.clone()  # the next replay overwrites static_out


def decode_all(source: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    convert = converter("yuv420p")
    with torch.inference_mode():
        frames = [convert(chunk) for chunk in source]
    torch.cuda.synchronize()
    return frames


def gpu_busy(run: Callable[[], object]) -> dict:
    """Profile one run (``framepipe._profile.profile_run``) and report ``busy_figures`` of it."""
    timeline = profile_run(lambda trace: run(), device=torch.device("cuda"))
    return busy_figures(timeline.kernels, timeline.device_copies)


def busy_figures(kernels: list[Interval], copies: list[Interval]) -> dict:
    """Kernel-only and kernel+device-copy busy shares of the span from the first GPU operation to
    the last, and the idle time between them summed by gap length (intervals in seconds)."""
    busy = merge(kernels + copies)
    lo, hi = busy[0][0], busy[-1][1]
    gaps = {label: 0.0 for _, label in GAP_BUCKETS_US}
    for (_, end), (start, _) in pairwise(busy):
        gap_us = (start - end) * 1e6
        gaps[next(label for limit, label in GAP_BUCKETS_US if gap_us < limit)] += gap_us / 1e3
    return {"span_ms": round((hi - lo) * 1e3, 2), "kernels": len(kernels), "copies": len(copies),
            "kernel_utilization": round(union_length(kernels, lo, hi) / (hi - lo), 4),
            "busy_with_copies": round(union_length(kernels + copies, lo, hi) / (hi - lo), 4),
            "idle_ms_by_gap": {k: round(v, 2) for k, v in gaps.items()}}  # fmt: skip


def wan_case(dtype: torch.dtype, height: int, width: int, frames: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The Wan 2.1 VAE with seeded random weights on the GPU, and seeded random latents for one video."""
    vae = move_vae(random_vae("wan2.1", seed=0), device=torch.device("cuda"), dtype=dtype)
    g = torch.Generator("cuda").manual_seed(0)
    shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    return vae, torch.randn(shape, device="cuda", dtype=dtype, generator=g)


def run_cases(cases: str, measure_case: Callable[[torch.dtype, int, int], dict], out: Path | None) -> list[dict]:
    """``measure_case(dtype, height, width)`` for each ``dtype:HxW`` of ``cases``; each row is printed
    as it comes, and all of them are written to ``out`` with the GPU's name and torch's version."""
    rows = []
    for case in cases.split(","):
        dtype, size = case.split(":")
        height, width = map(int, size.split("x"))
        rows.append(measure_case(getattr(torch, dtype), height, width))
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    if out:
        report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
        out.write_text(json.dumps(report, indent=1))
    return rows


def measure(dtype: torch.dtype, height: int, width: int, frames: int, runs: int) -> dict:
    vae, latents = wan_case(dtype, height, width, frames)
    reused = GraphedDecoder(vae)
    modes = {
        "eager": lambda: decode_chunks(vae, latents),
        "graph-per-video": lambda: GraphedDecoder(vae).chunks(latents),
        "graph-reused": lambda: reused.chunks(latents),
    }
    reference = decode_all(modes["eager"]())
    row: dict = {"dtype": str(dtype).removeprefix("torch."), "size": f"{height}x{width}", "frames": frames}
    for name in ("graph-per-video", "graph-reused"):
        got = decode_all(modes[name]())
        row[f"{name}_same_frames"] = len(got) == len(reference) and all(map(torch.equal, got, reference))
    del reference
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(runs):
        for name, make in modes.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            decode_all(make())
            seconds[name].append(round(time.perf_counter() - start, 4))
    for name, make in modes.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        decode_all(make())
        row[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    row["seconds"] = seconds
    row["profile"] = {name: gpu_busy(lambda make=modes[name]: decode_all(make())) for name in ("eager", "graph-reused")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="bfloat16:480x832,float32:480x832,bfloat16:720x1280")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_graphs.py needs a CUDA GPU")
    rows = run_cases(args.cases, lambda dtype, h, w: measure(dtype, h, w, args.frames, args.runs), args.out)
    print(f"{'case':18} {'same':5} {'eager s':>8} {'per-video':>10} {'reused':>8} "
          f"{'util eager':>11} {'util reused':>12}")  # fmt: skip
    for r in rows:
        best = {name: min(s) for name, s in r["seconds"].items()}
        same = r["graph-per-video_same_frames"] and r["graph-reused_same_frames"]
        util = {name: f"{p['kernel_utilization']:.1%}/{p['busy_with_copies']:.1%}" for name, p in r["profile"].items()}
        print(f"{r['dtype'] + ' ' + r['size']:18} {str(same):5} {best['eager']:8.3f} "
              f"{best['graph-per-video'] / best['eager']:9.3f}x {best['graph-reused'] / best['eager']:7.3f}x "
              f"{util['eager']:>11} {util['graph-reused']:>12}")  # fmt: skip


if __name__ == "__main__":
    main()
