"""Render ``framepipe bench --json`` reports as the Markdown tables of docs/benchmarks.md.

python benchmarks/bench_table.py docs/results/bench-h200/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def command(settings: dict, modes: list[str] | None = None) -> str:
    """The `framepipe bench` command line that reproduces a report with these settings (and modes)."""
    enc = settings["encoder"]
    model = settings.get("model") or "random wan2.1"  # reports from before the field: random Wan 2.1
    if model.startswith("random "):  # "random ARCH (seed N)"
        arch, _, seed = model.removeprefix("random ").partition(" (seed ")
        seed = seed.rstrip(")")
        model_option = f"--arch {arch}" + (f" --seed {seed}" if seed not in ("", "0") else "")
    elif model.startswith("checkpoint "):
        model_option = f"--vae {model.removeprefix('checkpoint ')}"
    else:
        model_option = ""
    parts = [
        "framepipe bench",
        *([model_option] if model_option else []),
        f"--size {settings['height']}x{settings['width']}",
        f"--frames {settings['frames_per_video']}",
        f"--dtype {settings['dtype']}",
        f"--preset {enc['preset']}",
        f"--crf {enc['crf']}",
        f"--runs {settings['runs']}",
        f"--warmup {settings['warmup']}",
    ]
    parts.append(f"--content {settings.get('content', 'decoded')}")  # reports before the field: decoded
    if modes:
        parts.append(f"--modes {','.join(modes)}")
    if settings.get("stream_videos"):
        parts.append(f"--stream-videos {settings['stream_videos']}")
    if (settings.get("concurrent_videos") or [1]) != [1]:
        parts.append(f"--concurrent-videos {','.join(map(str, settings['concurrent_videos']))}")
    if settings.get("device", "cuda").startswith("cpu"):
        parts.append("--device cpu")
    if settings.get("profile") is False:
        parts.append("--profile off")
    if settings.get("decoder", "framepipe") != "framepipe":
        parts.append(f"--decoder {settings['decoder']}")
    if settings.get("slots", 2) != 2:
        parts.append(f"--slots {settings['slots']}")
    if enc.get("codec", "libx264") != "libx264":
        parts.append(f"--codec {enc['codec']}")
    if enc.get("fps", 16.0) != 16.0:
        parts.append(f"--fps {enc['fps']:g}")
    if enc.get("segment_frames"):
        parts.append(f"--segment-frames {enc['segment_frames']}")
    parts += [f"--encoder-option {key}={value}" for key, value in enc.get("encoder_options", {}).items()]
    parts += [f"--encoder-variant '{spec}'" for spec in settings.get("encoder_variants") or {}]
    if settings.get("price_per_gpu_hour") is not None:
        parts.append(f"--price-per-hour {settings['price_per_gpu_hour']:.2f}")
    return " ".join(parts)


def table(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    base = (s["baseline"] or "").replace("-", "_")  # no baseline mode: no savings column values
    lines = [
        f"**{s['height']}x{s['width']}, {s['frames_per_video']} frames, {s['dtype']}, "
        f"{s['encoder']['codec']} `{s['encoder']['preset']}` crf {s['encoder']['crf']}**: "
        f"{env['gpu']}, {s['warmup']} warm-up + {s['runs']} timed runs per mode, {env['date']}",
        "",
        f"`{command(s, [r['mode'] for r in report['modes'] if ' [' not in r['mode']])}`",  # variants: rows, not modes
        "",
        "| mode | min s | mean s | P99 s | max s | frames/s | x gpu-only | kernel util | peak VRAM GiB "
        "| host+ GiB | D2H GB | GPU-s / video-s | $ / 1000 h | saving vs diffusers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["modes"]:
        util = "-" if r["kernel_utilization"] is None else f"{100 * r['kernel_utilization']:.1f} %"
        saving = r.get(f"saving_usd_per_1000h_vs_{base}")
        lines.append(
            f"| {r['mode']} | {r['min_s']:.2f} | {r['mean_s']:.2f} | {r['p99_s']:.2f} | {r['max_s']:.2f} "
            f"| {r['frames_per_s']:.1f} | {r['vs_gpu_only']:.3f} | {util} | {r['peak_vram_gib']:.2f} "
            f"| {r['peak_host_extra_gib']:.2f} | {r['d2h_gb']:.3f} | {r['gpu_s_per_video_s']:.3f} "
            f"| {r.get('usd_per_1000h', 0):.0f} | {'-' if saving is None else f'{saving:+.0f}'} |"
        )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        print(table(json.loads(Path(path).read_text())))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
