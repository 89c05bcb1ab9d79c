"""The resamplers' two copies of one steady chunk of framepipe's exact decoder, PyTorch's strided ops
against framepipe's Triton kernels: the frames upsampled 2x before each 3x3 convolution
(``_resampling.upsampled``) and, in Wan 2.2, each up block's ``DupUp3D`` shortcut added
(``_resampling.shortcut_added``). Per call: milliseconds each way, and whether their bits agree.

    python benchmarks/resampler_copies.py wan2.2 bfloat16 480x832 > resampler-copies.jsonl
"""

from __future__ import annotations

from unittest import mock

import torch
from gpu_timing import mean_seconds
from steady_chunk import report_calls, third_chunk_with

from framepipe import _resampling as resampling
from framepipe._decoder import WanDecoderStep
from framepipe._equivalence import same_bits


def chunk_calls(vae, z: torch.Tensor) -> list[tuple]:
    """("upsampled", x, pairs) and ("shortcut", module, x, shortcut, first_chunk) of each such copy in
    the third chunk framepipe's exact decoder decodes, with inputs of their own."""
    calls = []
    plain_call, plain_up = WanDecoderStep.__call__, WanDecoderStep._upsampling
    plain_add = WanDecoderStep._shortcut_added

    def upsampling(self, conv, x, pairs, way):
        calls.append(("upsampled", x.clone(memory_format=torch.preserve_format), pairs))
        return plain_up(self, conv, x, pairs, way)

    def shortcut_added(self, module, x, shortcut):
        kept = (y.clone(memory_format=torch.preserve_format) for y in (x, shortcut))
        calls.append(("shortcut", module, *kept, self.first_chunk))
        return plain_add(self, module, x, shortcut)

    def recorded(self, *args, **kwargs):
        with mock.patch.multiple(WanDecoderStep, _upsampling=upsampling, _shortcut_added=shortcut_added):
            return plain_call(self, *args, **kwargs)

    third_chunk_with(vae, z, WanDecoderStep, "__call__", recorded)
    return calls


def measured(kind: str, *args) -> dict:
    """One call's row: milliseconds with PyTorch's ops and with the kernel, and whether the bits agree."""
    if kind == "upsampled":
        x, pairs = args
        run = lambda: resampling.upsampled(x, pairs, channels_last=True)  # noqa: E731
    else:
        module, x, shortcut, first_chunk = args
        run = lambda: resampling.shortcut_added(module, x, shortcut, first_chunk)  # noqa: E731
    with mock.patch.object(resampling, "exact_kernel", lambda name: None):
        torch_ms, want = mean_seconds(run, 10) * 1e3, run()
    kernel_ms, got = mean_seconds(run, 10) * 1e3, run()
    return {"kind": kind, "shape": list(x.shape), "torch_ms": round(torch_ms, 4), "kernel_ms": round(kernel_ms, 4),
            "same_bits": same_bits(got, want) and got.stride() == want.stride()}  # fmt: skip


def main() -> None:
    report_calls(chunk_calls, measured, ("torch", "kernel"))


if __name__ == "__main__":
    main()
