"""The mid block's attention of one steady chunk of a Wan decoder, two ways: diffusers'
``WanAttentionBlock`` (PyTorch's ``scaled_dot_product_attention``) and the fast decoder's explicit
attention (``_attention.explicit_attention``). Per call: milliseconds, and each way's largest error
against the block computed in float64, in units of the dtype's rounding step at max(|value|, 1).

    python benchmarks/attention_ways.py wan2.1 bfloat16 720x1280 > attention.jsonl
"""

from __future__ import annotations

import copy

import torch
from gpu_timing import mean_seconds
from steady_chunk import report_calls, steps, third_chunk_with

from framepipe._attention import explicit_attention
from framepipe._decoder import WanDecoderStep
from framepipe._layouts import channel_first


def chunk_calls(vae, z: torch.Tensor) -> list[tuple]:
    """(block, x) of each attention of the third chunk framepipe's exact decoder decodes, x channel-first
    as the decoder hands it over."""
    calls = []
    plain = WanDecoderStep._attention

    def recorded(self, attention, x):
        calls.append((attention, channel_first(x).clone(memory_format=torch.preserve_format)))
        return plain(self, attention, x)

    third_chunk_with(vae, z, WanDecoderStep, "_attention", recorded)
    return calls


def measured(block, x: torch.Tensor) -> dict:
    """One call's row: each way's milliseconds and largest error against float64."""
    want = copy.deepcopy(block).double()(x.double())
    ways = {"sdpa": lambda: block(x), "explicit": lambda: explicit_attention(block, x)}
    row: dict = {"shape": list(x.shape)}
    for name, run in ways.items():
        row[f"{name}_ms"] = round(mean_seconds(run, 10) * 1e3, 4)
        row[f"{name}_max_steps"] = round(steps(run(), want), 2)
    return row


def main() -> None:
    report_calls(chunk_calls, measured, ("sdpa", "explicit"))


if __name__ == "__main__":
    main()
