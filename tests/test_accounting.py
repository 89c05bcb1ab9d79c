"""The GPU meter against a stand-in NVML whose calls are slow, so it runs without a GPU."""

import sys
import threading
import time
import types

import torch

from framepipe._accounting import GpuMeter


def slow_nvml(delay_s: float) -> types.ModuleType:
    """A ``pynvml`` whose energy counter grows 1 J per call and answers after ``delay_s``; utilization 40 %."""
    nvml = types.ModuleType("pynvml")
    energy = {"mj": 0}
    nvml.callers = set()

    def energy_mj(handle):
        nvml.callers.add(threading.current_thread().name)
        time.sleep(delay_s)
        energy["mj"] += 1000
        return energy["mj"]

    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: object()
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy_mj
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=40)
    return nvml


def test_a_mark_does_not_wait_for_nvml_and_the_account_has_its_readings(monkeypatch):
    nvml = slow_nvml(0.2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    meter = GpuMeter(torch.device("cuda", 0))  # no CUDA call is made for a device with an index
    try:
        asked = time.perf_counter()
        since = meter.mark()
        assert time.perf_counter() - asked < 0.1  # the reading is the meter thread's to wait for
        time.sleep(0.3)
        until = meter.mark()
        account = meter.account(since, until)
    finally:
        meter.close()
    assert nvml.callers == {"framepipe-nvml"}
    assert account.energy_joules == 1.0  # two readings, one counter step apart
    assert 0.3 <= account.gpu_seconds < 0.4
    assert account.sm_utilization_mean == 40.0 and account.sm_utilization_peak == 40.0
    assert not any(t.name == "framepipe-nvml" for t in threading.enumerate())


def test_without_nvml_nothing_is_measured_and_nothing_is_zero():
    meter = GpuMeter(torch.device("cpu"))
    account = meter.account(meter.mark(), meter.mark())
    meter.close()
    assert all(value is None for value in account.to_dict().values())
