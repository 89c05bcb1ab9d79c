"""Outputs that appear whole or not at all: work goes to a hidden sibling, then one rename.

Every sink, and the data side's local store, writes beside its destination (so the rename stays
on one file system and is atomic) and removes what it wrote when it fails. A process killed
outright (``kill -9``, a node lost) cannot clean up, so each work-in-progress name carries its
host and process id, and the next run that writes the same destination, or opens a work folder
of the same kind, removes what a dead process of this host left.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ._errors import OutputError

_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-")


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _owner() -> str:
    """``host-pid-`` of this process (as it is now: a forked child has its own), as it appears in
    work-in-progress names."""
    return f"{_HOST}-{os.getpid()}-"


def _left_by_the_dead(name: str) -> bool:
    """Whether ``name`` (after its known prefix) belongs to a process of this host that is gone."""
    match = _OWNER.match(name)
    if match is None or match["host"] != _HOST:
        return False  # another host's: its process may be alive
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal
        return False
    return False


def remove_stale(folder: Path, prefix: str) -> int:
    """Remove the entries of ``folder`` named ``prefix`` + a dead process's owner tag; return how many."""
    return _remove_left_by_the_dead(lambda: folder.glob(glob.escape(prefix) + "*"), lambda name: name[len(prefix) :])


def remove_stale_work(folder: Path) -> int:
    """Remove every hidden work in progress (``temporary_sibling`` names) in ``folder`` that a dead
    process of this host left, whatever its destination; return how many."""
    owner = re.compile(rf"\.(?={re.escape(_HOST)}-\d+-[0-9a-f]{{8}}\.partial(\.|$))")

    def tagged(name: str) -> str | None:  # the name from its owner tag on
        match = owner.search(name) if is_work_in_progress(name) else None
        return None if match is None else name[match.end() :]

    return _remove_left_by_the_dead(folder.iterdir, tagged)


def _remove_left_by_the_dead(entries, tagged) -> int:
    """Remove each of ``entries()`` whose ``tagged(name)`` (the name from its owner tag on) says a
    dead process of this host left it; how many. A folder that cannot be listed removes nothing."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in entries():
            tag = tagged(entry.name)
            if tag is not None and _left_by_the_dead(tag):
                remove_path(entry)
                removed += 1
    return removed


def remove_own_work(folder: Path) -> int:
    """Remove this process's work in progress (hidden ``temporary_sibling`` names) in ``folder``;
    for the last-resort exit after an interrupt (see ``_watchdog``). Returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if is_work_in_progress(entry.name) and f".{_owner()}" in entry.name:
                remove_path(entry)
                removed += 1
    return removed


def is_work_in_progress(name: str) -> bool:
    """Whether ``name`` is a hidden work-in-progress name that ``temporary_sibling`` makes."""
    return name.startswith(".") and ".partial" in name and bool(re.search(r"\.partial(\.|$)", name))


def temporary_sibling(path: Path, *, clean: bool = True) -> Path:
    """A new hidden name beside ``path`` (same suffix) for its work in progress. With ``clean``,
    work in progress that a dead process left for the same ``path`` is removed first (a listing of
    the folder; a caller that never writes the name passes False)."""
    if clean:
        remove_stale(path.parent, f".{path.name}.")
    return path.with_name(f".{path.name}.{_owner()}{uuid.uuid4().hex[:8]}.partial{path.suffix}")


@contextlib.contextmanager
def work_folder(prefix: str) -> Iterator[Path]:
    """A new folder in the system's temporary directory, removed on exit; folders of the same
    ``prefix`` left by dead processes are removed first."""
    root = Path(tempfile.gettempdir())
    remove_stale(root, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix + _owner(), dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def removed_if_unused(folder: Path) -> Iterator[None]:
    """Remove ``folder`` again if it did not exist before, the work inside fails, and it is empty:
    a run that wrote nothing leaves no folder behind."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


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
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
