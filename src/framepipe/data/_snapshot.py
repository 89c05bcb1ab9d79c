"""``snapshot`` and ``restore``: freeze a dataset version in an object store and bring it up elsewhere.

A snapshot copies every object of a packed dataset (``index.json`` and its shards) into
``DEST/objects/<sha256>`` (content-addressed, so versions share unchanged shards) and writes
``DEST/manifests/<id>.json``: each object's key, size and SHA-256. The id is a hash of that list,
so a manifest never changes once written. ``restore`` copies the objects named by a manifest to
any folder or bucket, on any endpoint, verifying each by hash; objects already there with the
right hash are kept, so an interrupted restore resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .._errors import DataError
from .._paths import work_folder
from ._shards import INDEX_NAME, DatasetIndex, file_sha256, is_plain_name
from ._store import LocalStore, Store, open_destination, open_store

FORMAT = "framepipe-snapshot/1"


@dataclass
class TransferResult:
    url: str
    objects: int
    copied: int
    kept: int
    bytes: int
    seconds: float


def _copy(src: Store, src_key: str, dst: Store, dst_key: str, sha256: str, size: int, verify: bool = False) -> bool:
    """Copy one object, verified by hash. False when ``dst`` already holds it (see ``_holds``)."""
    if _holds(dst, dst_key, sha256, size, verify):
        return False
    with work_folder("framepipe-copy-") as tmp:
        path = Path(tmp) / "object"
        src.download(src_key, path)
        got = file_sha256(path)
        if got != sha256:
            raise DataError(
                f"{src.url}/{src_key}: SHA-256 {got[:16]}... does not match the manifest's {sha256[:16]}..."
            )
        dst.upload(path, dst_key, metadata={"sha256": sha256})
    return True


def _holds(store: Store, key: str, sha256: str, size: int, verify: bool) -> bool:
    """Whether ``store`` already has the object. A local file is always checked by its content;
    an object in a bucket by the SHA-256 stored with it, or, with ``verify``, by its content."""
    if isinstance(store, LocalStore):
        path = store.root / key
        return path.is_file() and path.stat().st_size == size and file_sha256(path) == sha256
    meta = store.metadata(key)
    if meta is None or meta.get("sha256") != sha256:
        return False
    if not verify:
        return True
    with work_folder("framepipe-copy-") as tmp:
        path = Path(tmp) / "object"
        return store.download(key, path) == size and file_sha256(path) == sha256


def _transfer(jobs: list[tuple], workers: int, progress: Callable[[int, int], None] | None) -> tuple[int, int]:
    """Run ``_copy`` over ``jobs`` on ``workers`` threads; (copied, kept)."""
    copied = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_copy, *job) for job in jobs]
        try:
            for n, future in enumerate(as_completed(futures), 1):
                copied += future.result()
                if progress:
                    progress(n, len(jobs))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return copied, len(jobs) - copied


def snapshot(
    dataset: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    name: str | None = None,
    endpoint_url: str | None = None,
    dest_endpoint_url: str | None = None,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Freeze the packed dataset at ``dataset`` into ``dest``; returns the manifest's URL."""
    start = time.monotonic()
    src = open_store(dataset, endpoint_url=endpoint_url)
    dst = open_destination(dest, endpoint_url=dest_endpoint_url or endpoint_url)
    index_bytes = src.read(INDEX_NAME)
    index = DatasetIndex.loads(index_bytes, f"{src.url}/{INDEX_NAME}")
    objects = [{"key": INDEX_NAME, "size": len(index_bytes), "sha256": hashlib.sha256(index_bytes).hexdigest()}]
    objects += [{"key": s.name, "size": s.size, "sha256": s.sha256} for s in index.shards]
    snapshot_id = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:20]
    manifest_key = f"manifests/{name or snapshot_id}.json"
    existing = dst.read(manifest_key) if dst.exists(manifest_key) else None
    if existing is not None and json.loads(existing).get("id") != snapshot_id:
        raise DataError(f"{dst.url}/{manifest_key} already holds another snapshot; choose another --name")
    jobs = [(src, o["key"], dst, f"objects/{o['sha256']}", o["sha256"], o["size"]) for o in objects]
    copied, kept = _transfer(jobs, workers, progress)
    if existing is None:  # written last: a manifest only exists once all its objects do
        manifest = {"format": FORMAT, "id": snapshot_id, "name": name, "source": src.url,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "samples": index.num_samples,
                    "bytes": sum(o["size"] for o in objects), "objects": objects}  # fmt: skip
        dst.write(manifest_key, json.dumps(manifest, indent=1).encode())
    return TransferResult(f"{dst.url}/{manifest_key}", len(objects), copied, kept,
                          sum(o["size"] for o in objects), round(time.monotonic() - start, 2))  # fmt: skip


