"""Per-job GPU accounting from NVML (the service's jobs, the batch's videos): GPU seconds, SM
utilization, peak memory, energy in joules.

Energy comes from the GPU's own counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since
the driver loaded), utilization from sampling ``nvmlDeviceGetUtilizationRates`` every 50 ms. A job's
figures cover an interval between two ``Mark``s, so jobs that follow each other through one stream
are accounted back to back, without overlap. NVML is called from the meter's own thread only: a
mark taken on the decoding thread (before a video's first chunk, after its last) asks that thread
for the energy counter and goes on, so the GPU never waits for the driver's answer. Without a GPU
or NVML every figure is None ("not measured"), never zero.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch

_SAMPLE_S = 0.05
_PEAK_SAMPLES = 72_000  # an hour of samples kept for peaks; means use running sums, whatever the length
_READING_WAIT_S = 5.0  # how long an account waits for a mark's energy reading before it says "not measured"


@dataclass
class JobAccount:
    """What one job used. None: not measured (no GPU, or NVML cannot say)."""

    gpu_seconds: float | None = None
    sm_utilization_mean: float | None = None
    sm_utilization_peak: float | None = None
    peak_memory_bytes: int | None = None
    energy_joules: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyReading:
    """The energy counter as the meter's thread read it just after a mark (None: not measured)."""

    def __init__(self) -> None:
        self.read = threading.Event()
        self.value: int | None = None

    def set(self, value: int | None) -> None:
        self.value = value
        self.read.set()

    def wait(self) -> int | None:
        return self.value if self.read.wait(_READING_WAIT_S) else None


@dataclass(frozen=True)
class Mark:
    """A moment on one device: the time, the utilization samples so far, and its energy reading
    (None: not measured)."""

    time: float
    samples: int
    utilization_sum: float
    reading: EnergyReading | None = None

    @property
    def energy_mj(self) -> int | None:
        """The energy counter at this mark, waiting for the meter's thread to have read it."""
        return None if self.reading is None else self.reading.wait()


class GpuMeter:
    """Measures one device: ``mark()`` a moment, ``account(since, until)`` the interval between two;
    or ``start()`` and ``stop()`` around one job. ``close()`` stops the sampler thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.handle = None
        self._lock = threading.Lock()
        self._count, self._sum = 0, 0.0
        self._recent: deque[tuple[int, float]] = deque(maxlen=_PEAK_SAMPLES)  # (sample number, value)
        self._stop = threading.Event()
        self._readings: queue.SimpleQueue[EnergyReading | None] = queue.SimpleQueue()  # None: stop
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.nvml = pynvml
            except Exception:  # no NVML library or no permission: the figures stay "not measured"
                self.handle = None
        if self.handle is not None:
            self._thread = threading.Thread(target=self._sample, name="framepipe-nvml", daemon=True)
            self._thread.start()

    def _energy_mj(self) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # older GPUs have no energy counter
            return None

    def _sample(self) -> None:
        """The meter's thread: the energy counter for each mark as it comes, utilization every 50 ms."""
        due, sampling = time.perf_counter(), True
        while True:
            try:
                reading = self._readings.get(timeout=max(0.0, due - time.perf_counter()) if sampling else None)
            except queue.Empty:
                due += _SAMPLE_S
                try:
                    value = float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
                except Exception:  # utilization no longer readable: the means stop here, energy goes on
                    sampling = False
                    continue
                with self._lock:
                    self._count += 1
                    self._sum += value
                    self._recent.append((self._count, value))
                continue
            if reading is None:
                return
            reading.set(self._energy_mj())

    def mark(self) -> Mark:
        """Now, on this device (host time; the caller knows which GPU work has finished by then). The
        energy counter is read by the meter's thread, so this does not wait for NVML."""
        now = time.perf_counter()
        reading = None
        if self._thread is not None and not self._stop.is_set():
            reading = EnergyReading()
            self._readings.put(reading)
        with self._lock:
            return Mark(now, self._count, self._sum, reading)

    def account(self, since: Mark, until: Mark, *, peak_memory_bytes: int | None = None) -> JobAccount:
        """The device's use between two marks; ``peak_memory_bytes`` as the caller measured it."""
        if self.device.type != "cuda":
            return JobAccount()
        account = JobAccount(gpu_seconds=round(until.time - since.time, 4), peak_memory_bytes=peak_memory_bytes)
        before, after = since.energy_mj, until.energy_mj  # each may wait for the meter's thread's reading
        if before is not None and after is not None:
            account.energy_joules = round((after - before) / 1000, 3)
        samples = until.samples - since.samples
        if samples > 0:
            account.sm_utilization_mean = round((until.utilization_sum - since.utilization_sum) / samples, 1)
            with self._lock:
                inside = [v for n, v in self._recent if since.samples < n <= until.samples]
            account.sm_utilization_peak = max(inside) if inside else None
        return account

    def start(self) -> None:
        """Begin measuring one job (its peak memory from here)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._since = self.mark()

    def stop(self) -> JobAccount:
        """The job begun with ``start()``, once the device has finished its work."""
        if self.device.type != "cuda":
            return JobAccount()
        torch.cuda.synchronize(self.device)
        return self.account(self._since, self.mark(), peak_memory_bytes=torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        """Stop the sampler thread (safe to call more than once)."""
        self._stop.set()
        if self._thread is not None:
            self._readings.put(None)  # after the readings already asked for
            self._thread.join()
