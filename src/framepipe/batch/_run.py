"""Run a batch: every task decoded once, journaled, on one device, one worker process per GPU
(``_processes``) or Ray actors (``_ray``).

Work is handed out one video at a time to the worker that asks, so a long video does not hold the
others back; each worker streams its videos through one pipeline (``DeviceWorker``). Only the
driver writes the journal. A video that fails with a user error (bad latents, an unwritable
output...) is recorded with its one-line error and the batch goes on (``fail_fast`` stops it); the
videos of a worker that dies go to the others.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import SettingsError
from .._models import load_vae
from .._paths import removed_if_unused, work_folder
from ._destination import open_batch_destination
from ._plan import BatchTask
from ._processes import run_workers
from ._task import BatchOptions, decode_all


@dataclass
class WorkerShare:
    """One worker's part of a batch: the videos it decoded, their GPU-seconds (its decodes back to
    back), and the wall-clock times of its first video's start and its last video's end."""

    videos: int = 0
    gpu_seconds: float = 0.0
    first_start: float = float("inf")
    last_end: float = float("-inf")
    loaded_at: float | None = None  # when its model was on its device (after spawn, imports and loading)

    def add(self, entry: dict[str, Any]) -> None:
        self.videos += 1
        self.gpu_seconds += entry["seconds"]
        self.first_start = min(self.first_start, entry["started_at"])
        self.last_end = max(self.last_end, entry["finished_at"])

    def to_dict(self, start: float, end: float, began: float | None = None) -> dict[str, Any]:
        """Its figures against the batch's work from ``start`` to ``end``: where its time went; with
        ``began``, the batch's start, how long its start-up took."""
        span = self.last_end - self.first_start
        startup = {}
        if began is not None:
            startup["loaded_after_s"] = None if self.loaded_at is None else round(self.loaded_at - began, 3)
            startup["first_video_after_s"] = round(self.first_start - began, 3)  # warm-ups, first video opened
        return {
            "videos": self.videos,
            "gpu_seconds": round(self.gpu_seconds, 3),
            "span_seconds": round(span, 3),  # its first video's start to its last one's end
            "busy_share": round(self.gpu_seconds / span, 4) if span > 0 else None,
            "started_after_s": round(self.first_start - start, 3),  # the batch's first start to its own
            "ended_before_s": round(end - self.last_end, 3),  # its last end to the batch's
            **startup,
        }


