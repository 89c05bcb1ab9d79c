"""framepipe's decoders against diffusers' on one GPU: same bits, time, peak VRAM, where the time goes.

For each architecture (seeded random weights), dtype and frame size: diffusers' whole-video
``vae.decode`` (the baseline users run), and the chunked GPU-only decode with diffusers' decoder
forward, with framepipe's, with framepipe's fast one and, on a Hopper GPU, with its FP8 one
(``decode_chunks(decoder=...)``), the exact and the fast one also as a device worker runs them
(``graphed``: CUDA graphs kept from decode to decode),
timed alternately in one process. Every chunk of diffusers' and framepipe's chunked decoders is compared
bit for bit, and the whole video against ``vae.decode`` in uint8; the fast decoder's difference
from them is reported (its error against the fp32 reference: ``framepipe compare --decoder fast``).
Each timed decode's mean power, mean SM clock and share of time held back for power (``gpu_power``),
beside the card's power limit and top clock: whether a decode runs the card at its limit. With
``--profile``, one decode of each is broken down by kernel kind.

    python benchmarks/decoder_speed.py --out results/ --sizes 480x832 720x1280 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
from gpu_power import alternated
from gpu_timing import peak
from script_inputs import random_case

from framepipe import to_uint8_frames
from framepipe._equivalence import chosen_ways, same_bits, verified_equivalences
from framepipe._fused import norm_silu_is_exact
from framepipe._graphs import StepGraphs
from framepipe._source import decode_chunks
from framepipe._window_conv import WindowTile, kernel_runs_on

KINDS = [  # (kind, substrings of kernel names), first match wins
    ("fused kernels (Triton)", ("norm_silu", "bias_residual", "subpixel_place")),
    ("convolution math", ("conv", "gemm", "xmma", "sm90", "sm80", "cutlass", "implicit")),
    ("layout transposes", ("nchwtonhwc", "nhwctonchw", "transpose")),
    ("norm reductions", ("reduce", "norm")),
    ("copies, cat, pad, fill", ("copy", "cat", "pad", "fill", "memcpy", "memset")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "silu", "mul", "add", "div")),
]


GRAPHED = {"framepipe graphed": "framepipe", "fast graphed": "fast"}  # as a device worker decodes
KEPT = StepGraphs()  # their graphs, kept from decode to decode (per decoder, of the last size)


def chunked(vae, z, decoder: str) -> None:
    for chunk in chunks(vae, z, decoder):
        to_uint8_frames(chunk)


def chunks(vae, z, decoder: str):
    """``decode_chunks`` with ``decoder``, or with framepipe's as graphed (``GRAPHED``)."""
    if decoder in GRAPHED:
        return decode_chunks(vae, z, decoder=GRAPHED[decoder], graphs=KEPT)
    return decode_chunks(vae, z, decoder=decoder)


def graphed_peak(vae, z, name: str) -> float:
    """A graphed decoder's peak (GiB), its graphs captured in it: none of another decoder's held."""
    KEPT.close()
    return peak(lambda: chunked(vae, z, name))


def compare(vae, z) -> dict:
    """Chunk by chunk, framepipe's decoder (eager and graphed) against diffusers' (bits), and the
    whole video in uint8."""
    for _ in range(2):  # the graphs captured: the second decode replays both kinds
        graphed = [c.clone() for c in chunks(vae, z, "framepipe graphed")]
    ours = decode_chunks(vae, z, decoder="framepipe")
    theirs = decode_chunks(vae, z, decoder="diffusers")
    same, max_diff, frames, graphed_same = True, 0.0, [], True
    for a, b, c in zip(ours, theirs, graphed, strict=True):
        if not same_bits(a, b):
            same = False
            max_diff = max(max_diff, (a.float() - b.float()).abs().max().item())
        graphed_same = graphed_same and same_bits(c, b)
        frames.append(to_uint8_frames(a).cpu())
    whole = to_uint8_frames(vae.decode(z).sample).cpu()
    ours_u8 = torch.cat(frames, 1)
    fast_u8 = torch.cat([to_uint8_frames(c).cpu() for c in decode_chunks(vae, z, decoder="fast")], 1)
    return {
        "chunks_same_bits": same,
        "graphed_chunks_same_bits": graphed_same,
        "chunks_max_abs_diff": max_diff,
        "uint8_same_as_vae_decode": bool(torch.equal(ours_u8, whole)),
        "uint8_levels_differing": int((ours_u8.int() - whole.int()).abs().max()),
        **{f"fast_uint8_{k}": v for k, v in uint8_difference(fast_u8, whole).items()},
    }


def uint8_difference(got: torch.Tensor, want: torch.Tensor) -> dict:
    """How far uint8 frames ``got`` are from ``want``: the largest difference in levels, and the share
    of values that differ."""
    return {"levels_differing": int((got.int() - want.int()).abs().max()),
            "share_differing": round(float((got != want).float().mean()), 6)}  # fmt: skip


def means(figures: list[dict]) -> dict:
    """Each figure's mean over the runs that gave it."""
    keys = {k for f in figures for k, v in f.items() if v is not None}
    return {k: round(sum(f[k] for f in figures if f.get(k) is not None) / sum(f.get(k) is not None for f in figures), 3)
            for k in sorted(keys)}  # fmt: skip


