"""``ShardedDataset``: stream samples from packed shards, split exactly across ranks and workers.

An epoch's order is a pure function of (seed, epoch, world size, workers, batch size): shards are
permuted, the sample sequence is cut into equal contiguous ranges, one per rank and then one per
loader worker ("consumer"), and each consumer shuffles its range in windows of ``buffer``
samples. So every sample is seen once per epoch, nothing twice, and a stopped run resumes at the
exact batch it stopped at without reading what it skips. Ranks may differ by one sample, and so
by one batch; ``equal_batches=True`` caps every rank at the fewest batches any rank has (DDP needs
the same number of steps everywhere), leaving out those few surplus samples.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .._errors import DataError, ShardError
from ._cache import DirectShards, ShardCache
from ._shards import INDEX_NAME, DatasetIndex, ShardInfo, read_samples
from ._store import LocalStore, open_store


def _default_cache_dir() -> Path:
    return Path(os.environ.get("FRAMEPIPE_CACHE", Path.home() / ".cache" / "framepipe" / "shards"))


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def split_range(lo: int, hi: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` near-equal contiguous pieces of [lo, hi)."""
    n = hi - lo
    return lo + n * part // parts, lo + n * (part + 1) // parts


def batch_order(counts: list[int]) -> Iterator[int]:
    """The consumer of each batch, in the order DataLoader hands them out: round robin over its
    workers, skipping those that have run out."""
    j = 0
    while True:
        live = [c for c, n in enumerate(counts) if j < n]
        if not live:
            return
        yield from live
        j += 1


