"""``framepipe feed-bench``: how fast samples reach a training step, per loading strategy.

It puts a synthetic dataset of many small files into an object store (a local SeaweedFS unless
``endpoint_url`` is given), packs it, and then feeds a simulated training step (a fixed sleep
per batch) from: one GET per file (the seed's situation), framepipe with a cold and a warm
cache, the same shards read from local disk, and WebDataset over those local shards where it is
installed. For each it reports samples/s with no step (pure feed rate) and the share of step time
spent waiting for data with the step.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .._errors import SettingsError
from ._dataset import ShardedDataset
from ._loader import Loader, gc_frozen_for_fork
from ._pack import pack
from ._shards import INDEX_NAME, DatasetIndex
from ._store import S3Store, open_store, s3_process_pool

MODES = ("per-file", "framepipe-cold", "framepipe-warm", "local-disk", "webdataset")
BUCKET = "framepipe-feedbench"


class _Pad:
    """Sample bytes as a fixed-length uint8 tensor (so batches collate and pin)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, data: bytes) -> torch.Tensor:
        out = np.zeros(self.length, dtype=np.uint8)
        view = np.frombuffer(data, dtype=np.uint8)[: self.length]
        out[: len(view)] = view
        return torch.from_numpy(out)


class _PerFile(IterableDataset):
    """The baseline: one GET per sample, straight from the object store."""

    def __init__(self, store: S3Store, keys: list[str], pad: _Pad) -> None:
        self.store, self.keys, self.pad = store, keys, pad

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for key in self.keys[worker::workers]:
            yield self.pad(self.store.read(key))


def _file_key(i: int) -> str:
    return f"raw/{i // 1000:04d}/{i:08d}.bin"


def _upload_range(store: S3Store, sizes: np.ndarray, start: int, stop: int, seed: int) -> int:
    """One process's share of the synthetic files, put with a few threads."""

    def put(i: int) -> None:
        store.write(_file_key(i), np.random.default_rng(seed + 1 + i).bytes(int(sizes[i - start])))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(start, stop)))
    return stop - start


def _make_files(store: S3Store, files: int, min_kb: int, max_kb: int, seed: int, progress) -> int:
    sizes = np.random.default_rng(seed).integers(min_kb * 1024, max_kb * 1024 + 1, size=files)
    step = 5000
    done = 0
    with s3_process_pool(max(2, os.cpu_count() or 2)) as pool:
        jobs = [pool.submit(_upload_range, store, sizes[a : a + step], a, min(a + step, files), seed)
                for a in range(0, files, step)]  # fmt: skip
        for job in as_completed(jobs):
            done += job.result()
            if progress:
                progress("upload", done, files)
    return int(sizes.sum())


def _measure(
    batches: Callable[[], object],
    *,
    steps: int | None,
    batch: int,
    step_seconds: float,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Run ``steps`` batches; with a step, the caller sleeps ``step_seconds`` after each batch.

    The first batch (starting worker processes, opening the first shards) is timed on its own;
    the steady-state figures cover the batches after it."""
    start = time.perf_counter()
    waited, n, first = 0.0, 0, 0.0
    with gc_frozen_for_fork():  # the baselines' DataLoaders fork here too
        iterator = iter(batches())
    try:
        while steps is None or n < steps:
            t = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                break
            waited += time.perf_counter() - t
            n += 1
            if on_batch is not None:
                on_batch(n)
            if n == 1:
                first = time.perf_counter() - start
                waited = 0.0
            if step_seconds:
                time.sleep(step_seconds)
    finally:
        del iterator
    steady = time.perf_counter() - start - first
    return {"batches": n, "samples": n * batch, "first_batch_seconds": round(first, 3),
            "steady_seconds": round(steady, 3), "steady_wait_seconds": round(waited, 3)}  # fmt: skip


def feed_bench(
    *,
    files: int = 200_000,
    min_kb: int = 4,
    max_kb: int = 32,
    batch: int = 256,
    step_ms: float = 50.0,
    steps: int = 200,
    feed_steps: int | None = None,
    workers: int = 4,
    modes: tuple[str, ...] = MODES,
    endpoint_url: str | None = None,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Build the synthetic dataset, then measure each mode; returns a JSON-ready report."""
    from ._seaweed import LocalS3, use_local_credentials

    for name, value, least in (("files", files, 1), ("min_kb", min_kb, 1), ("max_kb", max_kb, 1), ("batch", batch, 1),
                               ("steps", steps, 1), ("workers", workers, 0), ("feed_steps", feed_steps or 0, 0),
                               ("step_ms", step_ms, 0)):  # fmt: skip
        if not value >= least:  # NaN too
            raise SettingsError(f"feed_bench needs {name} >= {least}; got {name}={value}.")
    if min_kb > max_kb:
        raise SettingsError(f"The smallest file ({min_kb} KB) is larger than the largest ({max_kb} KB).")

    local = endpoint_url is None
    with contextlib.ExitStack() as stack:
        if local:
            use_local_credentials()
            endpoint_url = stack.enter_context(LocalS3())
        if workdir:
            root = Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="framepipe-feedbench-")))
        return _run(files, min_kb, max_kb, batch, step_ms, steps, feed_steps, workers, modes, endpoint_url, root,
                    seed, progress, local=local)  # fmt: skip


