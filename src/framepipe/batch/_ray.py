"""A batch on a Ray cluster: one decoder actor per GPU, each streaming the videos it asks for.

Each actor runs the same device worker as a local GPU (``decode_all``): the next video decodes
while the last one's encoder drains. Actors ask a small dispatcher actor, on the driver's node, for
one video at a time (so a busy actor never holds a queued video while another idles), and the
dispatcher knows which videos each actor holds. When an actor's process or node dies, Ray restarts
the actor where there is room, and the videos it held go back to the front of the queue, for any
actor (at most ``RETRIES`` times each). The driver alone writes the journal, so the batch keeps its
journal's guarantees. Inputs and outputs are paths every node sees (shared storage) or object-store
URLs. ``RayDecoder`` is also a callable class for Ray Data:
``ds.map_batches(RayDecoder, fn_constructor_kwargs=..., batch_size=1, ...)``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import DeviceError, SettingsError, first_line, traceback_message
from .._optional import require
from .._paths import work_folder
from ._destination import open_batch_destination
from ._plan import BatchTask
from ._task import BatchOptions, decode_all, decode_task

#: What a Ray Data batch returns per row: the journal entry's fields.
RESULT_FIELDS = ("name", "latents", "status", "output", "bytes", "sha256", "seconds", "frames", "error")
RETRIES = 3  # a video whose actor dies goes back to the queue at most this many times
POLL_S = 0.2  # how often the driver collects results
# An actor Ray is restarting answers "unavailable" until it is back (its model loading, on a busy
# machine for many seconds): it is run again a second later, and counts as dead again only after this long.
UNAVAILABLE_S = 60.0


class RayDecoder:
    """One loaded VAE that decodes batch tasks into ``outdir`` (a Ray actor, or a Ray Data UDF)."""

    def __init__(self, outdir: str, options: Any = None, device: str | None = None) -> None:
        import torch

        from .._models import load_vae

        self.options = options or BatchOptions()
        o = self.options
        self.destination = open_batch_destination(outdir, endpoint_url=o.endpoint_url)
        self._work = work_folder("framepipe-batch-")  # left when the actor's process ends: the next run removes it
        self.work = self._work.__enter__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.vae = load_vae(o.vae, arch=o.arch, dtype=o.dtype, device=device, seed=o.seed)
        self.loaded_at = time.time()  # its start-up's end (wall clock), for the batch's summary

    def pid(self) -> int:
        return os.getpid()

    def decode(self, task: BatchTask) -> dict[str, Any]:
        return decode_task(task, self.destination, self.options, self.vae, self.work)

    def run(self, worker: int, dispatcher: Any) -> None:
        """Decode the videos ``dispatcher`` hands to ``worker`` until it has none, streamed through
        one pipeline; each one's journal entry back to the dispatcher."""
        import ray

        def take() -> BatchTask | None:
            return ray.get(dispatcher.take.remote(worker))

        def report(entry: dict[str, Any]) -> None:
            ray.get(dispatcher.report.remote(worker, entry))

        ray.get(dispatcher.loaded.remote(worker, self.loaded_at))
        decode_all(take, report, self.destination, self.options, self.vae, self.work)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data: rows with ``latents`` (a path) and optional ``name``; one result row each."""
        names = batch.get("name", [Path(str(p)).stem for p in batch["latents"]])
        rows = [self.decode(BatchTask(str(p), str(n))) for p, n in zip(batch["latents"], names, strict=True)]
        return {k: np.array([row.get(k) for row in rows], dtype=object) for k in RESULT_FIELDS}


class Dispatcher:
    """The batch's queue on the cluster: videos handed out one at a time, who holds which, and the
    results not yet collected by the driver."""

    def __init__(self, tasks: Sequence[BatchTask]) -> None:
        self.todo = deque(tasks)
        self.held: dict[int, dict[str, BatchTask]] = {}
        self.took: dict[int, int] = {}  # videos each worker took since its last start
        self.results: list[dict[str, Any]] = []
        self.loads: list[tuple[str, float]] = []  # (worker, when its model was loaded), not yet collected
        self.stopped = False

    def take(self, worker: int) -> BatchTask | None:
        if self.stopped or not self.todo:
            return None
        task = self.todo.popleft()
        self.held.setdefault(worker, {})[task.name] = task
        self.took[worker] = self.took.get(worker, 0) + 1
        return task

    def report(self, worker: int, entry: dict[str, Any]) -> None:
        self.held.get(worker, {}).pop(entry["name"], None)
        self.results.append({**entry, "worker": f"ray-{worker}"})

    def loaded(self, worker: int, at: float) -> None:
        self.loads.append((f"ray-{worker}", at))

    def collect(self) -> tuple[list[dict[str, Any]], list[tuple[str, float]]]:
        """The results, and the workers' loading times, since the last call."""
        results, loads, self.results, self.loads = self.results, self.loads, [], []
        return results, loads

    def release(self, worker: int) -> tuple[list[BatchTask], int]:
        """The videos a dead worker held, no longer its own, and how many it took in its life."""
        return list(self.held.pop(worker, {}).values()), self.took.pop(worker, 0)

    def requeue(self, tasks: Sequence[BatchTask]) -> None:
        self.todo.extendleft(reversed(tasks))

    def waiting(self) -> int:
        """Videos in the queue that a worker would be handed now."""
        return 0 if self.stopped else len(self.todo)

    def stop(self) -> None:
        self.stopped = True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """``SettingsError`` at once when ``address`` is ``host:port`` and nothing listens there (Ray
    itself retries for minutes before it gives up)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SettingsError(
            f"Cannot join the Ray cluster at {address!r}: nothing answers there ({e.strerror or e}); "
            "start one with `ray start --head`, or give its head's address."
        ) from e


def run_on_ray(
    tasks: Sequence[BatchTask],
    outdir: str,
    options: Any,
    finish: Callable[[dict[str, Any]], bool],
    *,
    address: str,
    workers: int | None = None,
    loaded: Callable[[str, float], None] = lambda worker, at: None,
) -> list[str]:
    """Decode ``tasks`` on the Ray cluster at ``address`` (``"auto"``: the one this machine is part
    of); ``finish(entry)`` journals each result and says whether to go on; ``loaded(worker, at)`` is
    told when a worker's model was loaded (its node's clock). Returns the workers' names.

    ``workers``: decoder actors (default: one per GPU of the cluster, or one where it has none);
    each takes a GPU when the cluster has one per worker.
    """
    ray = require("ray", "ray")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started_here = not ray.is_initialized()
    if started_here:
        check_reachable(address)
    try:
        if started_here:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SettingsError(f"Cannot join the Ray cluster at {address!r}: {first_line(e)}") from e
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(1, gpus)
        per_worker = 1 if gpus >= count else 0
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        dispatcher = ray.remote(num_cpus=0, scheduling_strategy=here)(Dispatcher).remote(list(tasks))
        actor = ray.remote(num_gpus=per_worker, num_cpus=1, max_restarts=-1)(RayDecoder)
        actors = [actor.remote(str(outdir), options) for _ in range(count)]
        first, _ = ray.wait([a.pid.remote() for a in actors], num_returns=1)  # the others may wait for room
        try:
            ray.get(first)  # one that cannot load the VAE says so once, before any video is handed out
        except ray.exceptions.RayActorError as e:
            why = traceback_message(str(e)) or first_line(e)  # our own error's message where it was ours
            raise DeviceError(f"A Ray worker could not start: {why}") from e
        _stream(ray, actors, dispatcher, tasks, finish, loaded)
        return [f"ray:{count} worker(s), {per_worker} GPU each"]
    finally:
        if started_here:
            ray.shutdown()


def _stream(ray: Any, actors: list[Any], dispatcher: Any, tasks: Sequence[BatchTask], finish, loaded) -> None:
    """Run every actor on the dispatcher's queue until every task has its result. A dead actor's
    videos go back to the queue (``RETRIES`` times each) and the actor, restarted by Ray, runs
    again; one that dies ``RETRIES`` times in a row before it takes a video is given up (one Ray is
    still restarting counts after ``UNAVAILABLE_S``). Actors that found the queue empty run again
    whenever videos are waiting in it."""
    running = {a.run.remote(i, dispatcher): i for i, a in enumerate(actors)}
    deaths: dict[str, int] = {}
    strikes = dict.fromkeys(range(len(actors)), 0)
    idle: list[int] = []  # actors that found the queue empty
    back_at: dict[int, float] = {}  # actor -> when to run it again (Ray is restarting it)
    unreachable: dict[int, float] = {}  # actor -> since when it has answered "unavailable", taking nothing
    remaining, error = len(tasks), ""
    try:
        while remaining and (running or back_at):
            for w, at in list(back_at.items()):
                if at <= time.monotonic():
                    del back_at[w]
                    running[actors[w].run.remote(w, dispatcher)] = w
            if running:
                ended, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            else:
                ended = []
                time.sleep(POLL_S)
            results, loads = ray.get(dispatcher.collect.remote())
            for worker, at in loads:
                loaded(worker, at)
            for entry in results:
                remaining -= 1
                if not finish(entry):
                    return
            for ref in ended:
                worker = running.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(worker)  # the queue was empty when it looked
                    continue
                except ray.exceptions.RayActorError as e:
                    error = first_line(e)
                    unavailable = isinstance(e, ray.exceptions.ActorUnavailableError)
                lost, took = ray.get(dispatcher.release.remote(worker))
                again = []
                for task in lost:
                    deaths[task.name] = deaths.get(task.name, 0) + 1
                    if deaths[task.name] <= RETRIES:
                        again.append(task)
                        continue
                    remaining -= 1
                    entry = {"name": task.name, "latents": task.latents, "status": "failed",
                             "error": f"on Ray: its worker died {deaths[task.name]} times; last: {error}"}  # fmt: skip
                    if not finish(entry):
                        return
                ray.get(dispatcher.requeue.remote(again))
                if took or not unavailable:
                    unreachable.pop(worker, None)
                    strikes[worker] = 0 if took else strikes[worker] + 1
                elif time.monotonic() - unreachable.setdefault(worker, time.monotonic()) > UNAVAILABLE_S:
                    strikes[worker] += 1
                if strikes[worker] >= RETRIES:
                    continue
                if unavailable and not took:  # run again once Ray has restarted it
                    back_at[worker] = time.monotonic() + 1.0
                else:
                    running[actors[worker].run.remote(worker, dispatcher)] = worker
            # videos a dead worker held go back to the queue, before or after another found it empty
            if ended and idle and ray.get(dispatcher.waiting.remote()):
                for w in idle:
                    running[actors[w].run.remote(w, dispatcher)] = w
                idle.clear()
        if remaining:
            raise DeviceError(f"Every Ray worker has stopped with {remaining} video(s) left; last: {error}")
    finally:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(dispatcher.stop.remote())
        for a in [*actors, dispatcher]:
            ray.kill(a)
