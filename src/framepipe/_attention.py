"""The mid block's attention for the fast decoder: diffusers' ``WanAttentionBlock`` with its softmax
attention computed as two batched matrix products around a float32 softmax, queries in blocks.

Wan's one head has as many channels as the block (384 in Wan 2.1), more than PyTorch's flash
kernels take (256), so ``scaled_dot_product_attention`` runs its memory-efficient kernel: 0.055 s of
a 1.64 s fast bf16 decode at 720x1280 on an H200 (profiled, 2026-12-01). Here the scores are
float32 products of the bf16 values (cuBLAS, ``out_dtype``), as the fused kernels keep them."""

from __future__ import annotations

import torch

ROWS = 4096  # queries a block: a [ROWS, H * W] float32 block of scores at a time


def scores(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """q @ kt in float32 (bf16 products accumulated in float32 on CUDA, without rounding to bf16)."""
    if q.is_cuda and q.dtype != torch.float32:
        return torch.bmm(q, kt, out_dtype=torch.float32)
    return torch.bmm(q.float(), kt.float())


def explicit_attention(block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a ``WanAttentionBlock`` and x [B, C, T, H, W] as diffusers holds it, the
    attention over each frame's pixels computed explicitly (not the same bits as diffusers')."""
    b, c, t, h, w = x.shape
    frames = block.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    q, k, v = block.to_qkv(frames).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each [B * T, H * W, C]
    kt, out = k.transpose(1, 2), torch.empty_like(q)
    for start in range(0, q.shape[1], ROWS):
        weights = torch.softmax(scores(q[:, start : start + ROWS], kt).mul_(c**-0.5), dim=-1)
        out[:, start : start + ROWS] = torch.bmm(weights.to(v.dtype), v)
        del weights
    y = block.proj(out.transpose(1, 2).reshape(b * t, c, h, w))
    return y.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x
