"""One device decodes a feed of videos back to back: the service's jobs, a batch worker's videos.

Videos of one frame size follow each other through one ``run_async`` stream, so the GPU decodes
the next video while the last one's encoder drains its look-ahead. The next video is taken and
opened (its latents read and on the device, its encoder started) in a background thread while the
one before it decodes its last ``OPEN_AHEAD_CHUNKS`` chunks, so the GPU does not wait for that
either; taken no earlier, so that workers sharing a queue still share it out evenly. When a stream breaks (a video
decodes NaN, a disk fills up), the videos it had not finished run again, each alone, so only the
one at fault fails. Each video's GPU account runs from its first kernel's launch (or the end of
the video before it, whichever is later) to its last chunk's arrival on the host: back to back,
no overlap.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ._accounting import GpuMeter, JobAccount, Mark
from ._errors import GPU_OUT_OF_MEMORY, DeviceError, FramepipeError
from ._graphs import StepGraphs, graphable
from ._latents import check_one_video
from ._pipeline import Job, on_device, run_async
from ._postprocess import to_uint8_frames
from ._source import ChunkSource, VideoGeometry, check_fits, decode_chunks, geometry
from .sinks import Sink, VideoSettings, open_sink

OPEN_AHEAD_CHUNKS = 4  # the next video is taken and opened while this many chunks are left to decode


@dataclass
class VideoOrder:
    """One video as its feed hands it over: latents ready for the VAE (``prepare_latents``: on its
    device, de-normalized), the file to write, and the encoder's settings."""

    latents: torch.Tensor
    output: Path
    video: VideoSettings


@dataclass(frozen=True)
class DecodedVideo:
    """A finished video: its frames and fps, its GPU account, the seconds it held the device, and
    when (``time.time()``) its last chunk reached the host."""

    frames: int
    fps: float
    account: JobAccount
    busy_seconds: float
    decoded_at: float


class VideoFeed(Protocol):
    """Where a device worker's videos come from and where it reports them."""

    def take(self) -> Any | None:
        """The next item, waiting for one; None: there are no more."""

    def open(self, item: Any) -> VideoOrder:
        """The video for ``item``; raise a ``FramepipeError`` for what is wrong with it."""

    def started(self, item: Any) -> None:
        """``item``'s first kernels are being launched."""

    def done(self, item: Any, video: DecodedVideo) -> None:
        """``item``'s file is complete and in place (called from its writer thread)."""

    def failed(self, item: Any, message: str, *, internal: bool) -> None:
        """``item`` failed: a one-line ``message``; ``internal``: a bug (its traceback was printed)."""


def failure_message(error: BaseException) -> tuple[str, bool]:
    """The one line a failed video is reported with, and whether it was an internal bug (whose
    traceback then goes to stderr)."""
    if isinstance(error, torch.OutOfMemoryError):
        error = DeviceError(GPU_OUT_OF_MEMORY)
    if isinstance(error, FramepipeError):
        return str(error), False
    traceback.print_exception(error, file=sys.stderr)
    return f"internal error ({type(error).__name__}: {error})", True


@dataclass
class _Opened:
    """An item whose video is ready to stream: latents on the device, sink open."""

    item: Any
    latents: torch.Tensor
    geometry: VideoGeometry
    sink: Sink
    fps: float