def _run(
    files, min_kb, max_kb, batch, step_ms, steps, feed_steps, workers, modes, endpoint_url, root, seed, progress, local
):
    raw = S3Store(BUCKET, "", endpoint_url=endpoint_url)
    raw.ensure_bucket()
    setup = {}
    start = time.perf_counter()
    total_bytes = _make_files(raw, files, min_kb, max_kb, seed, progress=progress)
    setup["upload_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    packed_url = f"s3://{BUCKET}/packed"
    result = pack(f"s3://{BUCKET}/raw", packed_url, endpoint_url=endpoint_url, workers=max(2, os.cpu_count() or 2),
                  progress=(lambda d, t: progress("pack", d, t)) if progress else None)  # fmt: skip
    setup["pack_seconds"] = round(time.perf_counter() - start, 1)
    packed = open_store(packed_url, endpoint_url=endpoint_url)
    index_bytes = packed.read(INDEX_NAME)
    index = DatasetIndex.loads(index_bytes, packed_url)
    local_dir = root / "local-shards"
    local_dir.mkdir(exist_ok=True)
    (local_dir / INDEX_NAME).write_bytes(index_bytes)
    for shard in index.shards:
        packed.download(shard.name, local_dir / shard.name)
    pad = _Pad(max_kb * 1024)
    keys = [_file_key(i) for i in range(files)]
    random.Random(seed).shuffle(keys)
    tensor = lambda s: pad(s["bin"])  # noqa: E731

    def framepipe_loader(url, cache_dir):
        ds = ShardedDataset(url, endpoint_url=endpoint_url, cache_dir=cache_dir, shuffle=True, seed=seed,
                            transform=tensor)  # fmt: skip
        return Loader(ds, batch_size=batch, num_workers=workers)

    def per_file():
        return DataLoader(_PerFile(raw, keys, pad), batch_size=batch, num_workers=workers)

    def webdataset_loader():
        import webdataset as wds

        urls = [str(local_dir / s.name) for s in index.shards]
        ds = wds.WebDataset(
            urls, shardshuffle=False, workersplitter=wds.split_by_worker, nodesplitter=None, empty_check=False
        )
        ds = ds.map(lambda s: pad(s["bin"])).batched(batch, collation_fn=torch.stack, partial=True)
        return DataLoader(ds, batch_size=None, num_workers=workers)

    caches = root / "caches"
    rows = []
    epoch_batches = -(-index.num_samples // batch)

    def tell(what: str, count: int | None) -> Callable[[int], None] | None:
        """A per-batch progress callback for a phase of ``count`` batches (None: one whole epoch)."""
        if progress is None:
            return None
        total = min(count, epoch_batches) if count else epoch_batches
        progress(what, 0, total)
        return lambda done: progress(what, done, total) if done % 8 == 0 or done >= total else None

    for mode in modes:
        row = {"mode": mode}
        for phase, step_s, count in (("feed", 0.0, feed_steps), ("train", step_ms / 1000, steps)):
            if mode == "per-file":
                make = per_file
            elif mode == "framepipe-cold":
                cache = caches / f"cold-{phase}"
                shutil.rmtree(cache, ignore_errors=True)
                make = lambda cache=cache: framepipe_loader(packed_url, cache)  # noqa: E731
            elif mode == "framepipe-warm":
                cache = caches / "warm"
                if not cache.exists():  # warm it: one full pass over the shards this run reads
                    _measure(lambda c=cache: framepipe_loader(packed_url, c), steps=steps, batch=batch,
                             step_seconds=0, on_batch=tell(f"{mode} warm-up", steps))  # fmt: skip
                make = lambda cache=cache: framepipe_loader(packed_url, cache)  # noqa: E731
            elif mode == "local-disk":
                make = lambda: framepipe_loader(str(local_dir), None)  # noqa: E731
            elif mode == "webdataset":
                try:
                    import webdataset  # noqa: F401
                except ImportError:
                    row["skipped"] = "webdataset is not installed"
                    break
                make = webdataset_loader
            else:
                raise ValueError(f"unknown feed-bench mode {mode!r}; choose from {', '.join(MODES)}")
            m = _measure(make, steps=count, batch=batch, step_seconds=step_s, on_batch=tell(f"{mode} {phase}", count))
            if phase == "feed":
                row["samples_per_s"] = round((m["samples"] - batch) / max(m["steady_seconds"], 1e-9), 1)
                row["first_batch_seconds"] = m["first_batch_seconds"]
                row["feed"] = m
            else:
                row["wait_share"] = round(m["steady_wait_seconds"] / max(m["steady_seconds"], 1e-9), 4)
                row["train"] = m
        rows.append(row)
    local_row = next((r for r in rows if r["mode"] == "local-disk" and "samples_per_s" in r), None)
    for r in rows:
        if local_row and "samples_per_s" in r:
            r["vs_local_disk"] = round(r["samples_per_s"] / local_row["samples_per_s"], 3)
    return {
        "settings": {"files": files, "file_kb": [min_kb, max_kb], "dataset_bytes": total_bytes,
                     "shards": result.shards, "batch": batch, "step_ms": step_ms, "steps": steps,
                     "feed_steps": feed_steps or "one epoch",
                     "workers": workers, "object_store": "SeaweedFS (local, loopback)" if local else endpoint_url,
                     "cpus": os.cpu_count(), "torch": torch.__version__},
        "setup": setup,
        "modes": rows,
    }  # fmt: skip
