"""The two executors: the synchronous reference and the asynchronous frame pipeline.

Both take jobs (one video, or one batch of videos, each: a source of decoded chunks on the device
and one sink per video) and return once every frame has been written and every sink closed. They
differ only in what overlaps what:

* ``run_sync``: per chunk, decode -> copy to host -> convert -> write, in order; one job after the
  other. The reference.
* ``run_async``: the decode runs on a compute stream; each chunk is converted to uint8 on the
  device into a VRAM slot, copied into a pinned host slot on a copy stream, and written by the
  job's writer thread, while the compute stream already decodes the next chunk. A ring of slots
  bounds memory and gives backpressure. The next job decodes while the last one's encoder drains.
  With ``concurrent > 1`` that many jobs decode at once, each on its own compute stream, their
  chunks launched in turn from one thread, so one video's kernels fill the gaps between another's.
  On the CPU there are no streams: this thread decodes and the writer threads encode, through
  bounded queues.

This module owns the pipeline's threads and streams; chunk sources own none, and a sink owns only
the encoder threads it runs (``SegmentedVideoSink``'s segments).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ._errors import SettingsError
from ._postprocess import to_uint8_frames
from ._source import VideoGeometry
from ._trace import PipelineTrace, stage
from .sinks import Sink

ProgressFn = Callable[[int], None]
_POLL_S = 0.05


def _noop(_: int) -> None:
    pass


def numbered_chunks(chunks: Iterator[torch.Tensor], trace: PipelineTrace | None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, chunk)``, marking each step of the source as stage ``"decode i"``."""
    index = 0
    while True:
        with stage("decode", index, trace):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield index, chunk
        index += 1


@dataclass
class Job:
    """One video (or one batch of videos) to decode: its chunk source and one sink per video, open.

    The executor closes the sinks once the job's last chunk is written; ``progress(t)`` is called
    with each chunk's frame count per video, from whichever thread wrote it.
    """

    chunks: Iterator[torch.Tensor]
    sinks: Sequence[Sink]
    progress: ProgressFn = _noop


def close_sinks(job: Job, trace: PipelineTrace | None) -> None:
    """Close ``job``'s sinks: each encoder drains its look-ahead and its file moves into place."""
    with stage("write", "flush", trace):
        for sink in job.sinks:
            sink.close()


def run_sync(jobs: Iterable[Job], *, trace: PipelineTrace | None = None) -> None:
    """Reference executor: one job after the other, and in each, chunk by chunk: decode, copy to
    the host (waiting for the decode), convert, write."""
    for job in jobs:
        for index, chunk in numbered_chunks(job.chunks, trace):
            with stage("copy", index, trace):
                host = chunk.cpu()  # blocks until the decode has finished
            if trace is not None and chunk.device.type != "cpu":
                trace.add_d2h(host.nbytes)
            del chunk
            with stage("write", index, trace):
                frames = to_uint8_frames(host)
                for video, sink in enumerate(job.sinks):
                    sink.write(frames[video].numpy())
            job.progress(frames.shape[1])
        close_sinks(job, trace)


