"""Encode one video as independent segments, several encoders at once, joined into one file.

The plain MP4 sink has one encoder, and x264 keeps tens of frames in flight. So when the last
chunk is decoded, a second or more of encoding is still ahead. Here the frames go, as they
arrive, to a fresh encoder per segment, each on its own thread. Each segment starts with a
keyframe and references nothing outside itself, and its encoder is told it has ended as soon as
its last frame is in, so it flushes its look-ahead while the next frames are still decoding. As
each segment's encoder finishes, a joining thread muxes its packets, kept in memory, in order and
with shifted timestamps, into one file with the same frame count and order. Only the last
segment's encoding and a few packets' muxing are left once the frames are in.

Segments are either all ``segment_frames`` long, or, with ``segment_frames="tail"`` (or
``"tail:G"``, ``"tail:G:L"``), they halve (shrink by G) towards the end of the video, down to a
last one of 4 (L) frames (``tail_plan`` in ``_settings``): long segments early, while there is still decoding to
hide their encoding behind, and short ones at the end, so the encoding left after the last chunk
is short. The frames of the last chunk arrive together; with L below the chunk's 4 frames they
are encoded by several encoders at once.

This changes the bitstream (more keyframes, rate control restarted per segment), not the frames
handed to the encoder: it is opt-in (``segment_frames``), and its effect on size and decoded
error is measured in the tests and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import queue
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from .._errors import EncoderError
from .._optional import require
from .._paths import check_writable, remove_path, temporary_sibling
from ._base import check_frames
from ._settings import VideoSettings, tail_plan, tail_spec
from ._video import VideoFileSink, check_video_path

_DONE = object()


class _PacketSink(VideoFileSink):
    """A segment's encoder, set up exactly as ``VideoFileSink`` sets up its own, whose packets stay
    in memory for the joiner: no file is written, so none is reopened and probed to join it (that
    took 17 ms per segment on a 16-core host, against 1 ms to mux its packets). Its container only
    configures the stream and is never started, so it touches no disk. After ``close``, ``stream``
    and ``packets`` are the joiner's, which lets go of them (and so of the encoder) once joined."""

    packets: list
    stream = None
    writes_file = False  # its container is never started: no file, so no folder to clean before it

    def open(self, *, frames: int, height: int, width: int) -> None:
        super().open(frames=frames, height=height, width=width)
        self.packets = []

    def _mux(self, packets: list) -> None:
        self.packets.extend(packets)

    def close(self) -> None:
        if self._closed or self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        except Exception as e:  # inside PyAV: whatever it raises, the segment is lost
            self.abort()
            raise EncoderError(
                f"Encoder {self.settings.codec!r} failed to finish a segment of {self.path}: {type(e).__name__}: {e}"
            ) from e
        # Note [Segment containers stay open]: PyAV 19 copies a stream as a template only while
        # the stream's container is open, so the container stays open (unstarted, no file) until
        # the joiner has muxed the packets; the joiner then calls ``abort``, which frees the encoder.
        self.stream = self._stream
        self._closed = True


