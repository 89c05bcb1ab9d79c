"""The service's jobs: accepted durably, decoded by one worker per device, journaled.

A job's latents are written to the state folder (fsynced) and the job journaled ``queued`` before
its id is returned, so a service that stops at any moment finds every accepted job again when it
starts: jobs that were queued or running are queued again, the rest keep their outcome.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._accounting import GpuMeter
from .._api import decode
from .._errors import FramepipeError, OutputError
from .._jsonl import append_jsonl, read_jsonl
from .._models import load_vae
from ..data._store import upload_url
from ..sinks import VideoSettings

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


@dataclass
class Job:
    id: str
    state: str
    settings: dict[str, Any]
    latent_format: str = "pipeline"
    created: float = field(default_factory=time.time)
    started: float | None = None
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
        (self.dir / "latents").mkdir(parents=True, exist_ok=True)
        (self.dir / "videos").mkdir(parents=True, exist_ok=True)
        self.journal = self.dir / "jobs.jsonl"
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.busy_seconds = 0.0
        self.frames_done = 0
        self.listeners: list[Any] = []  # called with (job) on every change (metrics)
        self._replay()

    # -- the journal ------------------------------------------------------------------------------

    def _replay(self) -> None:
        for entry in read_jsonl(self.journal):
            self.jobs[entry["id"]] = Job(**entry)
        if self.jobs:  # one line per job from here on: the journal does not grow with every restart
            compact = self.journal.with_name(".jobs.jsonl.compacting")
            compact.write_text("".join(json.dumps(j.__dict__, sort_keys=True) + "\n" for j in self.jobs.values()))
            os.replace(compact, self.journal)
        for stale in (self.dir / "latents").glob(".incoming-*"):  # bodies a stopped service was still checking
            stale.unlink(missing_ok=True)
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            if job.state in ("queued", "running"):
                if self.latents_path(job.id).exists():
                    self._set(job, state="queued", started=None)
                    self.queue.put(job.id)
                else:
                    self._set(job, state="failed", error="the service stopped and its latents were lost")

    def _set(self, job: Job, **changes: Any) -> None:
        with self.lock:
            for k, v in changes.items():
                setattr(job, k, v)
            append_jsonl(self.journal, job.__dict__)
        for listener in self.listeners:
            listener(job)

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
            job = Job(id=uuid.uuid4().hex[:16], state="queued", settings=settings, latent_format=latent_format,
                      output_url=output_url)  # fmt: skip
            try:
                with open(latents, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(latents, self.latents_path(job.id))
            except OSError as e:
                raise OutputError(f"Cannot store the job's latents: {e.strerror or e}") from e
            self.jobs[job.id] = job
            append_jsonl(self.journal, job.__dict__)
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
            t = threading.Thread(target=self._work, args=(device, vae), name=f"framepipe-serve-{device}", daemon=True)
            t.start()
            threads.append(t)
        return threads

    def stop_workers(self) -> None:
        for _ in self.options.devices:
            self.queue.put(None)

    def _work(self, device: str, vae) -> None:
        o = self.options
        meter = GpuMeter(torch.device(device))
        while (job_id := self.queue.get()) is not None:
            job = self.jobs[job_id]
            self._set(job, state="running", started=time.time(), device=device)
            video = replace(o.video, **job.settings)
            meter.start()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = decode(str(self.latents_path(job_id)), self.video_path(job_id), vae=vae, video=video,
                                    decoder=o.decoder, latent_format=job.latent_format)  # fmt: skip
            except FramepipeError as e:
                meter.close()
                self._set(job, state="failed", finished=time.time(), error=str(e))
                self.latents_path(job_id).unlink(missing_ok=True)
                continue
            except Exception as e:  # an internal bug: its traceback to stderr; the worker goes on
                traceback.print_exc(file=sys.stderr)
                meter.close()
                self._set(job, state="failed", finished=time.time(), error=f"internal error ({type(e).__name__}: {e})")
                continue
            account = meter.stop()
            if job.output_url:
                try:
                    upload_url(self.video_path(job_id), job.output_url, endpoint_url=o.endpoint_url)
                except FramepipeError as e:
                    self._set(job, state="failed", finished=time.time(), error=f"the video was made, but {e}")
                    continue
            self.busy_seconds += result.seconds
            self.frames_done += result.total_frames
            self._set(job, state="done", finished=time.time(), frames=result.total_frames, fps=video.fps,
                      account=account.to_dict())  # fmt: skip
            self.latents_path(job_id).unlink(missing_ok=True)
