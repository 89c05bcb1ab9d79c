"""Where frames go: MP4 through PyAV/FFmpeg, a folder of PNGs, or raw uint8 ``.npy``.

A sink is passive and not thread-safe: one thread calls ``open``, ``write`` (any number of times,
frames in order), then ``close`` or ``abort``. Every sink writes to a temporary path beside the
output and renames it into place in ``close``, so a failed or interrupted run never leaves a
half-written file at the output path.

Note [Sinks do not keep frames]: ``write`` receives a view of a pinned host buffer that the
pipeline reuses as soon as ``write`` returns. A sink must copy or consume the frames before it
returns and never keep a reference to the array.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ._errors import EncoderError, OutputError
from ._frames import check_frame_format, frame_shape
from ._priority import call_at_lower_priority, check_nice

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")  # fmt: skip


@runtime_checkable
class Sink(Protocol):
    """Receives the uint8 frames of one video, in order (RGB; yuv420p planes where a video sink asks for them)."""

    def open(self, *, frames: int, height: int, width: int) -> None:
        """Prepare to receive ``frames`` frames of ``height`` x ``width``; fail early on bad settings."""

    def write(self, frames: np.ndarray) -> None:
        """Consume ``frames`` ([t, H, W, 3] uint8) before returning; see Note [Sinks do not keep frames]."""

    def close(self) -> None:
        """Finish the output and move it into place. A second call does nothing."""

    def abort(self) -> None:
        """Drop everything written so far; the output path is left as it was. Safe to call any time."""


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def _sibling_folder(path: Path, suffix: str) -> Path:
    """A new hidden folder beside ``path`` for its work in progress (same file system: ``os.replace`` works)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    except OSError as e:
        raise OutputError(f"Cannot write {path}: {e.strerror or e}.") from e


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"Cannot write {path}: folder {parent} does not exist.")
    if not parent.is_dir():
        raise OutputError(f"Cannot write {path}: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {path}: no permission to write in {parent}.")
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is an existing folder; give a file name.")


def _append(array: np.ndarray | None, count: int, frames: np.ndarray) -> int:
    """Copy ``frames`` into ``array`` after its first ``count`` frames; return the new count."""
    if array is None:
        raise RuntimeError("This sink is not open; call open() first.")
    _check_frames(frames, array.shape[1], array.shape[2])
    end = count + len(frames)
    if end > len(array):
        raise ValueError(f"Got more frames ({end}) than announced in open() ({len(array)}).")
    array[count:end] = frames
    return end


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_frames(frames: np.ndarray, height: int, width: int, frame_format: str = "rgb24") -> None:
    shape = frame_shape(frame_format, height, width)
    if frames.dtype != np.uint8 or frames.shape[1:] != shape:
        expected = ", ".join(map(str, ("t", *shape)))
        raise ValueError(
            f"Expected {frame_format} frames of shape [{expected}] uint8, got {frames.shape} {frames.dtype}."
        )


