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
last one of 4 (L) frames (``tail_plan``): long segments early, while there is still decoding to
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

from ._errors import EncoderError, OutputError
from ._priority import lower_thread_priority
from ._sinks import (
    VIDEO_SUFFIXES,
    Sink,
    VideoFileSink,
    _check_frames,
    _check_parent,
    _remove,
    _sibling_folder,
    _temporary_sibling,
)

_DONE = object()
TAIL = "tail"
SPELLING = "a number of frames >= 1, 'tail', 'tail:G' or 'tail:G:L' (1 < G <= 16, 1 <= L <= 64)"


def tail_plan(frames: int, last: int = 4, growth: float = 2.0) -> list[int]:
    """Segment lengths for ``frames`` frames that grow by ``growth`` away from the end:
    ..., last * growth**2, last * growth, last (rounded).

    With x264's look-ahead, a segment's encoding is mostly still ahead when its last frame arrives,
    and it must finish while the segments after it are decoded. So a segment may be about as long
    as those after it, times its encoder's speed over the decoder's: ``growth`` = 1 + that ratio
    (2: as fast as the decoder; lower when the decoder is faster or the encoders share few cores).
    Frames left over at the start form a first segment of their own (joined to the next if shorter
    than ``last``: every segment costs a keyframe)."""
    if frames < 1 or last < 1 or not growth > 1:
        raise ValueError(f"tail_plan needs frames >= 1, last >= 1 and growth > 1, got {frames}, {last} and {growth}.")
    lengths, left, k = [], frames, 0
    while left > 0:
        length = max(lengths[-1] if lengths else last, round(last * growth**k))
        lengths.append(min(length, left))
        left -= lengths[-1]
        k += 1
    lengths.reverse()
    if len(lengths) > 1 and lengths[0] < last:
        first = lengths.pop(0)
        lengths[0] += first
    return lengths


def parse_segment_frames(text: str) -> int | str:
    """``segment_frames`` from its command-line spelling: ``N``, ``tail``, ``tail:G`` or ``tail:G:L``;
    ValueError otherwise."""
    value: int | str = int(text) if text.strip().isdigit() else text
    tail_spec(value)
    return value


def tail_spec(segment_frames: int | str) -> tuple[float, int] | None:
    """``(growth, last)`` of a ``"tail"``, ``"tail:G"`` or ``"tail:G:L"`` segment plan (G defaults
    to 2, L to 4); None for fixed-length segments.

    Raises ValueError for anything that is neither a whole number >= 1 nor such a plan."""
    if isinstance(segment_frames, str) and segment_frames.split(":")[0] == TAIL:
        values = segment_frames.split(":")[1:]
        try:
            growth = float(values[0]) if values else 2.0
            last = int(values[1]) if len(values) > 1 else 4
        except ValueError:
            growth, last = 0.0, 0
        if len(values) <= 2 and 1 < growth <= 16 and 1 <= last <= 64:
            return growth, last
    elif isinstance(segment_frames, int) and not isinstance(segment_frames, bool) and segment_frames >= 1:
        return None
    raise ValueError(f"segment_frames must be {SPELLING}, got {segment_frames!r}.")


class _PacketSink(VideoFileSink):
    """A segment's encoder, set up exactly as ``VideoFileSink`` sets up its own, whose packets stay
    in memory for the joiner: no file is written, so none is reopened and probed to join it (that
    took 17 ms per segment on a 16-core host, against 1 ms to mux its packets). Its container only
    configures the stream and is never started, so it touches no disk. After ``close``, ``stream``
    and ``packets`` are the joiner's, which lets go of them (and so of the encoder) once joined."""

    packets: list
    stream = None

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
                f"Encoder {self.codec!r} failed to finish a segment of {self.path}: {type(e).__name__}: {e}"
            ) from e
        # Note [Segment containers stay open]: PyAV 19 copies a stream as a template only while
        # the stream's container is open, so the container stays open (unstarted, no file) until
        # the joiner has muxed the packets; the joiner then calls ``abort``, which frees the encoder.
        self.stream = self._stream
        self._closed = True