def breakdown(fn) -> dict[str, float]:
    """GPU seconds by kernel kind for one run of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    seconds: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)  # kernels whose names share their first 90 characters summed
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total <= 0 or event.key.startswith("ProfilerStep"):
            continue
        name = event.key.lower()
        kind = next((k for k, words in KINDS if any(w in name for w in words)), "other")
        seconds[kind] += total / 1e6
        by_name[event.key[:90]] += total / 1e6
    top = dict(sorted(((k, round(v, 4)) for k, v in by_name.items()), key=lambda kv: -kv[1])[:30])
    return {**{k: round(v, 4) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}, "top_kernels": top}


def run(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int, profile: bool) -> dict:
    KEPT.close()  # the last row's graphs
    vae, z = random_case(arch, dtype, size, frames, "cuda")
    row: dict = {"arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": frames}
    earlier = {*verified_equivalences(), *chosen_ways()}  # an earlier row's shapes: not this row's to count
    with torch.inference_mode():
        row["fused_norm_silu"] = norm_silu_is_exact(z.device, vae.dtype)
        # framepipe's first decode at these shapes also checks each norm's and convolution's bits
        first_use = round(peak(lambda: chunked(vae, z, "framepipe")), 2)
        row.update(compare(vae, z))
        fp8 = ("fast-fp8",) if kernel_runs_on(z.device) else ()  # its error: benchmarks/fp8_decoder.py
        decoders = ("diffusers", "framepipe", "fast", *fp8, *GRAPHED)
        for name in decoders:  # warm-up
            chunked(vae, z, name)
        decodes = {"vae.decode": lambda: to_uint8_frames(vae.decode(z).sample),
                   **{name: lambda n=name: chunked(vae, z, n) for name in decoders}}  # fmt: skip
        timed = alternated(decodes, runs, z.device)
        times, power = timed["seconds"], timed["power"]
        row["power_limit_watts"], row["max_sm_mhz"] = timed["power_limit_watts"], timed["max_sm_mhz"]
        row["seconds"] = {k: round(min(v), 4) for k, v in times.items()}
        row["power"] = {name: means(runs_figures) for name, runs_figures in power.items()}  # over the runs
        row["all_seconds"] = {k: [round(x, 4) for x in v] for k, v in times.items()}
        row["speedup_vs_vae_decode"] = round(min(times["vae.decode"]) / min(times["framepipe"]), 3)
        row["speedup_vs_diffusers_chunked"] = round(min(times["diffusers"]) / min(times["framepipe"]), 3)
        row["fast_speedup_vs_vae_decode"] = round(min(times["vae.decode"]) / min(times["fast"]), 3)
        for name in (*fp8, *GRAPHED):
            key = f"{name.replace(' ', '_').replace('-', '_')}_speedup_vs_vae_decode"
            row[key] = round(min(times["vae.decode"]) / min(times[name]), 3)
        KEPT.close()  # the eager decodes' peaks without the graphs' memory; the graphed ones capture theirs
        row["peak_vram_gib"] = {
            "vae.decode": round(peak(lambda: vae.decode(z)), 2),
            "diffusers": round(peak(lambda: chunked(vae, z, "diffusers")), 2),
            **{name: round(peak(lambda n=name: chunked(vae, z, n)), 2) for name in ("framepipe", "fast", *fp8)},
            **{name: round(graphed_peak(vae, z, name), 2) for name in GRAPHED},
            "framepipe first use": first_use,
        }
        checked = [(k, v) for k, v in verified_equivalences().items() if k not in earlier]
        row["shapes_checked_exact"] = {  # kind -> [shapes where framepipe's way gave the same bits, shapes]
            kind: [sum(v for k, v in checked if k[0] == kind and vae.dtype in k),
                   sum(1 for k, v in checked if k[0] == kind and vae.dtype in k)]
            for kind in ("norm", "norm given", "conv", "bias_residual")
        }  # fmt: skip
        chosen = [(k, way) for k, way in chosen_ways().items() if k not in earlier]
        ways = [(k[-1], way) for k, way in chosen if k[0] == "conv" and vae.dtype in k]
        row["conv_shapes_padded"] = {  # decoder -> [shapes computed with padded output channels, shapes]
            name: [sum(way is True for e, way in ways if e == exact), sum(e == exact for e, _ in ways)]
            for name, exact in (("framepipe", True), ("fast", False))
        }
        row["fast_conv_shapes_window"] = [  # [shapes the fast decoder computes with its own kernel, shapes]
            sum(isinstance(way, WindowTile) for e, way in ways if not e),
            sum(not e for e, _ in ways),
        ]
        row["exact_conv_shapes_window"] = [  # the same for the exact decoder (cuDNN's bits, ``exact_tiles``)
            sum(isinstance(way, WindowTile) for e, way in ways if e),
            sum(bool(e) for e, _ in ways),
        ]
        resamplers = [way for k, way in chosen if k[0] == "resample" and vae.dtype in k]
        row["fast_resamplers_subpixel"] = [resamplers.count("subpixel"), len(resamplers)]
        attentions = [way for k, way in chosen if k[0] == "attention" and vae.dtype in k]
        row["fast_attention_explicit"] = [attentions.count("explicit"), len(attentions)]
        if profile:
            row["gpu_seconds_by_kind"] = {name: breakdown(lambda n=name: chunked(vae, z, n)) for name in decoders}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", nargs="+", default=["wan2.1"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--sizes", nargs="+", default=["480x832"])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import diffusers

    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.archs:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            for dtype in args.dtypes:
                row = run(arch, dtype, (h, w), args.frames, args.runs, args.profile)
                rows.append(row)
                print(json.dumps(row), flush=True)
                (args.out / "decoder_speed.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print(json.dumps(env))


if __name__ == "__main__":
    main()