class _Segment:
    """One encoder on its own thread, fed frames (copies) through a queue."""

    def __init__(self, sink: _PacketSink, height: int, width: int, planned: int) -> None:
        self.sink, self.frames = sink, queue.Queue()
        self.planned = planned  # frames it takes before it is ended (in ``close`` if fewer come)
        self.length = 0  # frames sent so far (by the pipeline's thread)
        self.error: BaseException | None = None
        sink.open(frames=0, height=height, width=width)  # bad settings fail here, in the caller's thread
        self.thread = threading.Thread(target=self._run, name="framepipe-segment", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ended = False
        try:
            while (frame := self.frames.get()) is not _DONE:
                if self.error is None:  # set by abort(): skip the remaining work
                    self.sink.write(frame[None])
            ended = True
            if self.error is None:
                self.sink.close()
        except BaseException as e:  # reported to the pipeline's thread by SegmentedVideoSink
            self.error = e
            self.sink.abort()
            while not ended and self.frames.get() is not _DONE:  # drain up to the end marker
                pass


class SegmentedVideoSink:
    """A video file written by several encoders at once (opt-in; a different bitstream).

    Owns one thread per running segment and one joining thread; like every sink, it is driven
    from one thread of the caller's.

    Args:
        path: output ``.mp4``, ``.mov`` or ``.mkv``.
        settings: the encoder's settings, for every segment; ``settings.segment_frames`` is the
            plan: frames per segment, or ``"tail"`` (``"tail:G"``, ``"tail:G:L"``) for segments
            that shrink towards the end (``tail_plan``; needs the frame count at ``open``).
        workers: segments encoding at the same time, at most (default: the host's cores, up to
            8); the next segment waits for one to finish, which bounds host memory to the frames
            of ``workers`` segments.
    """

    def __init__(self, path: str | os.PathLike[str], settings: VideoSettings, *, workers: int | None = None) -> None:
        self.path = check_video_path(Path(path))
        if settings.segment_frames is None:
            raise ValueError("SegmentedVideoSink needs settings with segment_frames; use VideoFileSink otherwise.")
        self.settings = settings
        self._tail = tail_spec(settings.segment_frames)
        self.workers = max(1, workers or min(8, os.cpu_count() or 1))
        self._segments: list[_Segment] = []
        self._joiner: _Joiner | None = None
        self._plan: list[int] = []  # segment lengths; past its end, the last one repeats
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        check_writable(self.path)
        if self._tail is not None:
            if frames < 1:
                raise ValueError(
                    f"segment_frames={self.settings.segment_frames!r} needs the video's frame count "
                    "when the sink opens."
                )
            growth, last = self._tail
            self._plan = tail_plan(frames, last=last, growth=growth)
        else:
            self._plan = [self.settings.segment_frames]
        self._height, self._width = height, width
        self._joiner = _Joiner(temporary_sibling(self.path), self.settings.rate)
        try:
            self._start_segment()
        except BaseException:
            self.abort()
            raise

    def _start_segment(self) -> None:
        running = [s for s in self._segments if s.thread.is_alive()]
        if len(running) >= self.workers:
            running[0].thread.join()  # backpressure: the oldest running segment finishes first
        self._raise_errors()
        sink = _PacketSink(self.path, self.settings)  # writes nothing under its path
        planned = self._plan[min(len(self._segments), len(self._plan) - 1)]
        self._segments.append(_Segment(sink, self._height, self._width, planned))
        self._joiner.pending.put(self._segments[-1])

    def _raise_errors(self) -> None:
        for i, segment in enumerate(self._segments):
            if segment.error is not None:
                raise EncoderError(f"Segment {i} of {self.path} failed: {segment.error}") from segment.error
        if self._joiner is not None and self._joiner.error is not None:
            raise self._joiner.error

    def write(self, frames: np.ndarray) -> None:
        if self._joiner is None or self._closed:
            raise RuntimeError("This sink is not open; call open() first.")
        check_frames(frames, self._height, self._width)
        try:
            self._raise_errors()
            for frame in frames:
                if self._segments[-1].length == self._segments[-1].planned:
                    self._start_segment()
                segment = self._segments[-1]
                segment.frames.put(np.array(frame))  # a copy: see Note [Sinks do not keep frames]
                segment.length += 1
                if segment.length == segment.planned:  # ended now: its encoder flushes while the next frames decode
                    segment.frames.put(_DONE)
        except BaseException:
            self.abort()  # a failed encoder or join: nothing more can be written
            raise

    def close(self) -> None:
        if self._closed or self._joiner is None:
            return
        if self._segments[-1].length < self._segments[-1].planned:
            self._segments[-1].frames.put(_DONE)
        self._joiner.pending.put(_DONE)
        self._joiner.thread.join()
        try:
            self._raise_errors()
            os.replace(self._joiner.output, self.path)
        except BaseException:
            self.abort()
            raise
        self._segments = []
        self._closed = True

    def abort(self) -> None:
        for segment in self._segments:
            if segment.thread.is_alive():
                segment.error = segment.error or EncoderError("aborted")
                segment.frames.put(_DONE)
                segment.thread.join()
        if self._joiner is not None:
            self._joiner.abort()
        for segment in self._segments:
            segment.sink.abort()
        self._segments = []
        self._closed = True


class _Joiner:
    """Muxes the segments' packets, in order and with shifted timestamps, into one file on its own
    thread, each segment as soon as its encoder is done: only the last is left to join at ``close``.

    ``pending`` takes the segments in order, then ``_DONE``. ``error`` holds the first failure;
    after it, the remaining segments are taken but not joined."""

    def __init__(self, output: Path, rate: Fraction) -> None:
        self.output, self.rate = output, rate
        self.pending: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._aborted = False
        self._out = self._target = self._header = None
        self._start = 0  # the next segment's first frame
        self.thread = threading.Thread(target=self._run, name="framepipe-join", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        segment = None
        try:
            while (segment := self.pending.get()) is not _DONE:
                segment.thread.join()
                if segment.error is not None:
                    self._aborted = True  # the file cannot be whole; the sink reports the segment's error
                if self.error is None and not self._aborted:
                    self._append(segment.sink, segment.length)
        except BaseException as e:  # reported to the pipeline's thread by SegmentedVideoSink
            self.error = e
            while segment is not _DONE:  # drain up to the end marker
                segment = self.pending.get()
        finally:
            self._finish()

    def _append(self, sink: _PacketSink, length: int) -> None:
        """Mux the closed segment of ``sink`` (``length`` frames, its packets in memory) onto the
        end of the output, then let go of its encoder."""
        stream, packets, sink.stream, sink.packets = sink.stream, sink.packets, None, []
        try:
            self._mux(stream, packets)
        except EncoderError:
            raise
        except Exception as e:  # inside PyAV: one line for the user, the cause chained
            raise EncoderError(f"Could not join the encoded segments into one file: {type(e).__name__}: {e}") from e
        finally:
            sink.abort()  # Note [Segment containers stay open]
        self._start += length

    def _mux(self, stream, packets: list) -> None:
        """Mux the ``packets`` an encoder's ``stream`` made, shifted to follow what is joined so far."""
        av = require("av", "video")
        header = bytes(stream.codec_context.extradata or b"")
        if self._out is None:
            self._out = av.open(str(self.output), mode="w")
            self._target, self._header = self._out.add_stream_from_template(stream), header
            # An encoder's stream has its settings on its codec context, not yet on the stream.
            target, source = self._target.codec_context, stream.codec_context
            target.width, target.height, target.pix_fmt = source.width, source.height, source.pix_fmt
            target.time_base, target.framerate, target.extradata = source.time_base, source.framerate, header
        elif header != self._header:
            raise EncoderError("The segments' encoder headers differ, so they cannot share one stream.")
        shift = None  # the segment's start in its packets' time base, which they all share
        for packet in packets:
            if shift is None:
                shift = int(Fraction(self._start) / self.rate / packet.time_base)
            packet.pts += shift
            packet.dts += shift
            packet.stream = self._target
            self._out.mux(packet)

    def _finish(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except Exception as e:
                self.error = self.error or EncoderError(f"Could not finish the joined file: {e}")
        elif self.error is None and not self._aborted:
            self.error = EncoderError("No segment was encoded, so there is nothing to join.")

    def abort(self) -> None:
        """Stop joining (the segments' threads must have ended) and remove the partial file."""
        self._aborted = True
        if self.thread.is_alive():
            self.pending.put(_DONE)
            self.thread.join()
        remove_path(self.output)
