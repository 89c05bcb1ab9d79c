"""Run a batch: every task decoded once, journaled, on one device or one worker process per GPU.

Work is handed out one video at a time from a shared queue, so a long video does not hold the
others back; each worker streams its videos through one pipeline (``DeviceWorker``). Only the
driver writes the journal. A video that fails with a user error (bad latents, an unwritable
output...) is recorded with its one-line error and the batch goes on (``fail_fast`` stops it); a
worker that dies has the videos it held recorded as failed, to be redone by the next run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._device_worker import DeviceWorker, failure_message
from .._errors import DeviceError, FramepipeError
from .._models import load_vae
from .._paths import removed_if_unused, work_folder
from .._watchdog import die_with_parent
from ._destination import open_batch_destination
from ._plan import BatchTask
from ._task import BatchOptions, TaskFeed, decode_task


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

    @property
    def videos_per_hour(self) -> float:
        return self.done / self.seconds * 3600 if self.seconds > 0 else 0.0

    @property
    def gpu_seconds_per_video_second(self) -> float | None:
        return self.gpu_seconds / self.video_seconds if self.video_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        ratio = self.gpu_seconds_per_video_second
        return {
            **asdict(self),
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
    local = contextlib.nullcontext() if str(outdir).startswith("s3://") else removed_if_unused(Path(outdir))
    with local:
        destination = open_batch_destination(outdir, endpoint_url=options.endpoint_url)
        return _run(tasks, destination, options, devices, fail_fast, verify, ray_address, workers, on_result)


def _run(tasks, destination, options: BatchOptions, devices, fail_fast, verify, ray_address, workers, on_result):
    journal = destination.journal()
    summary = BatchSummary(devices=list(devices), journal=str(journal.path))
    pending = []
    for task in tasks:
        if journal.is_done(task.name, destination.target(task.name, Path()), verify=verify):
            summary.skipped += 1
        else:
            pending.append(task)
    start = time.perf_counter()
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
            summary.video_seconds += entry["frames"] / entry["fps"]
        else:
            summary.failed += 1
            summary.failures.append((entry["name"], entry["error"]))
        if on_result is not None:
            on_result(entry, next(counter), len(pending))
        return not (fail_fast and entry["status"] != "done")

    if pending and (ray_address is not None or len(devices) > 1):
        pending = longest_first(pending)
    if pending:
        if ray_address is not None:
            from ._ray import run_on_ray

            summary.devices = run_on_ray(pending, destination.url, options, finish, address=ray_address,
                                         workers=workers)  # fmt: skip
        elif len(devices) == 1:
            _run_here(pending, destination, options, devices[0], finish)
        else:
            _run_workers(pending, destination, options, list(devices), finish)
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


def _run_here(tasks, destination, options: BatchOptions, device: str, finish) -> None:
    vae = load_vae(options.vae, arch=options.arch, dtype=options.dtype, device=device, seed=options.seed)
    todo, stop, lock = iter(tasks), threading.Event(), threading.Lock()

    def take() -> BatchTask | None:
        return None if stop.is_set() else next(todo, None)

    def report(entry: dict[str, Any]) -> None:  # from the worker's threads: one journal line at a time
        with lock:
            if not finish(entry):
                stop.set()

    with work_folder("framepipe-batch-") as work:
        decode_all(take, report, destination, options, vae, work)


def decode_all(take, report, destination, options: BatchOptions, vae, work: Path) -> None:
    """Decode the tasks ``take()`` gives until None, each one's journal entry to ``report``: streamed
    through one pipeline by a ``DeviceWorker`` (the next video decodes while the last one's encoder
    drains), or with ``mode="sync"`` one after the other through the reference executor."""
    if options.mode != "sync":
        DeviceWorker(TaskFeed(take, report, destination, options, vae, work), vae, decoder=options.decoder,
                     slots=options.slots).run()  # fmt: skip
        return
    while (task := take()) is not None:
        try:
            report(decode_task(task, destination, options, vae, work))
        except Exception as e:  # an internal bug: its traceback goes to stderr, the batch goes on
            report({"name": task.name, "latents": task.latents, "status": "failed", "error": failure_message(e)[0]})


def worker_main(index: int, device: str, destination, options: BatchOptions, tasks, results) -> None:
    """Worker ``index``: load the VAE on ``device``, then decode tasks from ``tasks`` until None."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; Ctrl-C reaches the whole group
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = load_vae(options.vae, arch=options.arch, dtype=options.dtype, device=device, seed=options.seed)
    except FramepipeError as e:
        results.put({"worker_error": f"{device}: {e}"})
        return

    def take() -> BatchTask | None:
        task = tasks.get()
        if task is not None:  # the driver counts it as this worker's until its result comes
            results.put({"started": task.name, "worker": index})
        return task

    with work_folder("framepipe-batch-") as work:
        decode_all(take, results.put, destination, options, vae, work)


def _run_workers(tasks, destination, options: BatchOptions, devices: list[str], finish) -> None:
    ctx = multiprocessing.get_context("spawn")
    work, results = ctx.Queue(), ctx.Queue()
    for task in tasks:
        work.put(task)
    for _ in devices:
        work.put(None)
    workers = [ctx.Process(target=worker_main, args=(i, d, destination, options, work, results), daemon=True,
                           name=f"framepipe-batch-{i}") for i, d in enumerate(devices)]  # fmt: skip
    by_name = {t.name: t for t in tasks}
    in_flight: dict[int, list[str]] = {i: [] for i in range(len(workers))}  # worker -> the videos it holds
    remaining = len(tasks)
    try:
        for w in workers:
            w.start()
        while remaining:
            try:
                message = results.get(timeout=0.5)
            except queue.Empty:
                for i, (w, device) in enumerate(zip(workers, devices, strict=True)):
                    while not w.is_alive() and in_flight[i]:  # died mid-video: its videos failed
                        name = in_flight[i].pop(0)
                        remaining -= 1
                        entry = {"name": name, "latents": by_name[name].latents, "status": "failed",
                                 "error": f"the worker on {device} died (exit code {w.exitcode})"}  # fmt: skip
                        if not finish(entry):
                            return
                if not any(w.is_alive() for w in workers):
                    raise DeviceError("Every batch worker has stopped; see the errors above.") from None
                continue
            if "worker_error" in message:
                raise DeviceError(message["worker_error"])
            if "started" in message:
                in_flight[message["worker"]].append(message["started"])
                continue
            for names in in_flight.values():
                if message["name"] in names:
                    names.remove(message["name"])
            remaining -= 1
            if not finish(message):
                return
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(timeout=5)
        work.cancel_join_thread()
        results.cancel_join_thread()