class _Segment:
    """One encoder on its own thread, fed frames (copies) through a queue."""

    def __init__(self, sink: Sink, height: int, width: int, planned: int) -> None:
        self.sink, self.frames = sink, queue.Queue()
        self.planned = planned  # frames it takes before it is ended (in ``close`` if fewer come)
        self.length = 0  # frames sent so far (by the pipeline's thread)
        self.error: BaseException | None = None
        sink.open(frames=0, height=height, width=width)  # bad settings fail here, in the caller's thread
        self.thread = threading.Thread(target=self._run, name="framepipe-segment", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lower_thread_priority(self.sink.nice)  # as low as the encoder's own threads
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

    Args:
        path: output ``.mp4``, ``.mov`` or ``.mkv``.
        segment_frames: frames per independently encoded segment, or ``"tail"`` for segments that
            halve in length towards the end (``tail_plan``; needs the frame count at ``open``), or
            ``"tail:G"`` for segments that shrink by a factor G (> 1) towards the end instead of 2,
            or ``"tail:G:L"``, down to a last segment of L frames instead of 4.
        workers: segments encoding at the same time, at most; the next segment waits for one to
            finish (this bounds host memory to the frames of ``workers`` segments).
        processes: opt-in: each segment's encoder runs in a worker process (``ProcessVideoSink``),
            which writes the segment to a file in a hidden folder beside ``path`` for the joiner.
        fps, codec, crf, preset, pix_fmt, options, frame_format, nice: as for ``VideoFileSink``; every
            segment uses them (with ``nice``, the segments' threads are lowered too).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_frames: int | str = 20,
        workers: int | None = None,
        processes: bool = False,
        **video_options,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(f"Unsupported video file type {self.path.suffix!r}; use {', '.join(VIDEO_SUFFIXES)}.")
        self._tail = tail_spec(segment_frames)
        self.segment_frames = segment_frames
        self.workers = max(1, workers or min(8, os.cpu_count() or 1))
        self.video_options = video_options
        if processes:
            from ._encoder_process import SPARES, ProcessVideoSink

            self._sink_type, self._spares = ProcessVideoSink, SPARES
        else:
            self._sink_type, self._spares = _PacketSink, None
        probe = VideoFileSink(self.path, **video_options)  # validates the settings now
        self.fps, self.frame_format = probe.fps, probe.frame_format
        self._dir: Path | None = None
        self._segments: list[_Segment] = []
        self._joiner: _Joiner | None = None
        self._plan: list[int] = []  # segment lengths; past its end, the last one repeats
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        _check_parent(self.path)
        if self._tail is not None:
            if frames < 1:
                raise ValueError(
                    f"segment_frames={self.segment_frames!r} needs the video's frame count when the sink opens."
                )
            growth, last = self._tail
            self._plan = tail_plan(frames, last=last, growth=growth)
        else:
            self._plan = [self.segment_frames]
        if self._spares is not None:  # one started worker for each segment that may encode at once
            count = len(self._plan) if self._tail is not None else -(-max(frames, 1) // self.segment_frames)
            self._spares.reserve(min(self.workers, count))
        self._height, self._width = height, width
        self._dir = _sibling_folder(self.path, ".segments") if self._spares is not None else None
        self._joiner = _Joiner(_temporary_sibling(self.path), self.fps)
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
        # a worker process writes its segment to a file; a packet sink writes nothing under its path
        path = self.path if self._dir is None else self._dir / f"{len(self._segments):05d}{self.path.suffix}"
        sink = self._sink_type(path, **self.video_options)
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
        _check_frames(frames, self._height, self._width, self.frame_format)
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
        _remove(self._dir)
        self._dir = None
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
        _remove(self._dir)
        self._dir = None
        self._closed = True


class _Joiner:
    """Muxes the segments' packets, in order and with shifted timestamps, into one file on its own
    thread, each segment as soon as its encoder is done: only the last is left to join at ``close``.

    ``pending`` takes the segments in order, then ``_DONE``. ``error`` holds the first failure;
    after it, the remaining segments are taken but not joined."""

    def __init__(self, output: Path, fps: Fraction) -> None:
        self.output, self.fps = output, fps
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

    def _append(self, sink: Sink, length: int) -> None:
        """Mux the closed segment of ``sink`` (``length`` frames) onto the end of the output: its
        packets from memory, or (a worker process's segment) from its file, which is then removed."""
        import av

        try:
            if isinstance(sink, _PacketSink):
                stream, packets, sink.stream, sink.packets = sink.stream, sink.packets, None, []
                try:
                    self._mux(stream, packets, encoded=True)
                finally:
                    sink.abort()  # Note [Segment containers stay open]
            else:
                with av.open(str(sink.path)) as container:
                    stream = container.streams.video[0]
                    self._mux(stream, container.demux(stream), encoded=False)
                sink.path.unlink(missing_ok=True)
        except EncoderError:
            raise
        except Exception as e:  # inside PyAV: one line for the user, the cause chained
            raise EncoderError(f"Could not join the encoded segments into one file: {type(e).__name__}: {e}") from e
        self._start += length

    def _mux(self, stream, packets, *, encoded: bool) -> None:
        """Mux ``packets`` of ``stream`` (an encoder's stream if ``encoded``, else a demuxed one)."""
        import av

        header = bytes(stream.codec_context.extradata or b"")
        if self._out is None:
            self._out = av.open(str(self.output), mode="w")
            self._target, self._header = self._out.add_stream_from_template(stream), header
            if encoded:  # an encoder's stream has its settings on its codec context, not yet on the stream
                target, source = self._target.codec_context, stream.codec_context
                target.width, target.height, target.pix_fmt = source.width, source.height, source.pix_fmt
                target.time_base, target.framerate, target.extradata = source.time_base, source.framerate, header
        elif header != self._header:
            raise EncoderError("The segments' encoder headers differ, so they cannot share one stream.")
        shift = None  # the segment's start in its packets' time base, which they all share
        for packet in packets:
            if packet.dts is None:  # a demuxer's end-of-stream marker
                continue
            if shift is None:
                shift = int(Fraction(self._start) / self.fps / packet.time_base)
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
        _remove(self.output)
