"""The service's jobs as a device worker's feed: taken from the store's queue, journaled as they go.

The worker (``framepipe._device_worker``) streams consecutive jobs of one frame size through one
pipeline and opens the next job while the last one decodes; this module says where a job's latents
and video live and what the store records at each step.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .._api import prepare_latents
from .._device_worker import DecodedVideo, VideoOrder
from .._errors import FramepipeError
from .._latents import load_latents
from ..data._store import upload_url


class JobFeed:
    """The store's queued jobs for the worker on ``device`` (one feed per device)."""

    def __init__(self, store: Any, device: str, vae: Any) -> None:  # store: the JobStore that owns the workers
        self.store, self.device, self.vae = store, device, vae

    def take(self) -> str | None:
        return self.store.queue.get()

    def open(self, job_id: str) -> VideoOrder:
        job, store = self.store.jobs[job_id], self.store
        video = replace(store.options.video, **job.settings)
        latents = load_latents(store.latents_path(job_id))
        return VideoOrder(prepare_latents(latents, self.vae, job.latent_format, f"job {job_id}"),
                          store.video_path(job_id), video)  # fmt: skip

    def started(self, job_id: str) -> None:
        # called on the decoding thread: no fsync there, a lost "running" line changes nothing after a restart
        self.store.update(self.store.jobs[job_id], durable=False, state="running", started=time.time(),
                          device=self.device)  # fmt: skip

    def done(self, job_id: str, video: DecodedVideo) -> None:
        job, store = self.store.jobs[job_id], self.store
        if job.output_url:
            try:
                upload_url(store.video_path(job_id), job.output_url, endpoint_url=store.options.endpoint_url)
            except FramepipeError as e:
                store.update(job, state="failed", finished=time.time(), error=f"the video was made, but {e}")
                return
        store.record_busy(video.busy_seconds, video.frames)
        store.update(job, state="done", decoded=video.decoded_at, finished=time.time(), frames=video.frames,
                     fps=video.fps, account=video.account.to_dict())  # fmt: skip
        store.latents_path(job_id).unlink(missing_ok=True)

    def failed(self, job_id: str, message: str, *, internal: bool) -> None:
        if not internal:  # an internal bug keeps the latents (until the job expires), to reproduce it
            self.store.latents_path(job_id).unlink(missing_ok=True)
        self.store.update(self.store.jobs[job_id], state="failed", finished=time.time(), error=message)
