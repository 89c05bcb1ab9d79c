"""``VideoFileSink``: frames into an MP4 (or MOV, MKV) through PyAV and FFmpeg's encoders."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from .._errors import EncoderError, OutputError
from .._optional import require
from .._paths import check_writable, remove_path, temporary_sibling
from ._base import check_frames
from ._settings import VideoSettings

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
COMMON_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libsvtav1")  # software ones, named where a codec is unknown


def video_encoder(av, codec: str) -> bool:
    """Whether PyAV's FFmpeg (the module ``av``) has a video encoder named ``codec``."""
    try:
        return av.codec.Codec(codec, "w").type == "video"
    except ValueError:  # PyAV's UnknownCodecError
        return False


def check_video_path(path: Path) -> Path:
    """``path`` if its suffix names a video container framepipe writes; ``OutputError`` otherwise."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise OutputError(f"Unsupported video file type {path.suffix!r}; use {', '.join(VIDEO_SUFFIXES)}.")
    return path


class VideoFileSink:
    """Encode frames into one video file (H.264 yuv420p by default) with PyAV.

    RGB becomes yuv420p in FFmpeg's swscale (BT.601, limited range). The file is written under a
    hidden name beside ``path`` and renamed into place by ``close``.

    Args:
        path: output file; ``.mp4``, ``.mov`` or ``.mkv``.
        settings: the encoder's settings (default ``VideoSettings()``: libx264 medium crf 18, 16 fps).
            ``segment_frames`` does not apply here (``open_sink`` picks ``SegmentedVideoSink`` for it).
    """

    writes_file = True  # False for a segment's encoder, whose packets stay in memory

    def __init__(self, path: str | os.PathLike[str], settings: VideoSettings | None = None) -> None:
        self.path = check_video_path(Path(path))
        self.settings = settings or VideoSettings()
        self._tmp: Path | None = None
        self._container = None
        self._stream = None
        self._count = 0
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        av = require("av", "video")
        check_writable(self.path)
        if height % 2 or width % 2:
            raise EncoderError(f"yuv420p needs even frame sizes, got {width}x{height}.")
        codec, options = self.settings.codec, self.settings.codec_options
        if not video_encoder(av, codec):
            some = ", ".join(c for c in COMMON_ENCODERS if video_encoder(av, c))
            raise EncoderError(f"PyAV's FFmpeg has no video encoder {codec!r}; choose one it has, such as {some}.")
        self._height, self._width = height, width
        self._tmp = temporary_sibling(self.path, clean=self.writes_file)
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except OSError as e:
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e
        level = av.logging.get_level()
        av.logging.set_level(av.logging.WARNING)  # so the encoder's own complaints reach the messages
        try:
            with av.logging.Capture() as logs:  # this thread's log lines, kept from stderr
                rate = self.settings.rate
                self._stream = self._container.add_stream(codec, rate=rate, options=options)
                self._stream.width, self._stream.height = width, height
                self._stream.pix_fmt = "yuv420p"
                self._stream.codec_context.time_base = 1 / rate
                self._stream.codec_context.open()
        except (av.FFmpegError, ValueError) as e:
            self.abort()
            raise EncoderError(f"Cannot start encoder {codec!r} with {options or 'default options'}: {e}") from e
        finally:
            av.logging.set_level(level)
        # x264 logs a value it cannot parse (x264-params=foo=bar) as a warning and goes on without it.
        refused = [message.strip() for _, _, message in logs if "Error parsing option" in message]
        if refused:
            self.abort()
            raise EncoderError(f"Encoder {codec!r} did not take its options: {' '.join(refused)}")
        unused = sorted(self._stream.codec_context.options)  # FFmpeg hands back what no one took
        if unused:
            self.abort()
            raise EncoderError(
                f"Encoder {codec!r} has no option {', '.join(map(repr, unused))}; "
                f"`ffmpeg -h encoder={codec}` lists its options."
            )

    def write(self, frames: np.ndarray) -> None:
        av = require("av", "video")
        if self._stream is None:
            raise RuntimeError("This sink is not open; call open() first.")
        check_frames(frames, self._height, self._width)
        try:
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts = self._count
                self._count += 1
                self._mux(self._stream.encode(video_frame))
        except Exception as e:  # inside PyAV: one line for the user, the cause chained
            raise EncoderError(
                f"Encoder {self.settings.codec!r} failed at frame {self._count} of {self.path}: {type(e).__name__}: {e}"
            ) from e

    def close(self) -> None:
        if self._closed or self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
            self._container.close()
            os.replace(self._tmp, self.path)
        except Exception as e:  # inside PyAV or the rename: the output stays as it was
            self.abort()
            raise EncoderError(f"Could not finish {self.path}: {type(e).__name__}: {e}") from e
        self._container = self._stream = None  # the encoder and its buffers go with the stream
        self._tmp = None
        self._closed = True

    def _mux(self, packets: list) -> None:
        self._container.mux(packets)

    def abort(self) -> None:
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(Exception):  # the file is being discarded; its close errors do not matter
                container.close()
        remove_path(self._tmp)
        self._tmp = None
        self._closed = True
