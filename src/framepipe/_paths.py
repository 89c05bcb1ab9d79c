"""Outputs that appear whole or not at all: work goes to a hidden sibling, then one rename.

Every sink, and the data side's local store, writes beside its destination (so the rename stays
on one file system and is atomic) and removes what it wrote when it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ._errors import OutputError


def temporary_sibling(path: Path) -> Path:
    """A new hidden name beside ``path`` (same suffix) for its work in progress."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def sibling_folder(path: Path, suffix: str) -> Path:
    """A new hidden folder beside ``path`` for its work in progress."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    except OSError as e:
        raise OutputError(f"Cannot write {path}: {e.strerror or e}.") from e


def check_writable(path: Path) -> None:
    """Raise ``OutputError`` unless a file can be created at ``path`` (its folder exists and is writable)."""
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"Cannot write {path}: folder {parent} does not exist.")
    if not parent.is_dir():
        raise OutputError(f"Cannot write {path}: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {path}: no permission to write in {parent}.")
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is an existing folder; give a file name.")


def remove_path(path: Path | None) -> None:
    """Remove a file or a folder tree, if there is one; errors are ignored (it is being discarded)."""
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
