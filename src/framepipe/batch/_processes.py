"""A batch on several local devices: one worker process per device, each on its own pipe.

The driver hands out one video at a time to the worker that asks for it, so a long video does not
hold the others back, and it knows at every moment which videos each worker holds. Each worker has
a pipe of its own (nothing shared between workers): a worker killed at any moment, even halfway
through a message, breaks only its own pipe; the driver hands the videos it held to the others
(once: a video whose second worker dies too is recorded failed, for the next run). A worker that
asks while the queue is empty but others still hold videos waits for an answer, in case one of
them comes back. Only the driver writes the journal.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .._errors import DeviceError, FramepipeError
from .._models import load_vae
from .._paths import work_folder
from .._pipeline import on_device
from .._watchdog import die_with_parent
from ._plan import BatchTask
from ._task import BatchOptions, decode_all

WANT = "want"  # a worker's request for its next video; the driver answers with a task or None
LOADED = "loaded"  # a worker's word that its model is on its device (when), before its first request


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
    conn.send({LOADED: time.time()})
    sending, taking = threading.Lock(), threading.Lock()  # the worker's threads share the pipe

    def send(message: dict[str, Any]) -> None:
        with sending:
            conn.send(message)

    def take() -> BatchTask | None:
        with taking:  # one request in flight: the next message to this worker is its answer
            send({WANT: True})
            return conn.recv()

    with on_device(next(vae.parameters()).device), work_folder("framepipe-batch-") as work:
        decode_all(take, send, destination, options, vae, work)  # this process touches no other GPU


@dataclass
class _Worker:
    device: str
    label: str  # its name in the journal's entries ("worker"): the device, numbered where devices repeat
    process: Any
    conn: Connection
    held: list[BatchTask] = field(default_factory=list)  # sent to it, their results not yet back
    asking: bool = False  # waits for an answer: the queue is empty but videos held elsewhere may come back
    told_to_stop: bool = False


def run_workers(
    tasks: Sequence[BatchTask],
    destination,
    options: BatchOptions,
    devices: Sequence[str],
    finish: Callable[[dict[str, Any]], bool],
    loaded: Callable[[str, float], None] = lambda worker, at: None,
) -> None:
    """Decode ``tasks`` with one worker process per device; ``finish(entry)`` journals each result
    and says whether to go on; ``loaded(worker, at)`` is told when a worker's model is on its device.
    The videos a worker held when it died go to the others (a video whose second worker dies too is
    recorded failed). ``DeviceError`` when a worker cannot start, or every worker stopped with videos
    left."""
    ctx = multiprocessing.get_context("spawn")
    todo = deque(tasks)
    died_holding: set[str] = set()
    workers: list[_Worker] = []
    try:
        for i, device in enumerate(devices):
            conn, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(device, destination, options, child), daemon=True,
                                  name=f"framepipe-batch-{i}")  # fmt: skip
            label = device if list(devices).count(device) == 1 else f"{device}#{i}"
            workers.append(_Worker(device, label, process, conn))
            process.start()
            child.close()  # the worker holds the only other end: its death reads as end of file here
        live, ended = list(workers), workers[0]
        while live and (todo or any(w.held for w in workers)):
            for c in wait([w.conn for w in live]):
                worker = next(w for w in live if w.conn is c)
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is None:  # the worker ended
                    live.remove(worker)
                    ended = worker
                    if not _hand_back(worker, todo, died_holding, finish):
                        return
                elif "worker_error" in message:
                    raise DeviceError(message["worker_error"])
                elif LOADED in message:
                    loaded(worker.label, message[LOADED])
                elif WANT in message:
                    worker.asking = True
                else:
                    worker.held = [t for t in worker.held if t.name != message["name"]]
                    if not finish({**message, "worker": worker.label}):
                        return
                _answer(live, todo, last=not any(w.held for w in workers))
        if todo:
            raise DeviceError(f"Every batch worker has stopped (the last on {ended.device}: exit code "
                              f"{ended.process.exitcode}) with {len(todo)} video(s) not decoded; see any errors above, "
                              "then run the same command again to decode them.")  # fmt: skip
        for w in live:  # every video has its result: the next answer each one reads is None
            if not w.told_to_stop:
                w.told_to_stop = True
                with contextlib.suppress(OSError):
                    w.conn.send(None)
    finally:
        for w in workers:
            w.process.join(timeout=10 if w.told_to_stop else 0)  # let those told to stop end on their own
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5)
            w.conn.close()


def _answer(live: list[_Worker], todo: deque[BatchTask], *, last: bool) -> None:
    """Give each asking worker its next video; None once nothing is queued or held anywhere."""
    for w in live:
        if w.asking and (todo or last):
            task = todo.popleft() if todo else None
            if task is None:
                w.told_to_stop = True
            else:
                w.held.append(task)
            w.asking = False
            with contextlib.suppress(OSError):  # it died since it asked: its end of file hands the task back
                w.conn.send(task)


def _hand_back(worker: _Worker, todo: deque[BatchTask], died_holding: set[str], finish) -> bool:
    """The videos a worker that ended held: back to the front of the queue, or failed when a worker
    died holding them before; whether the batch goes on."""
    worker.process.join(timeout=5)
    again = []
    for task in worker.held:
        if task.name not in died_holding:
            died_holding.add(task.name)
            again.append(task)
            continue
        entry = {"name": task.name, "latents": task.latents, "status": "failed", "worker": worker.label,
                 "error": f"two workers died decoding it (the last on {worker.device}, exit code "
                          f"{worker.process.exitcode})"}  # fmt: skip
        if not finish(entry):
            return False
    worker.held = []
    todo.extendleft(reversed(again))
    return True


__all__ = ["run_workers", "worker_main"]
