"""Each norm + SiLU of one steady chunk of a Wan decoder, three ways: PyTorch's ops (diffusers'),
framepipe's exact fused kernel (PyTorch's bits; over 1024 channels handed PyTorch's own norms) and the
fast decoder's kernel (its own order). Per call: seconds, and each way's largest error against the
same norm computed in float64, in units of the dtype's rounding step at max(|value|, 1); then the
seconds per chunk summed. Inputs are the chunk's own activations, in the layouts and with the
deferred biases the decoder feeds the kernels.

    python benchmarks/norm_kernels.py wan2.1 bfloat16 720x1280 > norms.jsonl
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gpu_timing import mean_seconds
from steady_chunk import report_calls, steps, third_chunk_with

import framepipe._decoder as decoder
from framepipe._exact_kernels import norm_silu as exact_kernel
from framepipe._fast_kernels import norm_silu_free
from framepipe._fused import Split, norm_split, norms_given_exact, pytorch_norms
from framepipe._layouts import added, channel_first


def chunk_calls(vae, z: torch.Tensor) -> list[tuple]:
    """(x, norm, bias, out) of each norm + SiLU of the third chunk framepipe's exact decoder decodes."""
    calls = []
    plain = decoder.norm_silu

    def recorded(x, norm, out, bias=None):
        calls.append((x.clone(memory_format=torch.preserve_format), norm, bias, out))
        return plain(x, norm, out, bias)

    third_chunk_with(vae, z, decoder, "norm_silu", recorded)
    return calls


def measured(x: torch.Tensor, norm, bias: torch.Tensor | None, out: torch.Tensor) -> dict:
    """One call's row: each way's milliseconds and largest error against float64."""
    scale, gamma = float(norm.scale), norm.gamma.reshape(-1)
    y = x.double() if bias is None else x.double() + bias.double().reshape(-1, 1, 1, 1)
    want = F.silu(F.normalize(y, dim=1, eps=1e-12) * scale * gamma.double().reshape(-1, 1, 1, 1))
    del y
    ways = {"pytorch": lambda: out.copy_(F.silu(norm(channel_first(added(x.clone(), bias)))))}
    split = norm_split(x, norm, bias)
    if split is not None:
        ways["exact"] = lambda: exact_kernel(x, bias, gamma, scale, out, split)
    elif norms_given_exact(x, norm, bias):  # PyTorch's norms handed to the kernel (1024 channels)
        ways["exact"] = lambda: exact_kernel(x, bias, gamma, scale, out, Split(1), pytorch_norms(x, bias))
    ways["fast"] = lambda: norm_silu_free(x, bias, gamma, scale, out)
    row = {"shape": list(x.shape), "x_strides": list(x.stride()), "out_strides": list(out.stride()),
           "bias": bias is not None, "split": split}  # fmt: skip
    for name, run in ways.items():
        row[f"{name}_ms"] = round(mean_seconds(run, 10) * 1e3, 4)
        row[f"{name}_max_steps"] = round(steps(out, want), 2)
    return row


def main() -> None:
    # a chunk's "exact" total counts PyTorch's ops where the exact decoder's kernel does not apply (either way)
    report_calls(chunk_calls, measured, ("pytorch", "exact", "fast"), "pytorch")


if __name__ == "__main__":
    main()
