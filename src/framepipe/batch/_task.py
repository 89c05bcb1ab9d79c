"""One video of a batch, decoded: the options every video shares and the journal entry it gives,
for a video decoded on its own (``decode_task``) or streamed by a device worker (``TaskFeed``,
``decode_all``)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._accounting import GpuMeter
from .._api import decode, prepare_latents
from .._choices import CONTENTS, check_choice
from .._device_worker import DecodedVideo, DeviceWorker, VideoOrder, failure_message
from .._errors import FramepipeError, SettingsError
from .._latents import check_one_video, load_latents
from .._source import ChunkSource, ProceduralChunks
from ..sinks import VideoSettings
from ._destination import fetch_latents
from ._plan import BatchTask


@dataclass(frozen=True)
class BatchOptions:
    """What every video of a batch shares: the model, the video settings, the decode options."""

    vae: str | None = None
    arch: str | None = None
    seed: int = 0
    video: VideoSettings = field(default_factory=VideoSettings)
    dtype: str = "float32"
    decoder: str = "framepipe"
    latent_format: str = "pipeline"
    mode: str = "async"
    slots: int = 2
    endpoint_url: str | None = None  # for s3:// latents and outputs (default: boto3's, e.g. AWS_ENDPOINT_URL)
    #: what the encoders get: "decoded" (the VAE's output) or, for benchmarks with random weights (``arch``),
    #: "procedural" (procedural clips of the decoded size, which encode like real video; the GPU decodes all the same)
    content: str = "decoded"

    def __post_init__(self) -> None:
        check_choice("content", self.content, CONTENTS)
        if self.content == "procedural" and (self.arch is None or self.vae is not None):
            raise SettingsError("--content procedural replaces what the VAE decodes: it is for benchmarks with "
                                "random weights (--arch, no --vae).")  # fmt: skip

    def chunk_source(self) -> ChunkSource | None:
        """What makes each video's chunks (a fresh one per worker); None: ``decode_chunks``."""
        return None if self.content == "decoded" else ProceduralChunks()


def decode_task(task: BatchTask, destination, options: BatchOptions, vae, work: Path) -> dict[str, Any]:
    """Decode one task with a loaded ``vae`` into ``destination`` (``work``: this worker's scratch
    folder); the journal entry for it (``done`` or ``failed``), with the decode's GPU accounting."""
    entry: dict[str, Any] = {"name": task.name, "latents": task.latents, "started_at": round(time.time(), 3)}
    latents = None
    meter = GpuMeter(next(vae.parameters()).device)
    try:
        video = replace(options.video, **task.settings)
        latents = fetch_latents(task.latents, work, endpoint_url=options.endpoint_url)
        z = load_latents(latents)
        check_one_video(z)
        target = destination.target(task.name, work)
        meter.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once by the driver, not once per video
            result = decode(z, target, vae=vae, video=video, mode=options.mode, decoder=options.decoder,
                            latent_format=options.latent_format, slots=options.slots,
                            chunk_source=options.chunk_source())  # fmt: skip
        account = meter.stop()
        where, size, sha = destination.publish(task.name, target)
    except FramepipeError as e:
        return {**entry, "finished_at": round(time.time(), 3), "status": "failed", "error": str(e)}
    finally:
        meter.close()  # its sampler stopped, whether the decode ended or not
        if latents is not None and latents.parent == work:
            latents.unlink(missing_ok=True)
    return {
        **entry,
        "finished_at": round(time.time(), 3),
        "status": "done",
        "output": where,
        "bytes": size,
        "sha256": sha,
        "seconds": round(result.seconds, 4),
        "frames": result.total_frames,
        "fps": video.fps,
        "device": result.device,
        "account": account.to_dict(),
    }


class TaskFeed:
    """A batch's videos as a device worker's feed (``DeviceWorker``): tasks from ``take``, each
    one's journal entry to ``report`` (``done`` from its writer thread)."""

    def __init__(self, take: Callable[[], BatchTask | None], report: Callable[[dict[str, Any]], None],
                 destination, options: BatchOptions, vae, work: Path) -> None:  # fmt: skip
        self._take, self.report = take, report
        self.destination, self.options, self.vae, self.work = destination, options, vae, work
        self.device = str(next(vae.parameters()).device)
        self.fetched: dict[str, Path] = {}  # task name -> latents downloaded into work
        self.started_at: dict[str, float] = {}

    def take(self) -> BatchTask | None:
        return self._take()

    def open(self, task: BatchTask) -> VideoOrder:
        video = replace(self.options.video, **task.settings)
        path = fetch_latents(task.latents, self.work, endpoint_url=self.options.endpoint_url)
        if path.parent == self.work:
            self.fetched[task.name] = path
        latents = prepare_latents(load_latents(path), self.vae, self.options.latent_format, task.latents)
        return VideoOrder(latents, self.destination.target(task.name, self.work), video)

    def started(self, task: BatchTask) -> None:
        self.started_at[task.name] = round(time.time(), 3)

    def done(self, task: BatchTask, video: DecodedVideo) -> None:
        self._forget_latents(task)
        try:
            where, size, sha = self.destination.publish(task.name, self.destination.target(task.name, self.work))
        except FramepipeError as e:
            self.failed(task, str(e), internal=False)
            return
        self.report({"name": task.name, "latents": task.latents, "started_at": self.started_at.pop(task.name),
                     "finished_at": round(time.time(), 3), "status": "done", "output": where, "bytes": size,
                     "sha256": sha, "seconds": round(video.busy_seconds, 4), "frames": video.frames,
                     "fps": video.fps, "device": self.device, "account": video.account.to_dict()})  # fmt: skip

    def failed(self, task: BatchTask, message: str, *, internal: bool) -> None:
        self._forget_latents(task)
        entry = {"name": task.name, "latents": task.latents}
        if task.name in self.started_at:
            entry.update(started_at=self.started_at.pop(task.name), finished_at=round(time.time(), 3))
        self.report({**entry, "status": "failed", "error": message})

    def _forget_latents(self, task: BatchTask) -> None:
        if (path := self.fetched.pop(task.name, None)) is not None:
            path.unlink(missing_ok=True)


def decode_all(take, report, destination, options: BatchOptions, vae, work: Path) -> None:
    """Decode the tasks ``take()`` gives until None, each one's journal entry to ``report``: streamed
    through one pipeline by a ``DeviceWorker`` (the next video decodes while the last one's encoder
    drains), or with ``mode="sync"`` one after the other through the reference executor."""
    if options.mode != "sync":
        DeviceWorker(TaskFeed(take, report, destination, options, vae, work), vae, decoder=options.decoder,
                     slots=options.slots, chunk_source=options.chunk_source()).run()  # fmt: skip
        return
    while (task := take()) is not None:
        try:
            report(decode_task(task, destination, options, vae, work))
        except Exception as e:  # an internal bug: its traceback goes to stderr, the batch goes on
            report({"name": task.name, "latents": task.latents, "status": "failed", "error": failure_message(e)[0]})