class VideoFileSink:
    """Encode frames into a video file (MP4 by default) with PyAV.

    Args:
        path: output file; ``.mp4``, ``.mov`` or ``.mkv``.
        fps: frames per second of the output (default 16, Wan's rate).
        codec: FFmpeg encoder name (default ``libx264``; ``libx265``, ``h264_nvenc`` where available).
        crf: constant rate factor for x264/x265 (default 18; lower is better quality, larger file).
        preset: encoder speed preset (default ``medium``).
        pix_fmt: encoded pixel format (default ``yuv420p``, playable everywhere). RGB -> YUV uses
            FFmpeg's swscale with BT.601 limited-range coefficients.
        options: extra encoder options passed to FFmpeg as strings (``{"threads": "4"}``); one the
            encoder does not know fails ``open`` with an ``EncoderError``.
        frame_format: what ``write`` receives: ``"rgb24"`` frames [t, H, W, 3] (default), or
            ``"yuv420p"`` planes [t, H * 3 / 2, W] already converted (``to_yuv420p_frames``),
            which go to a yuv420p encoder as they are.
        nice: opt-in (Linux): the encoder's own threads run this many nice levels below the thread
            that opens it, so that they give way to the decoding (``framepipe._priority``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = 16,
        codec: str = "libx264",
        crf: int | None = 18,
        preset: str | None = "medium",
        pix_fmt: str = "yuv420p",
        options: dict[str, str] | None = None,
        frame_format: str = "rgb24",
        nice: int = 0,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(f"Unsupported video file type {self.path.suffix!r}; use {', '.join(VIDEO_SUFFIXES)}.")
        if check_frame_format(frame_format) == "yuv420p" and pix_fmt != "yuv420p":
            raise EncoderError(f"yuv420p frames need a yuv420p encoder, not pix_fmt {pix_fmt!r}.")
        self.frame_format = frame_format
        self.nice = check_nice(nice)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.options = dict(options or {})
        if codec in ("libx264", "libx265"):
            if preset is not None and preset not in X264_PRESETS:
                raise EncoderError(f"Invalid preset {preset!r} for {codec}. Supported: {', '.join(X264_PRESETS)}.")
            if crf is not None and not 0 <= crf <= 51:
                raise EncoderError(f"Invalid crf {crf} for {codec}: use 0 (lossless) to 51.")
            if crf is not None:
                self.options.setdefault("crf", str(crf))
            if preset is not None:
                self.options.setdefault("preset", preset)
        elif preset is not None and codec.endswith("_nvenc"):
            self.options.setdefault("preset", preset)
        self._tmp: Path | None = None
        self._container = None
        self._stream = None
        self._count = 0
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        import av

        _check_parent(self.path)
        if self.pix_fmt in ("yuv420p", "nv12") and (height % 2 or width % 2):
            raise EncoderError(f"{self.pix_fmt} needs even frame sizes, got {width}x{height}.")
        self._height, self._width = height, width
        self._tmp = _temporary_sibling(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except OSError as e:
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e
        level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # so the encoder's own complaint reaches the message
        try:
            self._stream = self._container.add_stream(self.codec, rate=self.fps, options=self.options)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = self.pix_fmt
            self._stream.codec_context.time_base = 1 / self.fps
            call_at_lower_priority(self._stream.codec_context.open, self.nice)  # its threads start here
        except (av.FFmpegError, ValueError) as e:
            self.abort()
            raise EncoderError(
                f"Cannot start encoder {self.codec!r} with {self.options or 'default options'}: {e}"
            ) from e
        finally:
            av.logging.set_level(level)
        unused = sorted(self._stream.codec_context.options)  # FFmpeg hands back what no one took
        if unused:
            self.abort()
            raise EncoderError(
                f"Encoder {self.codec!r} has no option {', '.join(map(repr, unused))}; "
                f"`ffmpeg -h encoder={self.codec}` lists its options."
            )

    def write(self, frames: np.ndarray) -> None:
        import av

        if self._stream is None:
            raise RuntimeError("This sink is not open; call open() first.")
        _check_frames(frames, self._height, self._width, self.frame_format)
        try:
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(frame, format=self.frame_format)
                video_frame.pts = self._count
                self._count += 1
                self._mux(self._stream.encode(video_frame))
        except Exception as e:  # inside PyAV: one line for the user, the cause chained
            raise EncoderError(
                f"Encoder {self.codec!r} failed at frame {self._count} of {self.path}: {type(e).__name__}: {e}"
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
        _remove(self._tmp)
        self._tmp = None
        self._closed = True


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
        self._tmp = _temporary_sibling(self.path)
        try:
            self._tmp.mkdir()
        except OSError as e:
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e

    def write(self, frames: np.ndarray) -> None:
        from PIL import Image

        if self._tmp is None:
            raise RuntimeError("This sink is not open; call open() first.")
        _check_frames(frames, self._height, self._width)
        for frame in frames:
            target = self._tmp / f"frame_{self._count:06d}.png"
            try:
                Image.fromarray(frame, mode="RGB").save(target, compress_level=self.compress_level)
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
        _remove(self._tmp)
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
        _check_parent(self.path)
        self._tmp = _temporary_sibling(self.path)
        try:
            self._array = np.lib.format.open_memmap(
                self._tmp, mode="w+", dtype=np.uint8, shape=(frames, height, width, 3)
            )
        except OSError as e:
            self._tmp = None
            raise OutputError(f"Cannot write {self.path}: {e.strerror or e}.") from e

    def write(self, frames: np.ndarray) -> None:
        self._count = _append(self._array, self._count, frames)

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
        _remove(self._tmp)
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
        self._count = _append(self.frames, self._count, frames)

    def close(self) -> None:
        if self.frames is not None and self._count != len(self.frames):
            raise EncoderError(f"Got {self._count} frames, expected {len(self.frames)}.")

    def abort(self) -> None:
        self.frames = None


def open_sink(
    path: str | os.PathLike[str], *, segment_frames: int | str | None = None, processes: bool = False, **video_options
) -> Sink:
    """Pick a sink by the output path: a video file by suffix, ``.npy``, or a folder for PNGs.

    For video files (opt-in): ``segment_frames`` encodes independent segments in parallel and joins
    them, a different bitstream (``SegmentedVideoSink``); ``processes`` runs each encoder in a worker
    process, the same file (``ProcessVideoSink``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        if segment_frames:
            from ._segments import SegmentedVideoSink

            return SegmentedVideoSink(path, segment_frames=segment_frames, processes=processes, **video_options)
        if processes:
            from ._encoder_process import ProcessVideoSink

            return ProcessVideoSink(path, **video_options)
        return VideoFileSink(path, **video_options)
    if processes:
        raise OutputError(
            f"Encoder processes serve only video files ({', '.join(VIDEO_SUFFIXES)}), not {path}; "
            "drop --encoder-processes for .npy or PNG output."
        )
    if video_options.get("frame_format", "rgb24") != "rgb24":
        raise OutputError(
            f"yuv420p frames from the device go only to video files ({', '.join(VIDEO_SUFFIXES)}), not {path}; "
            "drop --device-yuv for .npy or PNG output."
        )
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