def restore(
    manifest: str,
    dest: str | os.PathLike,
    *,
    endpoint_url: str | None = None,
    dest_endpoint_url: str | None = None,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
    verify: bool = False,
) -> TransferResult:
    """Bring the snapshot described by ``manifest`` (URL of its JSON) up at ``dest``, verified.

    Every object copied is checked against the manifest's SHA-256. Objects already at ``dest`` are
    kept: in a folder after hashing their content, in a bucket when their stored SHA-256 matches,
    or, with ``verify``, after downloading and hashing them too."""
    start = time.monotonic()
    folder, found, manifest_name = str(manifest).rstrip("/").rpartition("/manifests/")
    if not found or not manifest_name.endswith(".json"):
        raise DataError(f"{manifest}: not a snapshot manifest (expected .../manifests/NAME.json)")
    src = open_store(folder, endpoint_url=endpoint_url)
    body = _read_manifest(src.read(f"manifests/{manifest_name}"), str(manifest))
    dst = open_destination(dest, endpoint_url=dest_endpoint_url or endpoint_url)
    # The index goes last, so the restored dataset is only usable once every shard is in place.
    objects = sorted(body["objects"], key=lambda o: o["key"] == INDEX_NAME)
    shards = [(src, f"objects/{o['sha256']}", dst, o["key"], o["sha256"], o["size"], verify) for o in objects[:-1]]
    copied, kept = _transfer(shards, workers, progress)
    last = objects[-1]
    copied_index = _copy(src, f"objects/{last['sha256']}", dst, last["key"], last["sha256"], last["size"], verify)
    return TransferResult(dst.url, len(objects), copied + copied_index, kept + (not copied_index),
                          body["bytes"], round(time.monotonic() - start, 2))  # fmt: skip


def _read_manifest(data: bytes, where: str) -> dict:
    """A snapshot manifest, checked: every object a plain file name of the dataset (never a path
    that leaves the destination), a SHA-256 and a size, the index exactly once. ``DataError``
    naming ``where`` otherwise."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise DataError(f"{where}: not a framepipe snapshot manifest (expected JSON with format {FORMAT!r})")
    objects = body.get("objects")
    if not isinstance(objects, list) or not objects:
        raise DataError(f"{where}: the manifest lists no objects")
    keys = []
    for o in objects:
        if not (isinstance(o, dict) and isinstance(o.get("key"), str) and isinstance(o.get("sha256"), str)
                and isinstance(o.get("size"), int) and o["size"] >= 0):  # fmt: skip
            raise DataError(f"{where}: malformed object entry {str(o)[:120]}")
        if not is_plain_name(o["key"]):
            raise DataError(f"{where}: object key {o['key']!r} is not a plain file name inside the dataset; refused")
        if len(o["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in o["sha256"]):
            raise DataError(f"{where}: object {o['key']} has no valid SHA-256")
        keys.append(o["key"])
    if len(set(keys)) != len(keys) or keys.count(INDEX_NAME) != 1:
        raise DataError(f"{where}: the manifest must list each object once and {INDEX_NAME} exactly once")
    body.setdefault("bytes", sum(o["size"] for o in objects))
    return body
