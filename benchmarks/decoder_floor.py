"""What a Wan decode must compute and move, by layer kind, counted without a GPU: diffusers' decoder run
chunk by chunk on the meta device (shapes only), each of its ops' FLOPs (PyTorch's own formulas:
convolutions, matrix products) and the bytes it reads and writes as diffusers runs it. Then the floors
these set on a card whose peak tensor rate and memory bandwidth are given: the convolutions' FLOPs at
the peak rate, and their own inputs, weights and outputs read and written once at the bandwidth (what
would be left if every other op were fused into them).

    python benchmarks/decoder_floor.py --arch wan2.1 --size 480x832 --dtype bfloat16 --peak-tflops 989 --tbps 4.8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

import framepipe
from framepipe._source import causal_conv_count

KINDS = (  # the first kind whose words are in an op's name
    ("convolution", ("convolution",)),
    ("attention", ("mm", "attention", "softmax")),
    ("upsampling", ("upsample",)),
    ("norm", ("norm", "clamp", "div")),
    ("activation", ("silu",)),
    ("copies, cat, pad, fill", ("cat", "pad", "clone", "copy", "repeat", "stack", "fill", "zero", "index", "empty")),
)


def kind_of(name: str) -> str:
    return next((kind for kind, words in KINDS if any(w in name for w in words)), "elementwise")


def tensor_bytes(values) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor))


class Counter(TorchDispatchMode):
    """Per kind of op: how many ran, their FLOPs, the bytes they read and wrote; views move nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"ops": 0, "flops": 0, "bytes": 0})
        self.conv_floor_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        alias = func._schema.returns[0].alias_info if func._schema.returns else None
        if alias is not None and not alias.is_write:  # a view of an input
            return out
        name = func.overloadpacket.__name__
        row = self.kinds[kind_of(name)]
        row["ops"] += 1
        if func.overloadpacket in flop_registry:
            row["flops"] += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        read = args[1] if name == "copy_" else (args, kwargs)  # copy_'s destination is written, not read
        moved = tensor_bytes(read) + tensor_bytes(out)  # in place: self read, then written
        row["bytes"] += moved
        if name == "convolution":
            self.conv_floor_bytes += moved
        return out


def count(arch: str, size: tuple[int, int], frames: int, dtype: torch.dtype) -> Counter:
    """Diffusers' decoder over one video's latents, chunk by chunk, on the meta device."""
    with torch.device("meta"):
        vae = framepipe.random_vae(arch).to(dtype)
    b, t, h, w = framepipe.latent_shape(vae, frames=frames, height=size[0], width=size[1])
    z = torch.empty(b, vae.config.z_dim, t, h, w, device="meta", dtype=dtype)
    cache: list = [None] * causal_conv_count(vae)
    counter = Counter()
    with torch.no_grad(), counter:
        for i in range(t):
            vae.decoder(z[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wan2.1")
    parser.add_argument("--size", default="480x832")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--peak-tflops", type=float, required=True, help="the card's dense tensor rate in --dtype")
    parser.add_argument("--tbps", type=float, required=True, help="the card's memory bandwidth, TB/s")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    counter = count(args.arch, size, args.frames, getattr(torch, args.dtype))
    kinds = {k: {"ops": int(v["ops"]), "tflop": round(v["flops"] / 1e12, 3), "gb": round(v["bytes"] / 1e9, 2)}
             for k, v in sorted(counter.kinds.items(), key=lambda kv: -kv[1]["bytes"])}  # fmt: skip
    conv_flops = counter.kinds["convolution"]["flops"]
    total_bytes = sum(v["bytes"] for v in counter.kinds.values())
    print(json.dumps({
        "arch": args.arch, "size": args.size, "frames": args.frames, "dtype": args.dtype,
        "peak_tflops": args.peak_tflops, "tbps": args.tbps, "by_kind": kinds,
        "tflop": round(sum(v["flops"] for v in counter.kinds.values()) / 1e12, 2),
        "gb_as_diffusers_runs_it": round(total_bytes / 1e9, 1),
        "floor_s": {
            "convolutions_at_peak_rate": round(conv_flops / (args.peak_tflops * 1e12), 3),
            "convolutions_bytes_once": round(counter.conv_floor_bytes / (args.tbps * 1e12), 3),
            "all_bytes_as_diffusers_runs_them": round(total_bytes / (args.tbps * 1e12), 3),
        },
    }))  # fmt: skip


if __name__ == "__main__":
    main()