class ShardedDataset(IterableDataset):
    """Samples from a packed dataset (folder or ``s3://`` prefix holding ``index.json``).

    Each sample is a dict ``{"__key__": key, ext: bytes, ...}``, passed through ``transform``
    if given. ``on_error="skip"`` skips a missing or corrupt shard with a warning instead of
    raising ``ShardError``, unless more than ``max_skip_fraction`` of a reader's samples would be
    lost: then it raises ``DataError``. With ``batch_size`` it yields batches: lists of samples put through ``collate``
    (default: torch's ``default_collate``). The index is checked when the dataset opens (sizes,
    offsets inside their shard, no name or key twice, shard names inside the dataset); with
    ``verify`` (default) every byte is checked too: a cached shard against its SHA-256 when it is
    fetched, a shard read in place sample by sample against the index's hashes.
    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        endpoint_url: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[dict], object] | None = None,
        batch_size: int | None = None,
        collate: Callable[[list], object] | None = None,
        drop_last: bool = False,
        equal_batches: bool = False,
        prefetch: int = 2,
        on_error: str = "raise",
        verify: bool = True,
        max_skip_fraction: float = 0.1,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if not 0 <= max_skip_fraction <= 1:
            raise DataError(f"max_skip_fraction must be between 0 and 1, not {max_skip_fraction!r}")
        self.store = open_store(url, endpoint_url=endpoint_url)
        self.index = DatasetIndex.loads(self.store.read(INDEX_NAME), f"{self.store.url}/{INDEX_NAME}")
        if isinstance(self.store, LocalStore) and cache_dir is None:
            self.shards = DirectShards(self.store)
        else:
            self.shards = ShardCache(self.store, cache_dir or _default_cache_dir(), limit_bytes=cache_limit,
                                     verify=verify)  # fmt: skip
        env_rank, env_world = _distributed()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is outside world size {self.world_size}")
        self.shuffle, self.seed, self.buffer = shuffle, seed, max(1, buffer)
        self.transform, self.batch_size, self.collate, self.drop_last = transform, batch_size, collate, drop_last
        self.equal_batches = equal_batches
        self.prefetch, self.on_error = prefetch, on_error
        # A cached shard was checked against its SHA-256 when it was fetched; a shard read in place
        # is checked sample by sample, against each member's hash in the index, as it is read.
        self.verify_samples = verify and isinstance(self.shards, DirectShards)
        self.epoch = 0
        self.resume_batches = 0  # batches of this epoch already consumed (set by Loader on resume)
        self.max_skip_fraction = max_skip_fraction
        self.skipped: list[str] = []  # shards skipped (on_error="skip"); a Loader gathers its workers' here
        self.skip_reports = None  # set by Loader: a queue on which workers report what they skipped

    # -- the epoch's plan --------------------------------------------------------------------
    def shard_order(self, epoch: int) -> list[ShardInfo]:
        shards = list(self.index.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}:shards").shuffle(shards)
        return shards

    def rank_range(self, rank: int) -> tuple[int, int]:
        return split_range(0, self.index.num_samples, self.world_size, rank)

    def consumer_range(self, workers: int, worker: int, rank: int | None = None) -> tuple[int, int]:
        lo, hi = self.rank_range(self.rank if rank is None else rank)
        return split_range(lo, hi, workers, worker)

    def num_batches(self, n: int) -> int:
        if not self.batch_size:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        """Samples this rank's ranges hold per epoch (ranks differ by at most one; with
        ``equal_batches`` a few at the end of some ranks are left out)."""
        lo, hi = self.rank_range(self.rank)
        return hi - lo

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        ranges = [self.consumer_range(workers, w) for w in range(workers)]
        counts = [self.num_batches(b - a) for a, b in ranges]
        if self.equal_batches:
            counts = self._equal_counts(counts, workers)
        # Resuming: which batches each consumer already delivered, and who is next in line.
        done = [0] * workers
        order = batch_order(counts)
        for _ in range(self.resume_batches):
            done[next(order)] += 1
        first = next(order, 0)
        consumer = (first + worker) % workers  # rotate so DataLoader's round robin continues exactly
        lo, hi = ranges[consumer]
        skip = done[consumer] * (self.batch_size or 1)
        samples = self._consumer_samples(lo, hi, skip, consumer)
        left = counts[consumer] - done[consumer]  # batches (or samples) this consumer still yields
        if not self.batch_size:
            yield from itertools.islice(samples, max(0, left))
            return
        batch = []
        for sample in samples:
            if left <= 0:
                return
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch, left = [], left - 1
        if batch and not self.drop_last and left > 0:
            yield self._collate(batch)

    def _equal_counts(self, counts: list[int], workers: int) -> list[int]:
        """Cap this rank's consumers so that every rank yields the same number of batches (for DDP,
        where one extra step on one rank hangs the others): the fewest any rank has."""
        fewest = min(
            sum(self.num_batches(b - a) for a, b in (self.consumer_range(workers, w, r) for w in range(workers)))
            for r in range(self.world_size)
        )
        capped = [0] * workers
        for consumer, _ in zip(batch_order(counts), range(fewest), strict=False):
            capped[consumer] += 1
        return capped

    def _collate(self, batch: list):
        if self.collate is not None:
            return self.collate(batch)
        return torch.utils.data.default_collate(batch)

    def _consumer_samples(self, lo: int, hi: int, skip: int, consumer: int) -> Iterator:
        """Samples [lo, hi) of the epoch's sequence, window-shuffled, minus the first ``skip``."""
        window_start = lo + (skip // self.buffer) * self.buffer if self.shuffle else lo + skip
        drop = skip % self.buffer if self.shuffle else 0
        stream = self._read_range(window_start, hi)
        if not self.shuffle:
            for sample in stream:
                yield self._apply(sample)
            return
        window_index = (window_start - lo) // self.buffer
        while True:
            window = [s for _, s in zip(range(self.buffer), stream, strict=False)]
            if not window:
                return
            random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{consumer}:{window_index}").shuffle(window)
            for sample in window[drop:]:
                yield self._apply(sample)
            drop, window_index = 0, window_index + 1

    def _apply(self, sample: dict):
        return self.transform(sample) if self.transform else sample

    def _read_range(self, lo: int, hi: int) -> Iterator[dict]:
        shards = self.shard_order(self.epoch)
        starts = [0]
        for s in shards:
            starts.append(starts[-1] + len(s))
        first = max(0, bisect.bisect_right(starts, lo) - 1)
        needed = [i for i in range(first, len(shards)) if starts[i] < hi]
        pool, ahead = ThreadPoolExecutor(max(1, self.prefetch), thread_name_prefix="framepipe-fetch"), {}
        lost = 0  # samples of [lo, hi) in shards skipped
        try:
            for n, i in enumerate(needed):
                for j in needed[n : n + self.prefetch + 1]:  # fetch this shard and the next ones
                    if j not in ahead:
                        ahead[j] = pool.submit(self.shards.fetch, shards[j])
                shard = shards[i]
                begin, end = max(lo, starts[i]) - starts[i], min(hi, starts[i + 1]) - starts[i]
                try:
                    ahead.pop(i).result()
                    with self.shards.open(shard) as path:
                        for k, sample in enumerate(read_samples(path, shard, start=begin, verify=self.verify_samples)):
                            if k >= end - begin:
                                break
                            yield sample
                except ShardError as e:
                    if self.on_error == "raise":
                        raise
                    lost += end - begin
                    if lost > self.max_skip_fraction * (hi - lo):
                        raise DataError(
                            f"{lost} of {hi - lo} samples lost in shards that failed, more than max_skip_fraction="
                            f"{self.max_skip_fraction:g} allows; the last: {e}"
                        ) from None
                    warnings.warn(f"skipping {e}", stacklevel=2)
                    self.skipped.append(shard.name)
                    if self.skip_reports is not None:
                        self.skip_reports.put(shard.name)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
