"""The bench's report: one row of figures per mode, the table printed from it, and the environment."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._optional import require
from ._cost import gpu_seconds_per_video_second, usd_per_1000_hours


@dataclass
class ModeResult:
    """Figures for one mode. A run decodes the latent tensor (all its B videos) ``units`` times; ``stats``
    and the summary are per decode, ``d2h_gb`` too."""

    mode: str
    seconds: list[float]
    frames: int
    videos: int
    peak_vram_gib: float | None
    peak_host_extra_gib: float
    d2h_gb: float
    kernel_utilization: float | None = None
    gpu_busy: float | None = None
    utilization_to_last_kernel: float | None = None
    after_last_kernel_s: float | None = None
    timeline_png: str | None = None
    main_thread: list[tuple[float, float]] = field(default_factory=list)  # per run: (CPU s, run-queue wait s)
    extra: dict[str, Any] = field(default_factory=dict)
    units: int = 1  # decodes of the latent tensor per run (async-stream runs several back to back)

    @property
    def stats(self) -> dict[str, float]:
        """Seconds per decode of the latent tensor (per run divided by ``units``)."""
        s = np.asarray(self.seconds) / self.units
        return {"min": float(s.min()), "mean": float(s.mean()), "p99": float(np.percentile(s, 99)),
                "max": float(s.max()), "std": float(s.std())}  # fmt: skip


def _mean_per_unit(values: list[float], units: int) -> float | None:
    return float(np.mean(values)) / units if values else None


def summarize(
    results: Sequence[ModeResult], *, video_fps: float, price_per_hour: float | None, baseline: str | None
) -> list[dict[str, Any]]:
    """One row per mode: statistics, ratios to gpu-only, and cost against ``baseline``."""
    by_mode = {r.mode: r for r in results}
    floor = by_mode["gpu-only"].stats["mean"] / by_mode["gpu-only"].videos if "gpu-only" in by_mode else None
    rows = []
    for r in results:
        st = r.stats
        per_video = st["mean"] / r.videos
        ratio = gpu_seconds_per_video_second(per_video, r.frames, video_fps)
        row: dict[str, Any] = {
            "mode": r.mode,
            **{f"{k}_s": v for k, v in st.items()},
            "runs": len(r.seconds),
            "decodes_per_run": r.units,
            "frames_per_s": r.frames * r.videos / st["mean"],
            "vs_gpu_only": per_video / floor if floor else None,
            "kernel_utilization": r.kernel_utilization,
            "gpu_busy": r.gpu_busy,
            "utilization_to_last_kernel": r.utilization_to_last_kernel,
            "after_last_kernel_s": r.after_last_kernel_s,
            "peak_vram_gib": r.peak_vram_gib,
            "peak_host_extra_gib": r.peak_host_extra_gib,
            "d2h_gb": r.d2h_gb,
            "gpu_s_per_video_s": ratio,
            "main_thread_cpu_s": _mean_per_unit([cpu for cpu, _ in r.main_thread], r.units),
            "main_thread_wait_s": _mean_per_unit([wait for _, wait in r.main_thread], r.units),
            "timeline_png": r.timeline_png,
        }
        if price_per_hour is not None:
            row["usd_per_1000h"] = usd_per_1000_hours(ratio, price_per_hour)
        rows.append(row)
    if price_per_hour is not None and baseline in by_mode:
        base = next(row for row in rows if row["mode"] == baseline)["usd_per_1000h"]
        for row in rows:
            row["saving_usd_per_1000h_vs_" + baseline.replace("-", "_")] = base - row["usd_per_1000h"]
    return rows


def format_table(rows: list[dict[str, Any]], *, price_per_hour: float | None, baseline: str | None) -> str:
    def f(value, fmt):
        return "-" if value is None else format(value, fmt)

    def percent(share):
        return "-" if share is None else f"{100 * share:.1f}%"

    head = ["mode", "min s", "mean s", "P99 s", "max s", "frames/s", "x gpu-only", "kernel util", "GPU busy",
            "VRAM GiB", "host+ GiB", "D2H GB", "GPU-s/video-s"]  # fmt: skip
    saving = price_per_hour is not None and baseline is not None  # a saving needs a baseline (diffusers or sync)
    if price_per_hour is not None:
        head += ["$/1000h", *([f"saving vs {baseline}"] if saving else [])]
    lines = [head]
    for r in rows:
        line = [r["mode"], f(r["min_s"], ".3f"), f(r["mean_s"], ".3f"), f(r["p99_s"], ".3f"), f(r["max_s"], ".3f"),
                f(r["frames_per_s"], ".1f"), f(r["vs_gpu_only"], ".3f"),
                percent(r["kernel_utilization"]), percent(r["gpu_busy"]),
                f(r["peak_vram_gib"], ".2f"), f(r["peak_host_extra_gib"], ".2f"), f(r["d2h_gb"], ".3f"),
                f(r["gpu_s_per_video_s"], ".3f")]  # fmt: skip
        if price_per_hour is not None:
            line.append(f(r["usd_per_1000h"], ".0f"))
        if saving:
            line.append(f(r.get("saving_usd_per_1000h_vs_" + baseline.replace("-", "_")), "+.0f"))
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]

    def render(line: list[str]) -> str:
        cells = zip(line, widths, strict=True)
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join(render([str(c) for c in line]) for line in lines)


def environment(device: torch.device) -> dict[str, Any]:
    """Card, driver and library versions for the report."""
    av = require("av", "video")
    diffusers = require("diffusers", "video")
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[0]  # fmt: skip
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["gpu"] = None
    return env