class DeviceWorker:
    """Decodes ``feed``'s videos on ``vae``'s device until the feed runs dry; ``run()`` blocks."""

    def __init__(self, feed: VideoFeed, vae: Any, *, decoder: str = "framepipe", slots: int = 2,
                 chunk_source: ChunkSource | None = None) -> None:  # fmt: skip
        self.feed, self.vae, self.decoder, self.slots = feed, vae, decoder, slots
        self.chunk_source = decode_chunks if chunk_source is None else chunk_source
        self.device = next(vae.parameters()).device
        self.meter = GpuMeter(self.device)
        self.lock = threading.Lock()
        self.last_end: Mark | None = None  # where the last video's account ended
        self.ahead = _Ahead(self._take_and_open)
        self.warmed: set[tuple[int, int]] = set()  # latent frame sizes decoded once already
        self.graphs = StepGraphs()  # the decoder's CUDA graphs, kept from video to video

    def run(self) -> None:
        """One stream per run of videos of one frame size, until the feed gives None."""
        carry: _Opened | None = None
        try:
            with on_device(self.device):
                self.warm_up()
                while True:
                    first = carry if carry is not None else self.ahead.next()
                    if first is None:
                        return
                    self.warm_up(tuple(first.latents.shape[-2:]), graphs=True)
                    stream = _Stream(self, first, alone=False)
                    stream.run()
                    for item in stream.unfinished:  # a broken stream: each of its videos again, alone
                        if (opened := self.open(item)) is not None:
                            _Stream(self, opened, alone=True).run()
                    if stream.stopped:
                        return
                    carry = stream.carry
        finally:
            self.ahead.close()
            self.meter.close()
            self.graphs.close()

    def warm_up(self, size: tuple[int, int] = (8, 8), *, graphs: bool = False) -> None:
        """Decode two latent frames of ``size`` once, so that no video waits for what a process does on
        its first decode (CUDA libraries loaded) and of each frame size (the fused kernels compiled,
        each shape's convolution and kernel checked): about a second on an H200 at 480x832. With
        ``graphs``, twice: the second time captures the decoder's CUDA graphs for that size."""
        if size in self.warmed:
            return
        self.warmed.add(size)
        param = next(self.vae.parameters())
        latents = torch.zeros(1, self.vae.config.z_dim, 2, *size, device=param.device, dtype=param.dtype)
        kept = self.graphs if graphs and graphable(latents, self.decoder) else None
        try:
            for _ in range(1 if kept is None else 2):
                for chunk in decode_chunks(self.vae, latents, decoder=self.decoder, graphs=kept):
                    to_uint8_frames(chunk)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as e:  # the first video meets it again and fails with it, on its own
            warnings.warn(f"warming up the decoder on {self.device} failed ({type(e).__name__}: {e})", stacklevel=2)

    def _take_and_open(self) -> _Opened | None:
        """The feed's next item that opens; None once the feed is dry (runs in the look-ahead thread)."""
        with on_device(self.device):
            while (item := self.feed.take()) is not None:
                if (opened := self.open(item)) is not None:
                    return opened
        return None

    def open(self, item: Any) -> _Opened | None:
        """``item``'s video with its sink open, or None when it failed (and was reported)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # said once by the caller, not once per video
                order = self.feed.open(item)
            check_one_video(order.latents)
            g = geometry(self.vae, tuple(order.latents.shape))
            sink = open_sink(order.output, order.video)
            sink.open(frames=g.frames, height=g.height, width=g.width)
        except Exception as e:
            self.fail(item, e)
            return None
        return _Opened(item, order.latents, g, sink, order.video.fps)

    def fail(self, item: Any, error: BaseException) -> None:
        message, internal = failure_message(error)
        self.feed.failed(item, message, internal=internal)


class FeedFailed(Exception):
    """The feed itself raised (a bug): the worker stops, with the feed's traceback as the cause."""


