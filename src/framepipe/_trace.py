"""Stage markers: NVTX ranges for Nsight, and optionally a host-side record of each stage's span.

``stage("write", i, trace)`` wraps one stage of one chunk. It always pushes an NVTX range named
``"write i"`` once this process uses CUDA, and when a ``PipelineTrace`` is given it also records the span
on the ``perf_counter`` clock. The bench needs that because the profiler does not see the writer
thread's ranges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class PipelineTrace:
    """What the host did during one run: (lane, start_s, end_s) spans and bytes copied device-to-host."""

    spans: list[tuple[str, float, float]] = field(default_factory=list)
    d2h_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_span(self, lane: str, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((lane, start, end))

    def add_d2h(self, nbytes: int) -> None:
        with self._lock:
            self.d2h_bytes += nbytes


@contextmanager
def stage(lane: str, index: int | str, trace: PipelineTrace | None = None) -> Iterator[None]:
    """Mark one pipeline stage of chunk ``index`` (NVTX range ``"{lane} {index}"``, trace span).

    ``index`` may also name a step that belongs to no chunk, such as ``"flush"``.
    """
    # is_initialized, not is_available: asking the driver at import would keep the importing process
    # from forking children that use CUDA (PyTorch refuses them)
    nvtx = torch.cuda.is_initialized()
    if nvtx:
        torch.cuda.nvtx.range_push(f"{lane} {index}")
    start = time.perf_counter() if trace is not None else 0.0
    try:
        yield
    finally:
        if trace is not None:
            trace.add_span(lane, start, time.perf_counter())
        if nvtx:
            torch.cuda.nvtx.range_pop()
