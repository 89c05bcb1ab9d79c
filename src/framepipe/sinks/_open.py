"""Choosing a sink from an output path, and naming one output per video of a batch."""

from __future__ import annotations

import os
from pathlib import Path

from .._errors import OutputError
from ._base import Sink
from ._files import NpySink, PngFolderSink
from ._segments import SegmentedVideoSink
from ._settings import VideoSettings
from ._video import VIDEO_SUFFIXES, VideoFileSink


def open_sink(path: str | os.PathLike[str], settings: VideoSettings | None = None) -> Sink:
    """The sink for ``path``: a video file by its suffix (``SegmentedVideoSink`` when ``settings``
    plans segments), ``.npy``, or a folder (no suffix) of PNG frames. ``settings`` apply to video
    files only."""
    path = Path(path)
    suffix = path.suffix.lower()
    settings = settings or VideoSettings()
    if suffix in VIDEO_SUFFIXES:
        if settings.segment_frames is not None:
            return SegmentedVideoSink(path, settings)
        return VideoFileSink(path, settings)
    if suffix == ".npy":
        return NpySink(path)
    if suffix == "" or path.is_dir():
        return PngFolderSink(path)
    raise OutputError(
        f"Unsupported output type {suffix!r} ({path}). Use {', '.join(VIDEO_SUFFIXES)}, .npy, "
        "or a folder name (no suffix) for PNG frames."
    )


def batch_paths(path: str | os.PathLike[str], batch: int) -> list[Path]:
    """One output path per video: ``path`` itself for one video, ``name_0.ext``, ``name_1.ext``... for more.

    A ``{index}`` in the name is replaced by the video's index instead.
    """
    path = Path(path)
    if "{index}" in path.name:
        return [path.with_name(path.name.replace("{index}", str(i))) for i in range(batch)]
    if batch == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(batch)]