class _Ahead:
    """Runs ``fetch`` in a background thread, one call ahead: ``request()`` starts the next call,
    ``next()`` waits for its result (starting it first if needed)."""

    def __init__(self, fetch) -> None:
        self.fetch = fetch
        self.requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self.pending = False
        self.thread = threading.Thread(target=self._run, name="framepipe-open-next", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.requests.get():
            try:
                self.results.put((self.fetch(), None))
            except BaseException as e:  # a bug in the feed: handed to the caller of next()
                self.results.put((None, e))

    def request(self) -> None:
        if not self.pending:
            self.pending = True
            self.requests.put(True)

    def next(self) -> Any:
        self.request()
        value, error = self.results.get()
        self.pending = False
        if error is not None:
            raise FeedFailed(f"the feed failed ({type(error).__name__}: {error})") from error
        return value

    def close(self, wait_s: float = 10.0) -> None:
        """Stop the thread; a video it opened for no one is aborted (if it comes within ``wait_s``)."""
        self.requests.put(False)
        if self.pending:
            try:
                value, _ = self.results.get(timeout=wait_s)
            except queue.Empty:  # still waiting in the feed's take(): a daemon thread, left to the feed
                return
            if isinstance(value, _Opened):
                value.sink.abort()
        self.thread.join()


@dataclass
class _Running:
    """A video inside a stream: its sink, and the marks its account is taken between."""

    opened: _Opened
    written: int = 0
    start: Mark | None = None
    end: Mark | None = None


class _ClosingSink:
    """A sink that calls ``closed()`` once its output is in place (from the writer thread)."""

    def __init__(self, sink: Sink, closed) -> None:
        self.sink, self.closed = sink, closed

    def open(self, *, frames: int, height: int, width: int) -> None:
        self.sink.open(frames=frames, height=height, width=width)

    def write(self, frames) -> None:
        self.sink.write(frames)

    def close(self) -> None:
        self.sink.close()
        self.closed()

    def abort(self) -> None:
        self.sink.abort()


class _Stream:
    """One ``run_async`` over videos of ``first``'s frame size as the feed gives them (``alone``: just ``first``)."""

    def __init__(self, worker: DeviceWorker, first: _Opened, *, alone: bool) -> None:
        self.worker, self.first, self.alone = worker, first, alone
        self.running: dict[int, _Running] = {}  # by id(opened)
        self.sources: list[Iterator[torch.Tensor]] = []
        self.carry: _Opened | None = None  # a video of another frame size: the next stream's first
        self.stopped = False  # the feed ran dry
        self.unfinished: list[Any] = []  # the items a broken stream leaves, to run again alone

    def run(self) -> None:
        try:
            check_fits(self.worker.vae, self.first.geometry)  # the first video sizes the stream's ring
        except FramepipeError as e:
            self.first.sink.abort()
            self.worker.fail(self.first.item, e)
            return
        try:
            run_async(self._jobs(), device=self.worker.device, geometry=self.first.geometry, slots=self.worker.slots)
        except BaseException as e:
            for running in list(self.running.values()):
                running.opened.sink.abort()
            if isinstance(e, FeedFailed) or not isinstance(e, Exception):  # a bug, Ctrl-C, exit: no retry
                raise
            if self.alone:
                for running in list(self.running.values()):
                    self.worker.fail(running.opened.item, e)
            else:
                self.unfinished = [r.opened.item for r in self.running.values()]
        finally:
            for chunks in self.sources:
                chunks.close()

    def _jobs(self) -> Iterator[Job]:
        opened, size = self.first, self.first.geometry
        while True:
            yield self._job(opened)
            if self.alone:
                return
            opened = self.worker.ahead.next()  # waits while the last video's encoder drains
            if opened is None:
                self.stopped = True
                return
            g = opened.geometry
            if (g.batch, g.height, g.width) != (size.batch, size.height, size.width):
                self.carry = opened
                return

    def _job(self, opened: _Opened) -> Job:
        running = self.running[id(opened)] = _Running(opened)
        count = opened.latents.shape[2]  # chunks: one per latent frame
        chunks = self.worker.chunk_source(self.worker.vae, opened.latents, decoder=self.worker.decoder,
                                          graphs=self.worker.graphs)  # fmt: skip
        chunks = self._measured(running, chunks, count)
        self.sources.append(chunks)
        opened.latents = None  # the chunk source holds them until it is done
        sink = _ClosingSink(opened.sink, lambda: self._done(running))
        return Job(chunks, [sink], progress=lambda t: self._written(running, t))

    def _measured(self, running: _Running, chunks: Iterator[torch.Tensor], count: int) -> Iterator[torch.Tensor]:
        """``chunks``, with the video's start marked when its first chunk's kernels are launched, and
        the next video asked for when ``OPEN_AHEAD_CHUNKS`` of its ``count`` chunks are left."""
        if self.worker.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.worker.device)
        running.start = self.worker.meter.mark()
        try:
            for index in itertools.count():
                if index == max(count - OPEN_AHEAD_CHUNKS, 0) and not self.alone:
                    self.worker.ahead.request()
                chunk = next(chunks, None)
                if index == 0:  # told once the first chunk's kernels are queued
                    self.worker.feed.started(running.opened.item)
                if chunk is None:
                    return
                yield chunk
                del chunk
        finally:
            chunks.close()  # the decoder's cache goes with it, also when the stream breaks

    def _written(self, running: _Running, frames: int) -> None:
        running.written += frames
        if running.written == running.opened.geometry.frames:  # its last chunk is on the host
            running.end = self.worker.meter.mark()

    def _done(self, running: _Running) -> None:
        """The video's file is in place (writer thread): account it, hand it to the feed."""
        self.running.pop(id(running.opened))
        worker = self.worker
        with worker.lock:
            since = running.start
            if worker.last_end is not None and worker.last_end.time > since.time:
                since = worker.last_end
            worker.last_end = running.end
        peak = torch.cuda.max_memory_allocated(worker.device) if worker.device.type == "cuda" else None
        account = worker.meter.account(since, running.end, peak_memory_bytes=peak)
        decoded_at = time.time() - (time.perf_counter() - running.end.time)
        video = DecodedVideo(running.opened.geometry.frames, running.opened.fps, account,
                             running.end.time - since.time, decoded_at)  # fmt: skip
        try:
            worker.feed.done(running.opened.item, video)
        except Exception as e:  # publishing it failed (an upload): this video failed, the stream goes on
            worker.fail(running.opened.item, e)
