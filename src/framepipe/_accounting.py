"""Per-job GPU accounting from NVML (the service's jobs, the batch's videos): GPU seconds, SM
utilization, peak memory, energy in joules.

Energy comes from the GPU's own counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since
the driver loaded), utilization from sampling ``nvmlDeviceGetUtilizationRates`` every 50 ms. A job's
figures cover an interval between two ``Mark``s, so jobs that follow each other through one stream
are accounted back to back, without overlap. Without a GPU or NVML every figure is None ("not
measured"), never zero.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch

_SAMPLE_S = 0.05
_PEAK_SAMPLES = 72_000  # an hour of samples kept for peaks; means use running sums, whatever the length


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


@dataclass(frozen=True)
class Mark:
    """A moment on one device: the time, its energy counter, the utilization samples so far."""

    time: float
    energy_mj: int | None
    samples: int
    utilization_sum: float


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
        while not self._stop.wait(_SAMPLE_S):
            try:
                value = float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            except Exception:
                return
            with self._lock:
                self._count += 1
                self._sum += value
                self._recent.append((self._count, value))

    def mark(self) -> Mark:
        """Now, on this device (host time; the caller knows which GPU work has finished by then)."""
        energy = self._energy_mj() if self.handle is not None else None
        with self._lock:
            return Mark(time.perf_counter(), energy, self._count, self._sum)

    def account(self, since: Mark, until: Mark, *, peak_memory_bytes: int | None = None) -> JobAccount:
        """The device's use between two marks; ``peak_memory_bytes`` as the caller measured it."""
        if self.device.type != "cuda":
            return JobAccount()
        account = JobAccount(gpu_seconds=round(until.time - since.time, 4), peak_memory_bytes=peak_memory_bytes)
        if since.energy_mj is not None and until.energy_mj is not None:
            account.energy_joules = round((until.energy_mj - since.energy_mj) / 1000, 3)
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
            self._thread.join()
