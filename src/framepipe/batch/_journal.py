"""The batch journal: one JSON line per finished or failed video, in the output folder.

A video is recorded ``done`` only after its output is complete and renamed into place, with the
output's size and SHA-256; each line is flushed and fsynced before the next video is reported (``_jsonl``).
A re-run trusts a ``done`` line only while the output still has that size (and, with ``verify``,
that hash), so a process killed at any moment loses at most the videos in flight, which are then
decoded again. A torn last line (a kill during the append) is ignored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._errors import OutputError
from .._jsonl import append_jsonl, read_jsonl
from ..data._shards import file_sha256

JOURNAL_NAME = "framepipe-batch.jsonl"


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 hex digest of ``path``."""
    return path.stat().st_size, file_sha256(path)


class Journal:
    """``OUTDIR/framepipe-batch.jsonl``: read at start, appended to by one writer (the batch's driver)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_NAME
        try:
            lines = read_jsonl(self.path)
        except (OSError, UnicodeDecodeError) as e:
            raise OutputError(f"Cannot read the batch journal {self.path}: {e}") from e
        # the last entry per output name
        self.entries: dict[str, dict[str, Any]] = {e["name"]: e for e in lines if isinstance(e.get("name"), str)}

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
        try:
            append_jsonl(self.path, entry)
        except OSError as e:
            raise OutputError(f"Cannot write the batch journal {self.path}: {e.strerror or e}") from e
        self.entries[entry["name"]] = entry
