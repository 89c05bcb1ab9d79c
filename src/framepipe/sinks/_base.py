"""What every sink is: a passive receiver of one video's uint8 RGB frames, in order.

A sink is not thread-safe: one thread calls ``open``, ``write`` (any number of times, frames in
order), then ``close`` or ``abort``. The pipeline decides which thread that is; a sink owns no
thread unless it says so (``SegmentedVideoSink`` runs its encoders on threads of its own).

Note [Sinks do not keep frames]: ``write`` receives a view of a pinned host buffer that the
pipeline reuses as soon as ``write`` returns. A sink must copy or consume the frames before it
returns and never keep a reference to the array.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Sink(Protocol):
    """Receives the uint8 RGB frames of one video, in order, and writes them somewhere."""

    def open(self, *, frames: int, height: int, width: int) -> None:
        """Prepare to receive ``frames`` frames of ``height`` x ``width``; fail early on bad settings."""

    def write(self, frames: np.ndarray) -> None:
        """Consume ``frames`` ([t, H, W, 3] uint8) before returning; see Note [Sinks do not keep frames]."""

    def close(self) -> None:
        """Finish the output and move it into place. A second call does nothing."""

    def abort(self) -> None:
        """Drop everything written so far; the output path is left as it was. Safe to call any time."""


def check_frames(frames: np.ndarray, height: int, width: int) -> None:
    """Raise ValueError unless ``frames`` is [t, height, width, 3] uint8."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"Expected frames [t, {height}, {width}, 3] uint8, got {frames.shape} {frames.dtype}.")


def append_frames(array: np.ndarray | None, count: int, frames: np.ndarray) -> int:
    """Copy ``frames`` into ``array`` after its first ``count`` frames; return the new count."""
    if array is None:
        raise RuntimeError("This sink is not open; call open() first.")
    check_frames(frames, array.shape[1], array.shape[2])
    end = count + len(frames)
    if end > len(array):
        raise ValueError(f"Got more frames ({end}) than announced in open() ({len(array)}).")
    array[count:end] = frames
    return end
