"""A batch on several local devices: one worker process per device, each on its own pipe.

The driver hands out one video at a time to the worker that asks for it, so a long video does not
hold the others back, and it knows at every moment which videos each worker holds. Each worker has
a pipe of its own (nothing shared between workers): a worker killed at any moment, even halfway
through a message, breaks only its own pipe, and the driver records the videos it held as failed
(the next run redoes them) while the others go on. Only the driver writes the journal.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .._errors import DeviceError, FramepipeError
from .._models import load_vae
from .._paths import work_folder
from .._watchdog import die_with_parent
from ._plan import BatchTask
from ._task import BatchOptions, decode_all

WANT = "want"  # a worker's request for its next video; the driver answers with a task or None


def worker_main(device: str, destination, options: BatchOptions, conn: Connection) -> None:
    """A worker process: load the VAE on ``device``, then decode the videos the driver sends over
    ``conn`` until it sends None, each one's journal entry sent back over ``conn``."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; Ctrl-C reaches the whole group
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = load_vae(options.vae, arch=options.arch, dtype=options.dtype, device=device, seed=options.seed)
    except FramepipeError as e:
        conn.send({"worker_error": f"{device}: {e}"})
        return
    sending, taking = threading.Lock(), threading.Lock()  # the worker's threads share the pipe

    def send(message: dict[str, Any]) -> None:
        with sending:
            conn.send(message)

    def take() -> BatchTask | None:
        with taking:  # one request in flight: the next message to this worker is its answer
            send({WANT: True})
            return conn.recv()

    with work_folder("framepipe-batch-") as work:
        decode_all(take, send, destination, options, vae, work)


@dataclass
class _Worker:
    device: str
    process: Any
    conn: Connection
    held: list[str] = field(default_factory=list)  # the videos sent to it whose results have not come


def run_workers(
    tasks: Sequence[BatchTask],
    destination,
    options: BatchOptions,
    devices: Sequence[str],
    finish: Callable[[dict[str, Any]], bool],
) -> None:
    """Decode ``tasks`` with one worker process per device; ``finish(entry)`` journals each result
    and says whether to go on. ``DeviceError`` when a worker cannot start, or every worker stopped
    with videos left."""
    ctx = multiprocessing.get_context("spawn")
    todo = deque(tasks)
    latents = {t.name: t.latents for t in tasks}
    workers: list[_Worker] = []
    try:
        for i, device in enumerate(devices):
            conn, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(device, destination, options, child), daemon=True,
                                  name=f"framepipe-batch-{i}")  # fmt: skip
            workers.append(_Worker(device, process, conn))
            process.start()
            child.close()  # the worker holds the only other end: its death reads as end of file here
        live = list(workers)
        while live and (todo or any(w.held for w in workers)):
            for c in wait([w.conn for w in live]):
                worker = next(w for w in live if w.conn is c)
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):  # the worker ended; the videos it held are lost with it
                    live.remove(worker)
                    if not _fail_held(worker, latents, finish):
                        return
                    continue
                if "worker_error" in message:
                    raise DeviceError(message["worker_error"])
                if WANT in message:
                    task = todo.popleft() if todo else None
                    if task is not None:
                        worker.held.append(task.name)
                    worker.conn.send(task)
                    continue
                worker.held.remove(message["name"])
                if not finish(message):
                    return
        if todo:
            raise DeviceError("Every batch worker has stopped; see the errors above.")
    finally:
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5)
            w.conn.close()


def _fail_held(worker: _Worker, latents: dict[str, str], finish: Callable[[dict[str, Any]], bool]) -> bool:
    """Record the videos a worker that ended still held as failed; whether the batch goes on."""
    worker.process.join(timeout=5)
    while worker.held:
        name = worker.held.pop(0)
        entry = {"name": name, "latents": latents[name], "status": "failed",
                 "error": f"the worker on {worker.device} died (exit code {worker.process.exitcode})"}  # fmt: skip
        if not finish(entry):
            return False
    return True


__all__ = ["run_workers", "worker_main"]
