"""``Loader``: batches from a ``ShardedDataset``, pinned and copied to the GPU ahead of use.

Worker processes read and collate; DataLoader pins each batch; the next batch's host-to-device
copy runs on a separate copy stream while the training step uses the current one, and the
compute stream waits on the copy's event only when it takes the batch (the frame pipeline's
stream discipline, run the other way). A loader thread does all of this, ``ahead`` batches in
advance, so the training loop's ``next()`` only takes a finished batch from a queue.
``state_dict`` records the epoch and the batches taken, so a restarted run continues at the
same batch. The workers fork with Python's collector kept off the parent's objects
(``gc_frozen_for_fork``), so no worker runs the parent's finalizers.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .._errors import DataError, traceback_message
from ._dataset import ShardedDataset

_END = object()


@contextlib.contextmanager
def gc_frozen_for_fork() -> Iterator[None]:
    """Python's collector kept off every object that exists while DataLoader forks its workers: a worker
    that collected the parent's garbage would run its finalizers there, and one that waits on a lock or
    a thread of the parent's hangs it (a full test run's feed-bench worker hung inside a collection).
    The parent's objects go back to its collector afterwards, unless some were frozen before."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


@dataclass
class LoaderStats:
    batches: int = 0
    wait_seconds: float = 0.0  # time the caller spent blocked in next()


def _to_device(batch, device: torch.device, compute: torch.cuda.Stream):
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        out.record_stream(compute)  # allocated on the copy stream, used on compute: free after both
        return out
    if isinstance(batch, dict):
        return {k: _to_device(v, device, compute) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, compute) for v in batch)
    return batch


def _clean(error: DataError) -> DataError:
    """DataLoader re-raises a worker's error with its traceback in the message; keep the last line."""
    message = traceback_message(str(error))
    return type(error)(message if message is not None else str(error).strip().splitlines()[-1])


class Loader:
    """Iterate batches of ``dataset``; each ``iter()`` is one epoch (or the rest of one)."""

    def __init__(
        self,
        dataset: ShardedDataset,
        *,
        batch_size: int,
        num_workers: int = 4,
        device: str | torch.device | None = None,
        prefetch_factor: int = 4,
        ahead: int = 2,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, not {batch_size}")
        self.dataset = dataset
        dataset.batch_size = batch_size
        self.num_workers, self.ahead = num_workers, max(1, ahead)
        self.device = torch.device(device) if device is not None else None
        cuda = self.device is not None and self.device.type == "cuda"
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=num_workers, pin_memory=cuda,
            prefetch_factor=prefetch_factor if num_workers else None,
            pin_memory_device=str(self.device) if cuda else "",
        )  # fmt: skip
        self.epoch, self.batches = 0, 0
        self.stats = LoaderStats()
        if num_workers:  # the workers' skipped shards come back to dataset.skipped, in this process
            dataset.skip_reports = multiprocessing.get_context().SimpleQueue()

    def state_dict(self) -> dict:
        """Where this loader is (epoch, batches taken), and the settings that define the order."""
        return {"epoch": self.epoch, "batches": self.batches, **self._order_settings()}

    def _order_settings(self) -> dict:
        d = self.dataset
        return {"seed": d.seed, "shuffle": d.shuffle, "world_size": d.world_size, "rank": d.rank,
                "num_workers": self.num_workers, "batch_size": d.batch_size, "samples": d.index.num_samples,
                "drop_last": d.drop_last, "equal_batches": d.equal_batches}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key, mine in self._order_settings().items():
            if state.get(key) != mine:
                raise DataError(f"cannot resume: the saved state has {key}={state.get(key)!r}, this loader {mine!r}")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self.dataset.epoch = self.epoch

    def __iter__(self) -> Iterator:
        d = self.dataset
        d.epoch, d.resume_batches = self.epoch, self.batches
        cuda = self.device is not None and self.device.type == "cuda"
        compute = torch.cuda.current_stream(self.device) if cuda else None
        ready_batches: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()
        # The workers fork here, in the caller's thread, not in the loader thread: a child forked from a
        # side thread while another holds a lock (logging, malloc, an import) can hang on its first use
        # of it; and an error starting them is the caller's at once, not a loader thread's that died.
        with gc_frozen_for_fork():
            batches = iter(self._loader)
        thread = threading.Thread(target=self._fill, args=(batches, ready_batches, stop, compute), daemon=True,
                                  name="framepipe-loader")  # fmt: skip
        thread.start()
        try:
            while True:
                start = time.perf_counter()
                item = ready_batches.get()
                self.stats.wait_seconds += time.perf_counter() - start
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch, ready = item
                self._gather_skipped()
                if ready is not None:
                    compute.wait_event(ready)  # the GPU, not the host, waits for the copy
                self.batches += 1
                self.stats.batches += 1
                yield batch
            self.epoch, self.batches = self.epoch + 1, 0
        finally:
            stop.set()
            while thread.is_alive():  # let a blocked put() finish, then the thread sees stop
                with contextlib.suppress(queue.Empty):
                    ready_batches.get(timeout=0.05)
            thread.join()
            del batches  # with the loader thread's reference gone: stops the worker processes now
            self._gather_skipped()

    def _gather_skipped(self) -> None:
        """Bring the shards the workers skipped into ``dataset.skipped``, warning here, once each."""
        reports = self.dataset.skip_reports
        while reports is not None and not reports.empty():
            name = reports.get()
            self.dataset.skipped.append(name)
            warnings.warn(f"a loader worker skipped shard {name} (on_error='skip')", UserWarning, stacklevel=3)

    def _fill(self, it: Iterator, out: queue.Queue, stop: threading.Event, compute) -> None:
        """The loader thread: take batches from the workers (``it``), start their copy to the GPU, queue
        them."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        copy = torch.cuda.Stream(self.device) if compute is not None else None
        try:
            for batch in it:
                ready = None
                if copy is not None:
                    with torch.cuda.stream(copy):
                        batch = _to_device(batch, self.device, compute)
                        ready = torch.cuda.Event()
                        ready.record(copy)
                if not put((batch, ready)):
                    return
            put(_END)
        except DataError as e:
            put(_clean(e))
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
        finally:
            del it  # an error handed to the caller keeps this frame; the caller's reference goes last
