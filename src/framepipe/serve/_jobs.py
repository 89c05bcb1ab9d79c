"""The service's jobs: accepted durably, decoded by one worker per device, journaled.

A job's latents are written to the state folder (fsynced) and the job journaled ``queued`` before
its id is returned, so a service that stops at any moment finds every accepted job again when it
starts: jobs that were queued or running are queued again, the rest keep their outcome.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._device_worker import DeviceWorker
from .._errors import OutputError, SettingsError
from .._jsonl import append_jsonl, read_jsonl
from .._models import load_vae
from ..sinks import VideoSettings
from ._feed import JobFeed

STATES = ("queued", "running", "done", "failed")


class QueueFull(Exception):
    """The service's queue holds as many jobs as it may."""


@dataclass(frozen=True)
class ServiceOptions:
    """How the service decodes and what it accepts."""

    vae: str | None = None
    arch: str | None = None
    dtype: str = "float32"
    decoder: str = "framepipe"
    devices: tuple[str, ...] = ("cpu",)
    video: VideoSettings = field(default_factory=VideoSettings)
    max_queue: int = 16
    max_body_bytes: int = 512 * 2**20
    max_latent_frames: int = 64
    max_latent_pixels: int = 128 * 256  # latent H x W (1280x2048 pixels for Wan 2.1)
    # Jobs may name their latents by path (under this folder only) or s3:// URL, and an s3:// output.
    input_root: str | None = None
    endpoint_url: str | None = None
    keep_seconds: float = 24 * 3600  # finished jobs and their videos are removed this long after they end


@dataclass
class Job:
    id: str
    state: str
    settings: dict[str, Any]
    latent_format: str = "pipeline"
    created: float = field(default_factory=time.time)
    started: float | None = None
    decoded: float | None = None  # when its last chunk reached the host: the GPU's part was over
    finished: float | None = None
    error: str | None = None
    frames: int | None = None
    fps: float | None = None
    account: dict[str, Any] | None = None
    device: str | None = None
    output_url: str | None = None  # where the finished MP4 is uploaded too (s3://bucket/key.mp4)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        if self.frames and self.fps and self.account and self.account.get("energy_joules") is not None:
            out["joules_per_video_second"] = round(self.account["energy_joules"] / (self.frames / self.fps), 3)
        return out


