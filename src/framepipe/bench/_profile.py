"""Kernel utilization from a torch.profiler trace: the union of CUDA kernel intervals inside the
measured window, divided by the window's wall time. GPU busy time also counts the device's own
copies and memsets (a decoder's ``clone`` and ``cat``), which are GPU work but not kernels.

The profiled run is separate from the timed runs, so profiling overhead never enters the timings.
Host spans recorded on the ``perf_counter`` clock (``PipelineTrace``) are moved onto the trace's
clock through one marker that is recorded on both clocks at the same moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._trace import PipelineTrace

_MARKER = "framepipe.window"

Interval = tuple[float, float]  # (start_s, end_s) relative to the window's start


@dataclass
class Timeline:
    """One profiled run on a shared time axis (seconds from the window's start)."""

    window_s: float
    kernels: list[Interval] = field(default_factory=list)
    d2h_copies: list[Interval] = field(default_factory=list)
    h2d_copies: list[Interval] = field(default_factory=list)
    device_copies: list[Interval] = field(default_factory=list)  # device-to-device copies and memsets
    host: dict[str, list[Interval]] = field(default_factory=dict)
    cuda: bool = False

    @property
    def kernel_utilization(self) -> float | None:
        """Busy share of the window, or None when the run had no CUDA activity to measure."""
        return self._busy_share(self.kernels)

    @property
    def gpu_busy(self) -> float | None:
        """Share of the window with a kernel or a device-side copy or memset running; None without CUDA."""
        return self._busy_share(self.kernels + self.device_copies)

    def _busy_share(self, intervals: list[Interval]) -> float | None:
        if not self.cuda:
            return None
        return union_length(intervals, 0.0, self.window_s) / self.window_s if self.window_s > 0 else 0.0

    @property
    def last_kernel_end_s(self) -> float | None:
        """When the GPU's last kernel in the window ended; None without CUDA activity."""
        ends = [min(stop, self.window_s) for start, stop in self.kernels if start < self.window_s]
        return max(ends) if self.cuda and ends else None

    @property
    def after_last_kernel_s(self) -> float | None:
        """Wall time of the window after the last kernel: the host's tail (encoding, closing files)."""
        end = self.last_kernel_end_s
        return None if end is None else self.window_s - end

    @property
    def utilization_to_last_kernel(self) -> float | None:
        """Busy share of the window up to the last kernel's end: how well the GPU was fed while
        there was still GPU work, apart from the tail."""
        end = self.last_kernel_end_s
        return None if not end else union_length(self.kernels, 0.0, end) / end


def union_length(intervals: list[Interval], lo: float, hi: float) -> float:
    """Total length covered by ``intervals`` clipped to [lo, hi]; overlaps count once."""
    covered, end = 0.0, lo
    for start, stop in sorted(intervals):
        start, stop = max(start, end), min(stop, hi)
        if stop > start:
            covered += stop - start
            end = stop
    return covered


def merge(intervals: list[Interval], gap: float = 0.0) -> list[Interval]:
    """Merge intervals that overlap or are closer than ``gap`` (for drawing thousands of kernels)."""
    merged: list[list[float]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def profile_run(run: Callable[[PipelineTrace], None], *, device: torch.device) -> Timeline:
    """Run ``run(trace)`` once under torch.profiler and return its timeline."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trace = PipelineTrace()
    if cuda:
        torch.cuda.synchronize(device)
    prof = profile(activities=activities)
    with _stderr_silenced():  # Kineto prints start/stop lines straight to fd 2
        prof.start()
    try:
        with record_function(_MARKER):
            t0 = time.perf_counter()
            run(trace)
            if cuda:
                torch.cuda.synchronize(device)
    finally:
        with _stderr_silenced():
            prof.stop()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return timeline_from_events(events, trace, t0, cuda=cuda)


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def timeline_from_events(events: list[dict], trace: PipelineTrace, t0: float, *, cuda: bool) -> Timeline:
    marker = next((e for e in events if e.get("name") == _MARKER and e.get("ph") == "X"), None)
    if marker is None:
        raise RuntimeError("The profiler trace has no window marker; cannot measure utilization.")
    base_us, window_s = marker["ts"], marker["dur"] / 1e6

    def rel(e: dict) -> Interval:
        return ((e["ts"] - base_us) / 1e6, (e["ts"] + e["dur"] - base_us) / 1e6)

    timeline = Timeline(window_s=window_s, cuda=cuda)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat == "kernel":
            timeline.kernels.append(rel(e))
        elif cat == "gpu_memcpy" and "DtoH" in name:
            timeline.d2h_copies.append(rel(e))
        elif cat == "gpu_memcpy" and "HtoD" in name:
            timeline.h2d_copies.append(rel(e))
        elif cat == "gpu_memset" or (cat == "gpu_memcpy" and "DtoD" in name):
            timeline.device_copies.append(rel(e))
    for lane, start, stop in trace.spans:
        timeline.host.setdefault(lane, []).append((start - t0, stop - t0))
    return timeline
