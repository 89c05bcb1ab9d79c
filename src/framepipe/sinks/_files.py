"""Frames as files without an encoder: a folder of PNGs, one ``.npy`` array, or an array in memory.

Each writes under a hidden name beside its destination and renames it into place in ``close``.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from .._errors import EncoderError, OutputError
from .._optional import require
from .._paths import check_writable, remove_path, temporary_sibling
from ._base import append_frames, check_frames


class PngFolderSink:
    """Write each frame as ``frame_000000.png`` (lossless) into a new folder."""

    def __init__(self, path: str | os.PathLike[str], *, compress_level: int = 1) -> None:
        self.path = Path(path)
        self.compress_level = compress_level
        self._tmp: Path | None = None
        self._count = 0
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise OutputError(f"Cannot write {self.path}: folder {parent} does not exist.")
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise OutputError(f"Cannot write PNG frames to {self.path}: it exists and is not an empty folder.")
        self._height, self._width = height, width
        self._tmp = temporary_sibling(self.path)
        try:
            self._tmp.mkdir()
        except OSError as e:
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e

    def write(self, frames: np.ndarray) -> None:
        image = require("PIL.Image", "video")
        if self._tmp is None:
            raise RuntimeError("This sink is not open; call open() first.")
        check_frames(frames, self._height, self._width)
        for frame in frames:
            target = self._tmp / f"frame_{self._count:06d}.png"
            try:
                image.fromarray(frame, mode="RGB").save(target, compress_level=self.compress_level)
            except OSError as e:
                raise EncoderError(f"Could not write {target}: {e}") from e
            self._count += 1

    def close(self) -> None:
        if self._closed or self._tmp is None:
            return
        try:
            if self.path.exists():
                self.path.rmdir()  # checked empty in open()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"Could not move the frames into {self.path}: {e}") from e
        self._tmp = None
        self._closed = True

    def abort(self) -> None:
        remove_path(self._tmp)
        self._tmp = None
        self._closed = True


class NpySink:
    """Write all frames of one video into one ``.npy`` array of shape [N, H, W, 3], uint8."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tmp: Path | None = None
        self._array: np.memmap | None = None
        self._count = 0
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        check_writable(self.path)
        needed, free = frames * height * width * 3, shutil.disk_usage(self.path.parent).free
        if needed > free:
            raise OutputError(
                f"Cannot write {self.path}: its {needed / 2**30:.2f} GiB of frames do not fit in the "
                f"{free / 2**30:.2f} GiB free there."
            )
        self._tmp = temporary_sibling(self.path)
        try:
            self._array = np.lib.format.open_memmap(
                self._tmp, mode="w+", dtype=np.uint8, shape=(frames, height, width, 3)
            )
            _reserve(self._tmp)
        except OSError as e:
            self._array = None
            remove_path(self._tmp)
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e

    def write(self, frames: np.ndarray) -> None:
        self._count = append_frames(self._array, self._count, frames)

    def close(self) -> None:
        if self._closed or self._array is None:
            return
        expected = len(self._array)
        if self._count != expected:
            self.abort()
            raise EncoderError(f"{self.path}: got {self._count} frames, expected {expected}.")
        try:
            self._array.flush()
            self._array = None
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"Could not write {self.path}: {e}") from e
        self._tmp = None
        self._closed = True

    def abort(self) -> None:
        self._array = None
        remove_path(self._tmp)
        self._tmp = None
        self._closed = True


class ArraySink:
    """Keep all frames of one video in memory: ``sink.frames`` is [N, H, W, 3] uint8 after ``close``."""

    def __init__(self) -> None:
        self.frames: np.ndarray | None = None
        self._count = 0

    def open(self, *, frames: int, height: int, width: int) -> None:
        self.frames = np.empty((frames, height, width, 3), dtype=np.uint8)
        self._count = 0

    def write(self, frames: np.ndarray) -> None:
        self._count = append_frames(self.frames, self._count, frames)

    def close(self) -> None:
        if self.frames is not None and self._count != len(self.frames):
            raise EncoderError(f"Got {self._count} frames, expected {len(self.frames)}.")

    def abort(self) -> None:
        self.frames = None


def _reserve(path: Path) -> None:
    """Allocate ``path``'s blocks now. A memory-mapped file is sparse, so a full disk would surface
    as SIGBUS at some later write; reserving turns it into an ``OSError`` here. Where the file
    system cannot reserve (no ``posix_fallocate``, or it refuses the call), nothing is done."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
