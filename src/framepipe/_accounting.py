"""Per-job GPU accounting from NVML (the service's jobs, the batch's videos): GPU seconds, SM
utilization, peak memory, energy in joules.

Energy comes from the GPU's own counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since
the driver loaded), utilization from sampling ``nvmlDeviceGetUtilizationRates`` every 50 ms while
the job runs. Without a GPU or NVML every figure is None ("not measured"), never zero.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


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


class GpuMeter:
    """Measures the jobs run on one device, one at a time: ``start()`` before, ``stop()`` after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.nvml = pynvml
            except Exception:  # no NVML library or no permission: the figures stay "not measured"
                self.handle = None

    def _energy_mj(self) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # older GPUs have no energy counter
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._samples.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            except Exception:
                return

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if self.device.type != "cuda":
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        if self.handle is not None:
            self._energy0 = self._energy_mj()
            self._samples: list[float] = []
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, name="framepipe-nvml", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the sampler if a measurement is still running (a job that failed midway)."""
        stop = getattr(self, "_stop", None)
        if stop is not None and not stop.is_set():
            stop.set()
            self._thread.join()

    def stop(self) -> JobAccount:
        seconds = time.perf_counter() - self._t0
        if self.device.type != "cuda":
            return JobAccount()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        account = JobAccount(gpu_seconds=round(seconds, 4), peak_memory_bytes=peak)
        if self.handle is not None:
            self._stop.set()
            self._thread.join()
            energy = self._energy_mj()
            if energy is not None and self._energy0 is not None:
                account.energy_joules = round((energy - self._energy0) / 1000, 3)
            if self._samples:
                account.sm_utilization_mean = round(sum(self._samples) / len(self._samples), 1)
                account.sm_utilization_peak = max(self._samples)
        return account
