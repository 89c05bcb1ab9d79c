"""``framepipe pack``: turn a tree (or bucket prefix) of small files into tar shards and an index.

The plan (which files go in which shard) is fixed first and saved next to the output, so a
re-run after an interruption keeps every finished shard and writes only the rest. Shards are
built in parallel; each is written to a local temp file, hashed, then put into place. The index
is written last: a dataset without ``index.json`` is unfinished.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import DataError
from .._paths import work_folder
from ._shards import INDEX_NAME, DatasetIndex, ShardInfo, read_tar_members, split_key, write_shard
from ._store import LocalStore, S3Store, Store, open_destination, open_store, s3_process_pool

PLAN_NAME = "pack-plan.json"


@dataclass
class PackResult:
    url: str
    shards: int
    samples: int
    bytes: int
    reused_shards: int
    seconds: float
    left_out: list[str] = field(default_factory=list)  # source files not packed: writes in progress, dangling links


def _plan(source: Store, *, shard_bytes: int, shard_samples: int, left_out: list[str]) -> tuple[list[list[str]], bool]:
    """Group the source's files into samples and samples into shards. Returns (shards, from_tars)."""
    objects = list(source.list(left_out=left_out)) if isinstance(source, LocalStore) else list(source.list())
    if not objects:
        raise DataError(f"{source.url}: no files to pack")
    tars = [o for o in objects if o.key.endswith(".tar")]
    from_tars = bool(tars) and all(o in tars or o.key in (INDEX_NAME, PLAN_NAME) for o in objects)
    if from_tars:  # WebDataset shards (or framepipe's): keep their order, one input tar per planned unit
        left_out.extend(o.key for o in objects if o not in tars)  # a framepipe index of those tars
        objects = tars
        return [[o.key] for o in sorted(objects, key=lambda o: o.key)], True
    samples: dict[str, list[tuple[str, int]]] = {}
    for o in objects:
        samples.setdefault(split_key(o.key)[0], []).append((o.key, o.size))
    shards, current, size, count = [], [], 0, 0
    for key in sorted(samples):
        files = samples[key]
        sample_size = sum(s for _, s in files) + 512 * (len(files) + 1)  # tar headers and padding, roughly
        if current and (size + sample_size > shard_bytes or count >= shard_samples):
            shards.append(current)
            current, size, count = [], 0, 0
        current.extend(k for k, _ in sorted(files))
        size, count = size + sample_size, count + 1
    if current:
        shards.append(current)
    return shards, False


def _samples(files: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Group consecutive ``(path, data)`` files into samples ``(key, [(ext, data), ...])``."""
    for key, group in itertools.groupby(files, key=lambda file: split_key(file[0])[0]):
        yield key, [(split_key(path)[1], data) for path, data in group]


def _build_shard(source: Store, target: Store, name: str, keys: list[str], from_tars: bool) -> ShardInfo:
    if from_tars:  # each tar is read whole; its members are the files, its samples stay its own
        samples = itertools.chain.from_iterable(_samples(read_tar_members(source.read(k), k)) for k in keys)
    else:
        samples = _samples((k, source.read(k)) for k in keys)
    with work_folder("framepipe-pack-") as tmp:
        path = Path(tmp) / name
        info = write_shard(path, name, samples)
        target.upload(path, name, metadata={"sha256": info.sha256})
    return info


def pack(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    shard_bytes: int = 64 << 20,
    shard_samples: int = 100_000,
    workers: int = 8,
    endpoint_url: str | None = None,
    dest_endpoint_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Pack ``src`` (folder, ``s3://bucket/prefix``, or WebDataset ``.tar`` shards) into ``dest``."""
    start = time.monotonic()
    source = open_store(src, endpoint_url=endpoint_url)
    _check_source_and_destination(source, open_store(dest, endpoint_url=dest_endpoint_url or endpoint_url))
    left_out: list[str] = []
    plan, from_tars = _plan(source, shard_bytes=shard_bytes, shard_samples=shard_samples, left_out=left_out)
    target = open_destination(dest, endpoint_url=dest_endpoint_url or endpoint_url)  # only once there is work
    fingerprint = hashlib.sha256(json.dumps(plan).encode()).hexdigest()
    saved = None
    if target.exists(PLAN_NAME):
        saved = json.loads(target.read(PLAN_NAME))
    if saved is None or saved.get("fingerprint") != fingerprint:
        saved = {"fingerprint": fingerprint, "source": source.url, "done": {}}
    done: dict[str, dict] = saved["done"]

    def save_plan() -> None:  # what is recorded here is kept by a re-run
        target.write(PLAN_NAME, json.dumps(saved).encode())

    save_plan()
    names = [f"shard-{i:06d}.tar" for i in range(len(plan))]

    results: list[ShardInfo | None] = [None] * len(plan)
    for i, name in enumerate(names):
        if name in done and target.exists(name):
            results[i] = ShardInfo.from_json(done[name], f"{target.url}/{PLAN_NAME}")
    todo = [i for i in range(len(plan)) if results[i] is None]
    reused = len(plan) - len(todo)
    # Object-store sources cost a request per file, and boto3 spends most of that under the
    # interpreter lock: build their shards in processes. Folders and tars do fine in threads.
    processes = isinstance(source, S3Store) and len(todo) > 1
    pool = s3_process_pool(max(1, workers)) if processes else ThreadPoolExecutor(max(1, workers))
    with pool:
        futures = {pool.submit(_build_shard, source, target, names[i], plan[i], from_tars): i for i in todo}
        finished = reused
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                done[names[i]] = results[i].to_json()
                finished += 1
                if finished % 8 == 0 or finished == len(plan):
                    save_plan()
                if progress:
                    progress(finished, len(plan))
        except BaseException:
            for f in futures:
                f.cancel()
            save_plan()
            raise
    index = DatasetIndex(results, source=source.url)  # every entry is filled by now
    target.write(INDEX_NAME, index.dumps())
    return PackResult(target.url, len(index.shards), index.num_samples, index.num_bytes, reused,
                      round(time.monotonic() - start, 2), left_out=left_out)  # fmt: skip


def _check_source_and_destination(source: Store, dest: Store) -> None:
    """Refuse what cannot be packed whole: a single file, or a destination inside the source (the
    next run would pack its own output)."""
    if isinstance(source, LocalStore) and source.root.is_file():
        raise DataError(f"{source.url} is a file; pack takes a folder or an s3:// prefix of files")
    if isinstance(source, LocalStore) and isinstance(dest, LocalStore):
        src, dst = source.root.resolve(), dest.root.resolve()
        inside = dst == src or src in dst.parents
    elif isinstance(source, S3Store) and isinstance(dest, S3Store):
        same = source.bucket == dest.bucket and source.endpoint_url == dest.endpoint_url
        inside = same and (
            not source.prefix or dest.prefix == source.prefix or dest.prefix.startswith(source.prefix + "/")
        )
    else:
        inside = False
    if inside:
        raise DataError(f"the destination {dest.url} is inside the source {source.url}; choose one outside it")