class JobStore:
    """Jobs by id, their files in ``state_dir``, the journal ``jobs.jsonl``, and the workers."""

    def __init__(self, state_dir: Path, options: ServiceOptions) -> None:
        self.dir = Path(state_dir)
        self.options = options
        if options.input_root is not None and not Path(options.input_root).is_dir():
            raise SettingsError(f"input_root {options.input_root}: no such folder; give the folder jobs may read from.")
        try:
            (self.dir / "latents").mkdir(parents=True, exist_ok=True)
            (self.dir / "videos").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"Cannot keep the service's state in {self.dir}: {e.strerror or e}.") from e
        self.journal = self.dir / "jobs.jsonl"
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.busy_seconds = 0.0
        self.frames_done = 0
        self.listeners: list[Any] = []  # called with (job) on every change (metrics)
        self._stopping = threading.Event()
        self.workers: dict[str, threading.Thread] = {}  # device -> its worker's thread
        self._replay()

    # -- the journal ------------------------------------------------------------------------------

    def _replay(self) -> None:
        for entry in read_jsonl(self.journal):
            if entry["state"] == "expired":
                self.jobs.pop(entry["id"], None)
            else:
                self.jobs[entry["id"]] = Job(**entry)
        self.expire()
        if self.jobs:  # one line per job from here on: the journal does not grow with every restart
            compact = self.journal.with_name(".jobs.jsonl.compacting")
            compact.write_text("".join(json.dumps(j.__dict__, sort_keys=True) + "\n" for j in self.jobs.values()))
            os.replace(compact, self.journal)
        for stale in (self.dir / "latents").glob(".incoming-*"):  # bodies a stopped service was still checking
            stale.unlink(missing_ok=True)
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            if job.state in ("queued", "running"):
                if self.latents_path(job.id).exists():
                    self.update(job, state="queued", started=None)
                    self.queue.put(job.id)
                else:
                    self.update(job, state="failed", error="the service stopped and its latents were lost")

    def update(self, job: Job, *, durable: bool = True, **changes: Any) -> None:
        """Change ``job`` and journal it; the listeners (metrics) hear of it. ``durable=False``: the
        line is not fsynced (a restart queues a running job again whether it reads the line or not)."""
        with self.lock:
            for k, v in changes.items():
                setattr(job, k, v)
            append_jsonl(self.journal, job.__dict__, durable=durable)
        for listener in self.listeners:
            listener(job)

    def expire(self, now: float | None = None) -> int:
        """Remove the jobs (and videos) that finished more than ``keep_seconds`` ago; how many."""
        horizon = (time.time() if now is None else now) - self.options.keep_seconds
        old = [j for j in list(self.jobs.values()) if j.state in ("done", "failed") and (j.finished or 0) < horizon]
        for job in old:
            self.video_path(job.id).unlink(missing_ok=True)
            self.latents_path(job.id).unlink(missing_ok=True)  # kept after an internal error, for a look
            with self.lock:
                job.state = "expired"
                append_jsonl(self.journal, job.__dict__)
                del self.jobs[job.id]
            for listener in self.listeners:
                listener(job)
        return len(old)

    def _sweep(self) -> None:
        while not self._stopping.wait(min(60.0, max(self.options.keep_seconds / 10, 0.05))):
            self.expire()

    # -- paths and jobs ---------------------------------------------------------------------------

    def latents_path(self, job_id: str) -> Path:
        return self.dir / "latents" / f"{job_id}.safetensors"

    def video_path(self, job_id: str) -> Path:
        return self.dir / "videos" / f"{job_id}.mp4"

    def queued(self) -> int:
        return sum(1 for j in list(self.jobs.values()) if j.state == "queued")  # a copy: other threads add jobs

    def incoming_path(self) -> Path:
        """A new hidden path in the state folder for a request's body while it is checked."""
        return self.dir / "latents" / f".incoming-{uuid.uuid4().hex}.partial.safetensors"

    def submit(self, latents: Path, settings: dict[str, Any], latent_format: str, output_url: str | None = None) -> Job:
        """Queue a job for the checked latent file ``latents`` (moved into place, fsynced);
        ``QueueFull`` when the queue is full."""
        with self.lock:
            if self.queued() >= self.options.max_queue:
                raise QueueFull()
            job_id = uuid.uuid4().hex[:16]
            try:
                with open(latents, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(latents, self.latents_path(job_id))
            except OSError as e:
                raise OutputError(f"Cannot store the job's latents: {e.strerror or e}") from e
            # created: once its latents are durable, as its journal line is about to be
            job = Job(id=job_id, state="queued", settings=settings, latent_format=latent_format, output_url=output_url)
            try:
                append_jsonl(self.journal, job.__dict__)
            except OSError as e:  # not accepted: nothing of it stays
                self.latents_path(job_id).unlink(missing_ok=True)
                raise OutputError(f"Cannot journal the job: {e.strerror or e}") from e
            self.jobs[job.id] = job
        for listener in self.listeners:
            listener(job)
        self.queue.put(job.id)
        return job

    # -- the workers ------------------------------------------------------------------------------

    def start_workers(self) -> list[threading.Thread]:
        """Load the VAE on every device (errors here stop the service before it listens), then start
        one worker thread per device."""
        o = self.options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vaes = [load_vae(o.vae, arch=o.arch, dtype=o.dtype, device=d) for d in o.devices]
        self.z_dim = vaes[0].config.z_dim
        self.scale = (vaes[0].config.scale_factor_temporal, vaes[0].config.scale_factor_spatial)
        threads = []
        for device, vae in zip(o.devices, vaes, strict=True):
            worker = DeviceWorker(JobFeed(self, device, vae), vae, decoder=o.decoder)
            t = threading.Thread(target=worker.run, name=f"framepipe-serve-{device}", daemon=True)
            t.start()
            threads.append(t)
            self.workers[device] = t
        if math.isfinite(o.keep_seconds):
            sweeper = threading.Thread(target=self._sweep, name="framepipe-serve-expiry", daemon=True)
            sweeper.start()
            threads.append(sweeper)
        return threads

    def dead_workers(self) -> list[str]:
        """The devices whose worker has stopped while the service runs (a bug: its traceback is on stderr)."""
        if self._stopping.is_set():
            return []
        return [device for device, thread in self.workers.items() if not thread.is_alive()]

    def record_busy(self, seconds: float, frames: int) -> None:
        """A job's decode took ``seconds`` of its device and gave ``frames`` frames (for the metrics)."""
        with self.lock:
            self.busy_seconds += seconds
            self.frames_done += frames

    def stop_workers(self) -> None:
        self._stopping.set()
        for _ in self.options.devices:
            self.queue.put(None)
