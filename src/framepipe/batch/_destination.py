"""Where a batch's videos go, and where its journal is kept.

A local folder: each MP4 is written in place (under a hidden name, then renamed) and the journal is
``framepipe-batch.jsonl`` beside the videos. An object-store prefix (``s3://bucket/prefix``): each
MP4 is encoded into a local work folder, then uploaded whole with its SHA-256 as metadata, and the
journal is one small object per video, ``framepipe-batch/<name>.json``, written after its video.
Latents given as ``s3://`` URLs are downloaded into the work folder first.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .._paths import remove_stale_work
from ..data._store import S3Store, download_url, open_destination
from ._journal import Journal, file_digest

JOURNAL_PREFIX = "framepipe-batch/"


class LocalDestination:
    """A folder on a file system every worker sees."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = str(folder)

    def target(self, name: str, work: Path) -> Path:
        """Where a worker's decode writes the video ``name``."""
        return self.folder / f"{name}.mp4"

    def publish(self, name: str, written: Path) -> tuple[str, int, str]:
        """Make the written video the destination's; (where it is, bytes, SHA-256)."""
        size, sha = file_digest(written)
        return str(written), size, sha

    def journal(self) -> Journal:
        return Journal(self.folder)

    def clean(self) -> None:
        """Remove the partial videos that dead processes of this host left (a worker killed, a node
        lost), also of videos that are done by now and will not be written again."""
        remove_stale_work(self.folder)


class ObjectDestination:
    """A prefix in an object store (S3 or compatible)."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.url = store.url

    def target(self, name: str, work: Path) -> Path:
        return work / f"{name}.mp4"

    def publish(self, name: str, written: Path) -> tuple[str, int, str]:
        size, sha = file_digest(written)
        self.store.upload(written, f"{name}.mp4", metadata={"sha256": sha})
        written.unlink(missing_ok=True)
        return f"{self.url}/{name}.mp4", size, sha

    def journal(self) -> ObjectJournal:
        return ObjectJournal(self.store)

    def clean(self) -> None:
        """Nothing here: videos are encoded in work folders, which clean up after the dead themselves."""


class ObjectJournal:
    """The journal as one object per video: read by listing, written after the video's upload."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.path = f"{store.url}/{JOURNAL_PREFIX}"
        self.sizes = {info.key: info.size for info in store.list()}
        self.entries: dict[str, dict[str, Any]] = {}
        for key in self.sizes:
            if key.startswith(JOURNAL_PREFIX) and key.endswith(".json"):
                try:
                    entry = json.loads(store.read(key))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    self.entries[entry["name"]] = entry

    def is_done(self, name: str, output: Path | None = None, *, verify: bool = False) -> bool:
        entry = self.entries.get(name)
        key = f"{name}.mp4"
        if not entry or entry.get("status") != "done" or self.sizes.get(key) != entry.get("bytes"):
            return False
        if not verify:
            return True
        with tempfile.TemporaryDirectory(prefix="framepipe-verify-") as tmp:
            self.store.download(key, Path(tmp) / key)
            return file_digest(Path(tmp) / key) == (entry.get("bytes"), entry.get("sha256"))

    def record(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.store.write(f"{JOURNAL_PREFIX}{entry['name']}.json", json.dumps(entry, sort_keys=True).encode())
        self.entries[entry["name"]] = entry
        if entry.get("status") == "done":
            self.sizes[f"{entry['name']}.mp4"] = entry["bytes"]


def open_batch_destination(url: str | Path, *, endpoint_url: str | None = None):
    """A ``LocalDestination`` for a folder (created if missing) or an ``ObjectDestination`` for
    ``s3://bucket/prefix`` (the bucket created if missing); the data side's checks and messages."""
    store = open_destination(str(url), endpoint_url=endpoint_url)
    return ObjectDestination(store) if isinstance(store, S3Store) else LocalDestination(store.root)


def fetch_latents(url: str, work: Path, *, endpoint_url: str | None = None) -> Path:
    """Download ``s3://bucket/key`` latents into ``work``; a local path is returned as it is."""
    if not url.startswith("s3://"):
        return Path(url)
    path = work / f"{uuid.uuid4().hex[:8]}-{url.rpartition('/')[2]}"  # unique: a worker holds several at once
    download_url(url, path, endpoint_url=endpoint_url)
    return path
