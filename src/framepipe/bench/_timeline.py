"""Draw a profiled run as an Nsight-like PNG: GPU kernels, copies and host stages on one time axis."""

from __future__ import annotations

from pathlib import Path

from .._optional import require
from ._profile import Timeline, merge

_LANES = [  # (label, colour); host lanes come from the run's PipelineTrace
    ("GPU kernels", "#76b900"),
    ("D2H copies", "#1f77b4"),
    ("host: decode (enqueue)", "#9467bd"),
    ("host: copy", "#17becf"),
    ("host: write (encode)", "#ff7f0e"),
]


def draw_timeline(timeline: Timeline, path: str | Path, *, title: str) -> Path:
    """Write ``path`` (PNG) and return it."""
    matplotlib = require("matplotlib", "bench")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixel_s = max(timeline.window_s, 1e-6) / 2000  # merge what one pixel cannot separate
    rows = [
        merge(timeline.kernels, pixel_s),
        merge(timeline.d2h_copies, pixel_s),
        timeline.host.get("decode", []),
        timeline.host.get("copy", []),
        timeline.host.get("write", []),
    ]
    fig, ax = plt.subplots(figsize=(14, 3.2), dpi=110)
    for row, ((_, colour), intervals) in enumerate(zip(_LANES, rows, strict=True)):
        y = len(_LANES) - 1 - row
        ax.broken_barh([(a, max(b - a, pixel_s)) for a, b in intervals], (y - 0.4, 0.8), facecolors=colour)
    util = timeline.kernel_utilization
    util_text = f"kernel utilization {util:.1%}" if util is not None else "no CUDA activity (CPU run)"
    ax.set_title(f"{title}: {timeline.window_s:.2f} s, {util_text}", fontsize=10)
    ax.set_yticks(range(len(_LANES)), [label for label, _ in reversed(_LANES)], fontsize=8)
    ax.set_xlim(0, timeline.window_s)
    ax.set_xlabel("seconds from the start of the video")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