@dataclass
class BatchSummary:
    """What a batch did. ``gpu_seconds`` sums each video's decode time on its device;
    ``work_seconds`` is the wall time from the first video's start to the last one's end (the
    workers' start-up, loading the model, left out)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    gpu_seconds: float = 0.0
    video_seconds: float = 0.0
    work_seconds: float | None = None
    devices: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    journal: str = ""
    per_worker: dict[str, WorkerShare] = field(default_factory=dict)  # by the entries' "worker"
    started_at: float | None = None  # wall clock, when the batch began its work (workers' start-up included)

    @property
    def videos_per_hour(self) -> float:
        return self.done / self.seconds * 3600 if self.seconds > 0 else 0.0

    @property
    def gpu_seconds_per_video_second(self) -> float | None:
        return self.gpu_seconds / self.video_seconds if self.video_seconds > 0 else None

    def per_worker_figures(self) -> dict[str, dict[str, Any]]:
        """Each worker's ``WorkerShare.to_dict`` against the whole batch's work."""
        shares = {name: w for name, w in sorted(self.per_worker.items()) if w.videos}  # not one that only loaded
        if not shares:
            return {}
        start = min(w.first_start for w in shares.values())
        end = max(w.last_end for w in shares.values())
        return {name: share.to_dict(start, end, self.started_at) for name, share in shares.items()}

    def to_dict(self) -> dict[str, Any]:
        ratio = self.gpu_seconds_per_video_second
        return {
            **asdict(self),
            "per_worker": self.per_worker_figures(),
            "failures": [{"name": n, "error": e} for n, e in self.failures],
            "videos_per_hour": round(self.videos_per_hour, 1),
            "gpu_seconds_per_video_second": None if ratio is None else round(ratio, 4),
        }


def run_batch(
    tasks: Sequence[BatchTask],
    outdir: str | Path,
    options: BatchOptions | None = None,
    *,
    devices: Sequence[str] = ("cpu",),
    fail_fast: bool = False,
    verify: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    on_result: Callable[[dict[str, Any], int, int], None] | None = None,
) -> BatchSummary:
    """Decode every task not yet done in ``outdir`` (created if missing), one worker per device,
    or on the Ray cluster at ``ray_address`` (``"auto"``, or ``host:port``) with ``workers`` actors
    (default one per GPU). Outputs and the journal go to ``outdir``, which Ray's nodes must share.

    ``on_result(entry, index, total)`` is called as each video ends (for progress). A re-run skips
    what the journal records done and still finds intact (``verify``: by its SHA-256 too).
    """
    options = options or BatchOptions()
    if workers is not None and ray_address is None:
        raise SettingsError("workers sets how many Ray actors decode (--workers); it needs a Ray cluster (--ray). "
                            "Without Ray, --gpus sets one worker per GPU.")  # fmt: skip
    local = contextlib.nullcontext() if str(outdir).startswith("s3://") else removed_if_unused(Path(outdir))
    with local:
        destination = open_batch_destination(outdir, endpoint_url=options.endpoint_url)
        return _run(tasks, destination, options, devices, fail_fast, verify, ray_address, workers, on_result)


def _run(tasks, destination, options: BatchOptions, devices, fail_fast, verify, ray_address, workers, on_result):
    journal = destination.journal()
    destination.clean()
    summary = BatchSummary(devices=list(devices), journal=str(journal.path))
    pending = []
    for task in tasks:
        if journal.is_done(task.name, destination.target(task.name, Path()), verify=verify):
            summary.skipped += 1
        else:
            pending.append(task)
    start = time.perf_counter()
    summary.started_at = time.time()
    counter = iter(range(1, len(pending) + 1))

    starts: list[float] = []
    ends: list[float] = []

    def finish(entry: dict[str, Any]) -> bool:
        """Journal one result; whether the batch goes on."""
        journal.record(entry)
        if "started_at" in entry:  # not for a worker that died mid-video
            starts.append(entry["started_at"])
            ends.append(entry["finished_at"])
        if entry["status"] == "done":
            summary.done += 1
            summary.gpu_seconds += entry["seconds"]
            summary.per_worker.setdefault(entry.get("worker", "?"), WorkerShare()).add(entry)
            summary.video_seconds += entry["frames"] / entry["fps"]
        else:
            summary.failed += 1
            summary.failures.append((entry["name"], entry["error"]))
        if on_result is not None:
            on_result(entry, next(counter), len(pending))
        return not (fail_fast and entry["status"] != "done")

    def loaded(worker: str, at: float) -> None:
        """A worker's model is on its device (its start-up's end, but for the warm-ups)."""
        summary.per_worker.setdefault(worker, WorkerShare()).loaded_at = at

    if pending and (ray_address is not None or len(devices) > 1):
        pending = longest_first(pending)
    if pending:
        if ray_address is not None:
            from ._ray import run_on_ray

            summary.devices = run_on_ray(pending, destination.url, options, finish, address=ray_address,
                                         workers=workers, loaded=loaded)  # fmt: skip
        elif len(devices) == 1:
            _run_here(pending, destination, options, devices[0], finish, loaded)
        else:
            run_workers(pending, destination, options, list(devices), finish, loaded)
    destination.clean()  # what workers that died in this batch left
    summary.seconds = time.perf_counter() - start
    summary.work_seconds = round(max(ends) - min(starts), 3) if starts else None
    return summary


def longest_first(tasks: Sequence[BatchTask]) -> list[BatchTask]:
    """Several workers finish sooner when the longest videos start first (local latent files by size;
    URLs keep their place after them)."""

    def size(task: BatchTask) -> int:
        try:
            return Path(task.latents).stat().st_size if "://" not in task.latents else -1
        except OSError:
            return -1

    return sorted(tasks, key=size, reverse=True)


def _run_here(tasks, destination, options: BatchOptions, device: str, finish, loaded) -> None:
    vae = load_vae(options.vae, arch=options.arch, dtype=options.dtype, device=device, seed=options.seed)
    loaded(device, time.time())
    todo, stop, lock = iter(tasks), threading.Event(), threading.Lock()

    def take() -> BatchTask | None:
        return None if stop.is_set() else next(todo, None)

    def report(entry: dict[str, Any]) -> None:  # from the worker's threads: one journal line at a time
        with lock:
            if not finish({**entry, "worker": device}):
                stop.set()

    with work_folder("framepipe-batch-") as work:
        decode_all(take, report, destination, options, vae, work)
