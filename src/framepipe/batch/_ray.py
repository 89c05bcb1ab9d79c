"""A batch on a Ray cluster: one decoder actor per GPU, videos handed out one at a time.

Ray restarts an actor whose process or node dies (on any node with room) and retries the video it
was decoding; the driver alone writes the journal, so the batch keeps its journal's guarantees.
Inputs and outputs are paths every node sees (shared storage). ``RayDecoder`` is also a callable
class for Ray Data: ``ds.map_batches(RayDecoder, fn_constructor_kwargs=..., batch_size=1, ...)``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import SettingsError
from .._optional import require
from .._paths import work_folder
from ._destination import open_batch_destination
from ._plan import BatchTask
from ._task import BatchOptions, decode_task

#: What a Ray Data batch returns per row: the journal entry's fields.
RESULT_FIELDS = ("name", "latents", "status", "output", "bytes", "sha256", "seconds", "frames", "error")


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

    def pid(self) -> int:
        return os.getpid()

    def decode(self, task: BatchTask) -> dict[str, Any]:
        return decode_task(task, self.destination, self.options, self.vae, self.work)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data: rows with ``latents`` (a path) and optional ``name``; one result row each."""
        names = batch.get("name", [Path(str(p)).stem for p in batch["latents"]])
        rows = [self.decode(BatchTask(str(p), str(n))) for p, n in zip(batch["latents"], names, strict=True)]
        return {k: np.array([row.get(k) for row in rows], dtype=object) for k in RESULT_FIELDS}


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
) -> list[str]:
    """Decode ``tasks`` on the Ray cluster at ``address`` (``"auto"``: the one this machine is part
    of); ``finish(entry)`` journals each result and says whether to go on. Returns the workers' names.

    ``workers``: decoder actors (default: one per GPU of the cluster, or one where it has none);
    each takes a GPU when the cluster has one per worker.
    """
    ray = require("ray", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        check_reachable(address)
    try:
        if started_here:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SettingsError(f"Cannot join the Ray cluster at {address!r}: {detail}") from e
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(1, gpus)
        per_worker = 1 if gpus >= count else 0
        actor = ray.remote(num_gpus=per_worker, num_cpus=1, max_restarts=-1, max_task_retries=3)(RayDecoder)
        actors = [actor.remote(str(outdir), options) for _ in range(count)]
        queue = list(tasks)
        in_flight: dict[Any, tuple[Any, BatchTask]] = {}
        idle = list(actors)
        while queue or in_flight:
            while idle and queue:
                worker, task = idle.pop(), queue.pop(0)
                in_flight[worker.decode.remote(task)] = (worker, task)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            worker, task = in_flight.pop(ref)
            try:
                entry = ray.get(ref)
            except ray.exceptions.RayError as e:  # retries spent, or the actor cannot start again
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                entry = {"name": task.name, "latents": task.latents, "status": "failed", "error": f"on Ray: {first}"}
            idle.append(worker)
            if not finish(entry):
                break
        return [f"ray:{count} worker(s), {per_worker} GPU each"]
    finally:
        if started_here:
            ray.shutdown()