class _Writer:
    """The writer thread: takes work items from a queue and hands their frames to the sinks.

    ``handle(item)`` does the writing; ``release(item)`` runs after it, even on failure, so a slot
    always goes back to the ring. After a failure the thread keeps draining the queue without
    writing, so the producer never blocks on a dead consumer, and ``error`` holds the exception.
    """

    _STOP = object()

    def __init__(self, handle: Callable[[object], None], release: Callable[[object], None], maxsize: int = 0):
        self.items: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._handle = handle
        self._release = release
        self._cancel = threading.Event()
        self.ended = False
        self._thread = threading.Thread(target=self._run, name="framepipe-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.items.get()
            if item is self._STOP:
                return
            try:
                if self.error is None and not self._cancel.is_set():
                    self._handle(item)
            except BaseException as e:  # surface failures to the producer instead of hanging
                self.error = e
            finally:
                self._release(item)

    def put(self, item: object) -> None:
        """Queue ``item``, waiting for room (backpressure); raise the writer's error if it failed."""
        while True:
            self.raise_if_failed()
            try:
                self.items.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def end(self) -> None:
        """No more items will come; the thread exits once the queued ones are done."""
        self.ended = True
        self.items.put(self._STOP)

    def join(self) -> None:
        """Wait for the thread to finish its queue; re-raise a writer failure."""
        self._thread.join()
        self.raise_if_failed()

    def cancel(self) -> None:
        """Stop writing (queued items are released unwritten) and join the thread."""
        self._cancel.set()
        if self._thread.is_alive():
            self.items.put(self._STOP)
        self._thread.join()


_CLOSE = ("close",)  # a writer item: flush and close this job's sinks


def run_async(
    jobs: Iterable[Job],
    *,
    device: torch.device,
    geometry: VideoGeometry,
    slots: int = 2,
    max_open: int | None = None,
    concurrent: int = 1,
    trace: PipelineTrace | None = None,
) -> None:
    """The asynchronous pipeline: decode, device-to-host copy and writing overlap, within a video
    and across videos; every job writes the same frames as ``run_sync`` writes.

    Each job gets its own writer thread, which closes its sinks, so one video's encoder finishes
    its look-ahead tail while the GPU already decodes the next video. ``concurrent`` jobs decode
    at once, their chunks taken in turn; on CUDA each has its own stream and ``slots`` ring slots
    of ``geometry.max_chunk_frames`` frames (on the CPU this only interleaves them). At most
    ``max_open`` jobs are being written at once (default ``concurrent + 1``); starting another one
    waits for the oldest whose decoding has ended. Every job must fit ``geometry`` (same batch,
    height and width; any length).
    """
    max_open = concurrent + 1 if max_open is None else max_open
    if slots < 1 or concurrent < 1:
        raise SettingsError(f"slots and concurrent videos must be >= 1, got {slots} and {concurrent}.")
    if max_open < concurrent:
        raise SettingsError(f"max_open ({max_open}) must be at least concurrent_videos ({concurrent}).")
    active: deque[_Writer] = deque()

    def check() -> None:
        for writer in active:
            writer.raise_if_failed()

    def start(job: Job, handle_chunk: Callable[[object], None], release: Callable[[object], None], maxsize: int):
        while len(active) >= max_open:  # fewer than `concurrent` jobs are decoding, so one has ended
            oldest = next(w for w in active if w.ended)
            active.remove(oldest)
            oldest.join()

        def handle(item: object) -> None:
            if item is _CLOSE:
                close_sinks(job, trace)
            else:
                handle_chunk(item)

        writer = _Writer(handle, release, maxsize=maxsize)
        active.append(writer)
        return writer

    def finish_all() -> None:
        while active:
            active.popleft().join()

    def cancel_all() -> None:
        while active:
            active.popleft().cancel()

    if device.type == "cuda":
        _stream_cuda(jobs, start, check, finish_all, cancel_all, device=device, geometry=geometry, slots=slots,
                     concurrent=concurrent, trace=trace)  # fmt: skip
    else:
        _stream_host(jobs, start, check, finish_all, cancel_all, slots=slots, concurrent=concurrent, trace=trace)


@dataclass
class _Lane:
    """One job being decoded: its numbered chunks, its writer, and its compute stream (CUDA)."""

    job: Job
    chunks: Iterator[tuple[int, torch.Tensor]]
    writer: _Writer
    stream: torch.cuda.Stream | None = None

    def finish(self) -> None:
        """The job has no more chunks: queue its closing and let its writer drain."""
        self.writer.put(_CLOSE)
        self.writer.end()


def _take_turns(jobs: Iterable[Job], concurrent: int, open_lane: Callable[[Job], _Lane],
                step: Callable[[_Lane], bool]) -> None:  # fmt: skip
    """Keep up to ``concurrent`` jobs open, in order, and advance each by one chunk in turn.

    ``step(lane)`` handles the lane's next chunk and returns False once the lane has finished.
    """
    pending = iter(jobs)
    lanes: list[_Lane] = []
    while True:
        while len(lanes) < concurrent and (job := next(pending, None)) is not None:
            lanes.append(open_lane(job))
        if not lanes:
            return
        for lane in list(lanes):
            if not step(lane):
                lanes.remove(lane)


def _stream_host(
    jobs, start, check, finish_all, cancel_all, *, slots: int, concurrent: int, trace: PipelineTrace | None
) -> None:
    def open_lane(job: Job) -> _Lane:
        def handle(item: object) -> None:
            index, frames = item
            with stage("write", index, trace):
                for video, sink in enumerate(job.sinks):
                    sink.write(frames[video].numpy())
            job.progress(frames.shape[1])

        # A slot here is a place in the queue: at most `slots` converted chunks wait per writer.
        return _Lane(job, numbered_chunks(job.chunks, trace), start(job, handle, lambda _: None, slots))

    def step(lane: _Lane) -> bool:
        item = next(lane.chunks, None)
        if item is None:
            lane.finish()
            return False
        check()
        index, chunk = item
        frames = to_uint8_frames(chunk)
        del chunk, item
        lane.writer.put((index, frames))
        return True

    try:
        _take_turns(jobs, concurrent, open_lane, step)
    except BaseException:
        cancel_all()
        raise
    finish_all()


class _Ring:
    """``slots`` pairs of buffers: uint8 RGB frames in VRAM and in pinned host memory, with their events.

    Note [Slot reuse]: a slot is handed out again only after the writer has released it, which it
    does after waiting on ``copied[k]`` and after every sink's ``write`` returned (Note [Sinks do
    not keep frames]). So neither the host buffer (still being read by a sink) nor the device
    buffer (still being read by the copy engine) is overwritten early. The compute stream also
    waits on ``copied[k]`` before converting into the device slot, which keeps that ordering on the
    GPU itself rather than relying on the host-side hand-off alone.
    """

    def __init__(self, slots: int, shape: tuple[int, ...], device: torch.device):
        self.device = [torch.empty(shape, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.host = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(slots)]
        self.converted = [torch.cuda.Event() for _ in range(slots)]
        self.copied = [torch.cuda.Event() for _ in range(slots)]
        self.free: queue.Queue[int] = queue.Queue()
        for k in range(slots):
            self.free.put(k)

    def acquire(self, check: Callable[[], None]) -> int:
        """Wait for a free slot (backpressure); ``check()`` raises a writer's error instead of waiting forever."""
        while True:
            check()
            try:
                return self.free.get(timeout=_POLL_S)
            except queue.Empty:
                continue


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` this thread's current CUDA device for a while (nothing for a CPU device), so
    that what is made without a device (pinned host memory, events) belongs to it: a thread starts
    on GPU 0, and a worker of GPU 1 that touches GPU 0 opens a second context there and slows it."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _stream_cuda(
    jobs,
    start,
    check,
    finish_all,
    cancel_all,
    *,
    device: torch.device,
    geometry: VideoGeometry,
    slots: int,
    concurrent: int,
    trace: PipelineTrace | None,
) -> None:
    streams = [torch.cuda.Stream(device) for _ in range(concurrent)]
    idle_streams = list(streams)
    copy = torch.cuda.Stream(device)
    g = geometry
    with on_device(device):
        ring = _Ring(slots * concurrent, (g.batch, g.max_chunk_frames, g.height, g.width, 3), device)

    def release(item: object) -> None:
        if item is not _CLOSE:
            ring.free.put(item[0])

    def open_lane(job: Job) -> _Lane:
        stream = idle_streams.pop()
        stream.wait_stream(torch.cuda.default_stream(device))  # latents were made on the default stream

        def handle(item: object) -> None:
            k, t, index = item
            with stage("write", index, trace):
                ring.copied[k].synchronize()  # D2H into ring.host[k] has landed
                for video, sink in enumerate(job.sinks):
                    sink.write(ring.host[k][video, :t].numpy())
            job.progress(t)

        return _Lane(job, numbered_chunks(job.chunks, trace), start(job, handle, release, 0), stream)

    def step(lane: _Lane) -> bool:
        with torch.cuda.stream(lane.stream):  # the source enqueues one chunk's decode kernels here
            item = next(lane.chunks, None)
            if item is None:
                lane.finish()
                idle_streams.append(lane.stream)
                return False
            index, chunk = item  # chunk: [B, 3, t, H, W] on the device
            del item
            b, _, t, h, w = chunk.shape
            if (b, h, w) != (g.batch, g.height, g.width) or t > g.max_chunk_frames:
                raise RuntimeError(
                    f"A chunk of shape {tuple(chunk.shape)} does not fit this stream's ring "
                    f"({g.batch} videos of {g.height}x{g.width}, at most {g.max_chunk_frames} frames)."
                )
            k = ring.acquire(check)
            lane.stream.wait_event(ring.copied[k])  # Note [Slot reuse]
            to_uint8_frames(chunk, out=ring.device[k][:, :t])
            ring.converted[k].record(lane.stream)
            del chunk
        with stage("copy", index, trace), torch.cuda.stream(copy):
            copy.wait_event(ring.converted[k])
            for video in range(b):
                ring.host[k][video, :t].copy_(ring.device[k][video, :t], non_blocking=True)
            ring.copied[k].record(copy)
        if trace is not None:
            trace.add_d2h(ring.host[k][:, :t].nbytes)
        lane.writer.put((k, t, index))
        return True

    try:
        with on_device(device):
            _take_turns(jobs, concurrent, open_lane, step)
    except BaseException:
        cancel_all()
        _quiet_synchronize(*streams, copy)
        raise
    finish_all()
    copy.synchronize()


def _quiet_synchronize(*streams: torch.cuda.Stream) -> None:
    """Let in-flight kernels and copies finish before the ring is freed; ignore a broken context."""
    for stream in streams:
        with contextlib.suppress(RuntimeError):
            stream.synchronize()
