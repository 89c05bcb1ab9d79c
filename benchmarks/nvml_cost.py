"""What the host calls that a job's start and end make cost: NVML's energy counter and utilization,
and torch's peak-memory calls (what made the service's accounting move its NVML reads off the
decoding thread: ``framepipe._accounting``).

    python benchmarks/nvml_cost.py --calls 200
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import pynvml
import torch


def milliseconds(call: Callable[[], object], calls: int) -> float:
    """Mean milliseconds of ``call`` over ``calls`` calls, after one untimed call."""
    call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    device = torch.device("cuda", args.gpu)
    torch.zeros(1, device=device)  # the CUDA context, made before anything is timed
    calls = {
        "nvmlDeviceGetTotalEnergyConsumption": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "nvmlDeviceGetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "torch.cuda.reset_peak_memory_stats": lambda: torch.cuda.reset_peak_memory_stats(device),
        "torch.cuda.max_memory_allocated": lambda: torch.cuda.max_memory_allocated(device),
    }
    print(f"{torch.cuda.get_device_name(device)}, {time.strftime('%Y-%m-%d')}, mean of {args.calls} calls:")
    for name, call in calls.items():
        print(f"  {name:40s} {milliseconds(call, args.calls):.4f} ms")


if __name__ == "__main__":
    main()
