"""One device's worker: the service's consecutive jobs flow through one asynchronous pipeline.

Jobs of one frame size follow each other through one ``run_async`` stream, so the GPU decodes the
next job while the last one's encoder finishes its look-ahead: no idle gap between requests. A job
is done once its sink has closed (its MP4 in place). When a stream breaks (a job decodes NaN, a
disk fills up), the jobs it had not finished are run again, each alone, so only the job at fault
fails. Each job's GPU account covers its own decode, from its first kernel's launch (or the end of
the job before it, whichever is later) to its last chunk's arrival on the host: back to back, no
overlap.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from .._accounting import GpuMeter, Mark
from .._api import prepare_latents
from .._errors import GPU_OUT_OF_MEMORY, DeviceError, FramepipeError
from .._latents import load_latents
from .._pipeline import Job as PipelineJob
from .._pipeline import run_async
from .._source import VideoGeometry, check_fits, decode_chunks, geometry
from ..data._store import upload_url
from ..sinks import Sink, open_sink


class _NewStream:
    """``_Stream.open``'s answer for a job of another frame size: it starts the next stream."""


@dataclass
class _Running:
    """A job inside a stream: its sink, and the marks its account is taken between."""

    sink: Sink
    frames: int
    fps: float
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


class DeviceWorker:
    """Takes jobs from the store's queue and decodes them on one device, stream after stream."""

    def __init__(self, store: Any, device: str, vae: Any) -> None:  # store: the JobStore that owns this worker
        self.store, self.device, self.vae = store, device, vae
        self.meter = GpuMeter(torch.device(device))
        self.lock = threading.Lock()
        self.last_end: Mark | None = None  # where the last job's account ended

    def run(self) -> None:
        """Until the store sends None: one stream per run of jobs of one frame size."""
        carry: str | None = None
        try:
            while True:
                first = carry if carry is not None else self.store.queue.get()
                if first is None:
                    return
                stream = _Stream(self, first, alone=False)
                stream.run()
                for job_id in stream.unfinished:  # a broken stream: each of its jobs again, alone
                    _Stream(self, job_id, alone=True).run()
                if stream.stopped:
                    return
                carry = stream.carry
        finally:
            self.meter.close()


class _Stream:
    """One ``run_async`` over jobs taken from the queue as they come (``alone``: just ``first``)."""

    def __init__(self, worker: DeviceWorker, first: str, *, alone: bool) -> None:
        self.worker, self.store, self.first, self.alone = worker, worker.store, first, alone
        self.geometry: VideoGeometry | None = None
        self.running: dict[str, _Running] = {}
        self.sources: list[Iterator[torch.Tensor]] = []
        self.carry: str | None = None  # a job of another frame size: the next stream's first
        self.stopped = False  # the store asked the workers to stop
        self.unfinished: list[str] = []  # the jobs a broken stream leaves, to run again alone

    def run(self) -> None:
        first = self._open(self.first)  # the first job sizes the stream's ring
        if not isinstance(first, PipelineJob):
            return
        try:
            run_async(self._jobs(first), device=torch.device(self.worker.device), geometry=self.geometry, slots=2)
        except Exception as e:
            for running in list(self.running.values()):
                running.sink.abort()
            if self.alone:
                for job_id in list(self.running):
                    self._fail(job_id, e)
            else:
                self.unfinished = list(self.running)
        finally:
            for chunks in self.sources:
                chunks.close()

    def _jobs(self, first: PipelineJob) -> Iterator[PipelineJob]:
        yield first
        while not self.alone:
            job_id = self.store.queue.get()  # waits while the last job's encoder drains
            if job_id is None:
                self.stopped = True
                return
            job = self._open(job_id)
            if job is _NewStream:
                self.carry = job_id
                return
            if job is not None:
                yield job

    def _open(self, job_id: str) -> PipelineJob | type[_NewStream] | None:
        """The pipeline job for ``job_id``, its sink open; None if it failed before decoding."""
        job, vae, o = self.store.jobs[job_id], self.worker.vae, self.store.options
        try:
            video = replace(o.video, **job.settings)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                latents = prepare_latents(load_latents(self.store.latents_path(job_id)), vae, job.latent_format,
                                          f"job {job_id}")  # fmt: skip
            g = geometry(vae, tuple(latents.shape))
            if self.geometry is None:
                check_fits(vae, g)
                self.geometry = g
            elif (g.batch, g.height, g.width) != (self.geometry.batch, self.geometry.height, self.geometry.width):
                return _NewStream
            sink = open_sink(self.store.video_path(job_id), video)
            sink.open(frames=g.frames, height=g.height, width=g.width)
        except FramepipeError as e:
            self.store.update(job, state="failed", finished=time.time(), error=str(e))
            self.store.latents_path(job_id).unlink(missing_ok=True)
            return None
        self.store.update(job, state="running", started=time.time(), device=self.worker.device)
        running = self.running[job_id] = _Running(sink, g.frames, video.fps)
        chunks = self._measured(job_id, decode_chunks(vae, latents, decoder=o.decoder))
        self.sources.append(chunks)
        return PipelineJob(chunks, [_ClosingSink(sink, lambda: self._done(job_id))],
                           progress=lambda t: self._written(running, t))  # fmt: skip

    def _measured(self, job_id: str, chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``chunks``, with the job's start marked when its first chunk's kernels are launched."""
        device = torch.device(self.worker.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.running[job_id].start = self.worker.meter.mark()
        yield from chunks

    def _written(self, running: _Running, frames: int) -> None:
        running.written += frames
        if running.written == running.frames:  # the last chunk is on the host: this job's GPU work is over
            running.end = self.worker.meter.mark()

    def _done(self, job_id: str) -> None:
        """The job's MP4 is in place (writer thread): account, upload, journal."""
        running = self.running.pop(job_id)
        job, o, worker = self.store.jobs[job_id], self.store.options, self.worker
        device = torch.device(worker.device)
        with worker.lock:
            since = running.start
            if worker.last_end is not None and worker.last_end.time > since.time:
                since = worker.last_end
            worker.last_end = running.end
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        account = worker.meter.account(since, running.end, peak_memory_bytes=peak)
        if job.output_url:
            try:
                upload_url(self.store.video_path(job_id), job.output_url, endpoint_url=o.endpoint_url)
            except FramepipeError as e:
                self.store.update(job, state="failed", finished=time.time(), error=f"the video was made, but {e}")
                return
        self.store.record_busy(running.end.time - since.time, running.frames)
        decoded = time.time() - (time.perf_counter() - running.end.time)
        self.store.update(job, state="done", decoded=decoded, finished=time.time(), frames=running.frames,
                          fps=running.fps, account=account.to_dict())  # fmt: skip
        self.store.latents_path(job_id).unlink(missing_ok=True)

    def _fail(self, job_id: str, error: BaseException) -> None:
        self.running.pop(job_id, None)
        if isinstance(error, torch.OutOfMemoryError):
            error = DeviceError(GPU_OUT_OF_MEMORY)
        if isinstance(error, FramepipeError):
            message = str(error)
            self.store.latents_path(job_id).unlink(missing_ok=True)
        else:  # an internal bug: its traceback to stderr; the latents stay for a restarted service
            traceback.print_exception(error, file=sys.stderr)
            message = f"internal error ({type(error).__name__}: {error})"
        self.store.update(self.store.jobs[job_id], state="failed", finished=time.time(), error=message)
