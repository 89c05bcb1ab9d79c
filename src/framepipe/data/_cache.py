"""A size-limited local cache of whole shards (the NVMe tier), shared by all processes on a node.

A shard is downloaded with one request, verified against the index's SHA-256, and renamed into
place, so a file in the cache is always complete. Readers hold a shared ``flock`` on the shard's
lock file while they read it; eviction removes the least recently used shards that nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import DataError, ShardError
from ._shards import ShardInfo, file_sha256
from ._store import LocalStore, Store


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_fetched: int = 0
    fetch_seconds: float = 0.0
    evicted: int = 0


class ShardCache:
    """Shards of one dataset under ``root``, at most ``limit_bytes`` in all (0: no limit)."""

    def __init__(self, store: Store, root: str | os.PathLike, *, limit_bytes: int = 0, verify: bool = True) -> None:
        self.store, self.limit, self.verify = store, int(limit_bytes), verify
        tag = hashlib.sha256(store.url.encode()).hexdigest()[:16]  # one folder per dataset
        self.root = Path(root) / tag
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stats": CacheStats()}

    @contextlib.contextmanager
    def open(self, shard: ShardInfo) -> Iterator[Path]:
        """The shard's local path, fetched if needed and held (not evictable) inside the block."""
        path, lock = self.root / shard.name, self._lock_file(shard.name)
        try:
            while True:
                fcntl.flock(lock, fcntl.LOCK_SH)
                if path.exists():
                    self.stats.hits += 1
                    os.utime(path)  # recency for LRU eviction
                    break
                fcntl.flock(lock, fcntl.LOCK_UN)
                self._fill(shard, lock)
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def fetch(self, shard: ShardInfo) -> None:
        """Bring a shard into the cache ahead of use (prefetching); a no-op if it is there."""
        if (self.root / shard.name).exists():
            return
        lock = self._lock_file(shard.name)
        try:
            self._fill(shard, lock)
        finally:
            os.close(lock)

    def _lock_file(self, name: str) -> int:
        return os.open(self.root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def _fill(self, shard: ShardInfo, lock: int) -> None:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one downloader per shard, across processes
        try:
            path = self.root / shard.name
            if path.exists():
                return
            if self.limit and shard.size > self.limit:
                raise DataError(f"cache limit {self.limit} bytes is smaller than {shard.name} ({shard.size} bytes)")
            self._make_room(shard.size)
            start = time.monotonic()
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{shard.name}.", suffix=".partial")
            os.close(fd)
            try:
                try:
                    size = self.store.download(shard.name, Path(tmp))
                except DataError as e:
                    raise ShardError(shard.name, f"cannot fetch from {self.store.url} ({e})") from None
                if size != shard.size:
                    raise ShardError(shard.name, f"fetched {size} bytes, index says {shard.size}")
                if self.verify and file_sha256(Path(tmp)) != shard.sha256:
                    raise ShardError(shard.name, "content does not match the index's SHA-256 (corrupt)")
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self.stats.misses += 1
            self.stats.bytes_fetched += size
            self.stats.fetch_seconds += time.monotonic() - start
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _make_room(self, incoming: int) -> None:
        if not self.limit:
            return
        files = [(st.st_mtime, st.st_size, name) for name, st in self._entries()]
        used = sum(size for _, size, _ in files)
        for _, size, name in sorted(files):  # oldest use first
            if used + incoming <= self.limit:
                return
            lock = self._lock_file(name)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue  # in use by a reader or a downloader
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.root / name)
                    used -= size
                    self.stats.evicted += 1
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
                os.close(lock)
        # Everything left is in use: go over the limit rather than stall the readers.

    def used_bytes(self) -> int:
        return sum(st.st_size for _, st in self._entries())

    def _entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """The cached shards and their ``stat``. Another thread or process may evict any of them at
        any moment, so one that vanishes between the listing and its ``stat`` is passed over."""
        for entry in os.scandir(self.root):
            if entry.name.startswith("."):
                continue  # lock files and downloads in progress
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if entry.is_file():
                yield entry.name, st


class DirectShards:
    """No cache: read shards in place from a local or network folder. Each shard's size is checked
    when it is opened; its samples are checked against their hashes as they are read (``verify``)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.stats = CacheStats()

    @contextlib.contextmanager
    def open(self, shard: ShardInfo) -> Iterator[Path]:
        path = self.store.root / shard.name
        if not path.exists():
            raise ShardError(shard.name, f"missing from {self.store.url}")
        self.stats.hits += 1
        yield path

    def fetch(self, shard: ShardInfo) -> None:
        pass
