"""One steady chunk of framepipe's exact decoder step, with one of its steps replaced while it runs:
for the scripts beside this file that look at each call a chunk makes (its shapes, its inputs), and
their command line and report."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
from script_inputs import machine, random_case

from framepipe._decoder import WanDecoderStep
from framepipe._source import causal_conv_count


def third_chunk_with(vae, z: torch.Tensor, owner: object, name: str, replacement: Callable) -> None:
    """Decode z's first three latent frames one chunk at a time, ``owner.name`` replaced by
    ``replacement`` during the third only: a steady chunk, the first two having filled its history."""
    plain = getattr(owner, name)
    step, cache = WanDecoderStep(vae), [None] * causal_conv_count(vae)
    for i in range(3):
        if i == 2:
            setattr(owner, name, replacement)
        try:
            step(z[:, :, i : i + 1], cache, first_chunk=i == 0)
        finally:
            setattr(owner, name, plain)


def steps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest |got - want| in units of got's dtype's rounding step at max(|want|, 1)."""
    step = torch.finfo(got.dtype).eps * want.abs().clamp_min(1.0)
    return float(((got.double() - want) / step).abs().max())


def report_calls(calls_of: Callable, measured: Callable[..., dict], ways: tuple[str, ...], fallback: str = "") -> None:
    """``ARCH DTYPE HxW`` from the command line: each call ``calls_of(vae, z)`` finds in a steady chunk,
    ``measured(*call)`` (a row with ``WAY_ms`` for each of ``ways``) printed as a JSON line, then the
    milliseconds a chunk each way (``fallback``'s where a way did not apply to a call)."""
    arch, dtype_name, size = sys.argv[1], sys.argv[2], sys.argv[3]
    vae, z = random_case(arch, dtype_name, tuple(int(n) for n in size.split("x")), 9, "cuda")  # 3 latent frames
    totals = dict.fromkeys(ways, 0.0)
    with torch.no_grad():
        for call in calls_of(vae, z):
            row = measured(*call)
            for name in totals:
                totals[name] += row[f"{name}_ms"] if f"{name}_ms" in row else row[f"{fallback}_ms"]
            print(json.dumps(row), flush=True)
    totals = {name: round(ms, 3) for name, ms in totals.items()}
    where = machine("cuda")
    print(json.dumps({"arch": arch, "dtype": dtype_name, "size": size, "device": where["device"],
                      "torch": where["torch"], "ms_per_chunk": totals}))  # fmt: skip
