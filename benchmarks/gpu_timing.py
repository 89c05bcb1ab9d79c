"""Wall time and peak device memory of one call, for the benchmark scripts beside this file."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes, from an idle GPU to its last kernel's end."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def peak(fn: Callable[[], object]) -> float:
    """The most device memory (GiB) torch's allocator held during ``fn()``, its cache emptied first."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30
