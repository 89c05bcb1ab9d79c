"""Wall time and peak device memory of one call, and the wall time of chunked decodes, for the benchmark
scripts beside this file."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], *, cuda: bool = True) -> float:
    """Seconds ``fn()`` takes, from an idle GPU to its last kernel's end (``cuda=False``: on the CPU)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def mean_seconds(run: Callable[[], object], n: int = 5) -> float:
    """Mean seconds of ``run`` over ``n`` calls back to back, after one untimed call."""
    run()
    return timed(lambda: [run() for _ in range(n)]) / n


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

    def decode() -> None:
        for z in videos:
            for chunk in decode_chunks(vae, z, **how):
                to_uint8_frames(chunk)

    return timed(decode, cuda=videos[0].is_cuda)
