"""What the card's power limit does to a timed run: its mean power (NVML's energy counter), its mean
SM clock and the share of the run the card held its clocks back for power (both sampled every few
milliseconds on a thread of its own), and NVML's count of time throttled for power."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from gpu_timing import timed

from framepipe._accounting import GpuMeter

SW_POWER_CAP, HW_SLOWDOWN, HW_POWER_BRAKE = 0x4, 0x8, 0x80  # NVML's clocks event reasons (bits)


class PowerWatch:
    """``run(fn)`` times ``fn`` as ``gpu_timing.timed`` does and says what the card drew meanwhile."""

    def __init__(self, meter: GpuMeter, period_s: float = 0.002) -> None:
        self.meter, self.period_s = meter, period_s
        self.nvml = getattr(meter, "nvml", None)
        self.handle = meter.handle

    def limit_watts(self) -> float | None:
        """The card's enforced power limit in watts (None: NVML cannot tell)."""
        try:
            return None if self.handle is None else self.nvml.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1000
        except Exception:  # not on this card: the figure is left out
            return None

    def max_sm_mhz(self) -> int | None:
        """The card's top SM clock (None: NVML cannot tell)."""
        try:
            return None if self.handle is None else int(self.nvml.nvmlDeviceGetMaxClockInfo(self.handle, 1))
        except Exception:  # not on this card: the figure is left out
            return None

    def _throttled_ns(self) -> int | None:
        try:
            status = self.nvml.nvmlDeviceGetViolationStatus(self.handle, self.nvml.NVML_PERF_POLICY_POWER)
            return int(status.violationTime)
        except Exception:  # no violation counter here: the share is left out
            return None

    def _reasons(self) -> int:
        get = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or (
            self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons)  # fmt: skip
        return int(get(self.handle))

    def run(self, fn: Callable[[], object]) -> tuple[float, dict]:
        """Seconds ``fn`` took, and {watts, sm_mhz, power_capped_share, power_throttled_share}, each
        None where NVML gave nothing."""
        if self.handle is None:
            return timed(fn), {}
        samples: list[tuple[int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append((int(self.nvml.nvmlDeviceGetClockInfo(self.handle, 1)), self._reasons()))
                except Exception:  # unreadable here: no samples
                    return
                time.sleep(self.period_s)

        torch.cuda.synchronize()
        before, throttled = self.meter.mark(), self._throttled_ns()
        thread = threading.Thread(target=sample, name="power-watch", daemon=True)
        thread.start()
        try:
            seconds = timed(fn)
        finally:
            stop.set()
            thread.join()
        after, throttled_after = self.meter.mark(), self._throttled_ns()
        start, end = before.energy_mj, after.energy_mj
        figures: dict = {"watts": None if start is None or end is None else round((end - start) / 1000 / seconds, 1)}
        if samples:
            capped = SW_POWER_CAP | HW_SLOWDOWN | HW_POWER_BRAKE
            figures["sm_mhz"] = round(sum(c for c, _ in samples) / len(samples))
            figures["power_capped_share"] = round(sum(bool(r & capped) for _, r in samples) / len(samples), 3)
        if throttled is not None and throttled_after is not None:
            figures["power_throttled_share"] = round((throttled_after - throttled) / 1e9 / seconds, 3)
        return seconds, figures


def alternated(ways: dict[str, Callable[[], object]], runs: int, device: torch.device) -> dict:
    """Each of ``ways`` run ``runs`` times, alternated so that drift hits all alike, each run timed with
    what the card drew (``PowerWatch.run``): {"seconds": {name: [s, ...]}, "power": {name: [figures,
    ...]}, "power_limit_watts": W, "max_sm_mhz": MHz}."""
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    power: dict[str, list[dict]] = {name: [] for name in ways}
    meter = GpuMeter(device)
    try:
        watch = PowerWatch(meter)
        for _ in range(runs):
            for name, run in ways.items():
                took, figures = watch.run(run)
                seconds[name].append(took)
                power[name].append(figures)
        return {"seconds": seconds, "power": power, "power_limit_watts": watch.limit_watts(),
                "max_sm_mhz": watch.max_sm_mhz()}  # fmt: skip
    finally:
        meter.close()
