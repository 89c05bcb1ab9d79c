"""Wall time and peak device memory of one call, and the wall time of chunked decodes, for the benchmark
scripts beside this file."""

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


def decode_seconds(vae, videos: list[torch.Tensor], **how) -> float:
    """Seconds to decode ``videos`` one after another with ``decode_chunks(vae, z, **how)``, each chunk
    converted to uint8, from an idle device to its last kernel's end (CPU or CUDA)."""
    from framepipe import to_uint8_frames
    from framepipe._source import decode_chunks

    def sync() -> None:
        if videos[0].is_cuda:
            torch.cuda.synchronize(videos[0].device)

    sync()
    start = time.perf_counter()
    for z in videos:
        for chunk in decode_chunks(vae, z, **how):
            to_uint8_frames(chunk)
    sync()
    return time.perf_counter() - start
