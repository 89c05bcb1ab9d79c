"""The batch journal: one JSON line per finished or failed video, in the output folder.

A video is recorded ``done`` only after its output is complete and renamed into place, with the
output's size and SHA-256; each line is flushed and fsynced before the next video is reported.
A re-run trusts a ``done`` line only while the output still has that size (and, with ``verify``,
that hash), so a process killed at any moment loses at most the videos in flight, which are then
decoded again. A torn last line (a kill during the append) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .._errors import OutputError

JOURNAL_NAME = "framepipe-batch.jsonl"


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 hex digest of ``path``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


class Journal:
    """``OUTDIR/framepipe-batch.jsonl``: read at start, appended to by one writer (the batch's driver)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_NAME
        self.entries: dict[str, dict[str, Any]] = {}  # the last entry per output name
        if self.path.exists():
            try:
                data = self.path.read_bytes()
                if data and not data.endswith(b"\n"):  # a torn last line: cut it, so appends start clean
                    data = data[: data.rfind(b"\n") + 1]
                    os.truncate(self.path, len(data))
                lines = data.decode().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise OutputError(f"Cannot read the batch journal {self.path}: {e}") from e
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed run
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    self.entries[entry["name"]] = entry

    def is_done(self, name: str, output: Path, *, verify: bool = False) -> bool:
        """Whether ``name`` was recorded done and ``output`` is still what was recorded."""
        entry = self.entries.get(name)
        if not entry or entry.get("status") != "done":
            return False
        try:
            if output.stat().st_size != entry.get("bytes"):
                return False
        except OSError:
            return False
        return not verify or file_digest(output) == (entry.get("bytes"), entry.get("sha256"))

    def record(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` (it must hold ``name`` and ``status``) durably."""
        entry = {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = json.dumps(entry, sort_keys=True) + "\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"Cannot write the batch journal {self.path}: {e.strerror or e}") from e
        self.entries[entry["name"]] = entry
