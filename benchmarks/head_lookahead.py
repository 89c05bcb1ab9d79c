"""Tried, and removed (no gain): the decoder's first stages (conv_in, mid block, up block 0) of latent
frame k+1 on a second, high-priority CUDA stream while the rest of frame k runs, against the serial
step; and, with ``--stages``, GPU seconds and convolution TFLOP/s per stage of the serial step.

    python benchmarks/head_lookahead.py wan2.2:bfloat16:480x832:-1 wan2.1:bfloat16:480x832:-1
    python benchmarks/head_lookahead.py --stages wan2.2:bfloat16:480x832:0
"""

# ruff: noqa
import json, sys, time
import torch
from script_inputs import random_case
from framepipe import to_uint8_frames
from collections import defaultdict
from framepipe._decoder import WanDecoderStep, copy_of
from framepipe._layouts import added
from framepipe._source import decode_chunks
from framepipe._equivalence import same_bits


class Split(WanDecoderStep):
    def head(self, x, cache, first_chunk):
        self.first_chunk = first_chunk
        d = self.decoder
        idx = [0]
        x = added(*self._causal_conv(d.conv_in, copy_of(x), x, d.conv_in.in_channels, cache, idx))
        x = self._residual(d.mid_block.resnets[0], x, cache, idx)
        for attention, resnet in zip(d.mid_block.attentions, d.mid_block.resnets[1:], strict=True):
            x = self._attention(attention, x)
            x = self._residual(resnet, x, cache, idx)
        x = self._block(d.up_blocks[0], x, cache, idx)
        return x, idx[0]

    def _block(self, block, x, cache, idx):
        shortcut = x
        for resnet in block.resnets:
            x = self._residual(resnet, x, cache, idx)
        ups = getattr(block, "upsamplers", None)
        sampler = ups[0] if ups is not None else getattr(block, "upsampler", None)
        if sampler is not None:
            x = self._resample(sampler, x, cache, idx)
        if getattr(block, "avg_shortcut", None) is not None:
            x = self._shortcut_added(block.avg_shortcut, x, shortcut)
        return x

    def tail(self, x, n, cache, first_chunk):
        self.first_chunk = first_chunk
        d = self.decoder
        idx = [n]
        for block in d.up_blocks[1:]:
            x = self._block(block, x, cache, idx)
        fill = self._norm_silu(d.norm_out, x)
        x = added(*self._causal_conv(d.conv_out, fill, x, x.shape[1], cache, idx))
        return x.contiguous()


@torch.inference_mode()
def pipelined(vae, z, step, side):
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
    from framepipe._source import causal_conv_count

    main = torch.cuda.current_stream()
    cache = [None] * causal_conv_count(vae)
    x = vae.post_quant_conv(z)
    n = x.shape[2]
    ready = torch.cuda.Event()
    side.wait_stream(main)

    def head(i):
        with torch.cuda.stream(side):
            h, k = step.head(x[:, :, i : i + 1], cache, i == 0)
            ev = torch.cuda.Event()
            ev.record(side)
        return h, k, ev

    nxt = head(0)
    for i in range(n):
        h, k, ev = nxt
        main.wait_event(ev)
        h.record_stream(main)
        out = step.tail(h, k, cache, i == 0)
        del h
        if i + 1 < n:
            nxt = head(i + 1)
        out = unpatchify(out, patch_size=vae.config.patch_size) if vae.config.patch_size else out
        yield torch.clamp(out, min=-1.0, max=1.0)
    main.wait_stream(side)


class Timed(WanDecoderStep):
    def __init__(self, vae):
        super().__init__(vae, exact=True)
        self.marks = []  # per call: [(name, event)]
        self.flops = defaultdict(float)
        self.stage = "?"

    def _conv(self, conv, x, defer_bias=False):
        out = super()._conv(conv, x, defer_bias)
        w = conv.weight
        self.flops[self.stage] += 2.0 * out[0].numel() * w[0].numel()
        return out

    def mark(self, name):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self.cur.append((name, e))
        self.stage = name

    def __call__(self, x, cache, *, first_chunk):
        if self.fused is None:
            from framepipe._decoder import fused_fits
            from framepipe._fused import norm_silu_is_exact

            self.fused = fused_fits(x) and norm_silu_is_exact(x.device, next(self.decoder.parameters()).dtype)
        self.first_chunk = first_chunk
        self.cur = []
        self.marks.append((first_chunk, self.cur))
        d = self.decoder
        idx = [0]
        self.mark("conv_in")
        x = added(*self._causal_conv(d.conv_in, copy_of(x), x, d.conv_in.in_channels, cache, idx))
        self.mark("mid")
        x = self._residual(d.mid_block.resnets[0], x, cache, idx)
        for attention, resnet in zip(d.mid_block.attentions, d.mid_block.resnets[1:], strict=True):
            x = self._attention(attention, x)
            x = self._residual(resnet, x, cache, idx)
        for i, block in enumerate(d.up_blocks):
            self.mark(f"up{i}")
            shortcut = x
            for resnet in block.resnets:
                x = self._residual(resnet, x, cache, idx)
            ups = getattr(block, "upsamplers", None)
            sampler = ups[0] if ups is not None else getattr(block, "upsampler", None)
            if sampler is not None:
                self.mark(f"up{i}.resample")
                x = self._resample(sampler, x, cache, idx)
            if getattr(block, "avg_shortcut", None) is not None:
                x = self._shortcut_added(block.avg_shortcut, x, shortcut)
        self.mark("out")
        fill = self._norm_silu(d.norm_out, x)
        x = added(*self._causal_conv(d.conv_out, fill, x, x.shape[1], cache, idx))
        x = x.contiguous()
        self.mark("end")
        return x


def stages(arch, dtype, size):
    vae, z = random_case(arch, dtype, size, 81, "cuda")
    step = Timed(vae)
    step.run_checks(vae.post_quant_conv(z)[:, :, :1])
    res = {}
    for rep in range(3):
        step.marks.clear()
        step.flops.clear()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for c in decode_chunks(vae, z, step=step):
            to_uint8_frames(c)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        per = defaultdict(float)
        for first, marks in step.marks:
            if first:
                continue
            for (n, a), (_, b) in zip(marks, marks[1:]):
                per[n] += a.elapsed_time(b) / 1000
        first_ms = sum(a.elapsed_time(b) for (_, a), (_, b) in zip(step.marks[0][1], step.marks[0][1][1:]))
        res = {
            "arch": arch,
            "dtype": dtype,
            "size": size,
            "wall_s": round(wall, 4),
            "first_chunk_ms": round(first_ms, 2),
            "later_chunks": len(step.marks) - 1,
            "stages_s": {k: round(v, 4) for k, v in per.items()},
            "tflop": {k: round(v / 1e12, 3) for k, v in step.flops.items()},
            "tflops_rate": {k: round(step.flops[k] / 1e12 / per[k], 1) for k in per if k in step.flops and per[k] > 0},
        }
    print(json.dumps(res), flush=True)
    del vae, z, step
    torch.cuda.empty_cache()


def run(arch, dtype, size, prio):
    vae, z = random_case(arch, dtype, size, 81, "cuda")
    step = Split(vae)
    with torch.inference_mode():
        step.run_checks(vae.post_quant_conv(z)[:, :, :1])
    side = torch.cuda.Stream(priority=prio)
    ref = [c.clone() for c in decode_chunks(vae, z, step=step)]
    got = [c.clone() for c in pipelined(vae, z, step, side)]
    same = all(same_bits(a, b) for a, b in zip(ref, got, strict=True))
    del ref, got
    times = {"serial": [], "pipelined": []}
    for rep in range(3):
        for name in times:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            it = decode_chunks(vae, z, step=step) if name == "serial" else pipelined(vae, z, step, side)
            for c in it:
                to_uint8_frames(c)
            torch.cuda.synchronize()
            times[name].append(round(time.perf_counter() - t0, 4))
    torch.cuda.reset_peak_memory_stats()
    for c in pipelined(vae, z, step, side):
        to_uint8_frames(c)
    torch.cuda.synchronize()
    pk = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    for c in decode_chunks(vae, z, step=step):
        to_uint8_frames(c)
    torch.cuda.synchronize()
    ps = torch.cuda.max_memory_allocated() / 2**30
    best = {k: min(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "arch": arch,
                "dtype": dtype,
                "size": size,
                "priority": prio,
                "same_bits": same,
                "times": times,
                "ratio": round(best["serial"] / best["pipelined"], 4),
                "peak_gib": {"serial": round(ps, 2), "pipelined": round(pk, 2)},
            }
        ),
        flush=True,
    )
    del vae, z, step
    torch.cuda.empty_cache()


if __name__ == "__main__":
    timed = sys.argv[1] == "--stages"
    for spec in sys.argv[1 + timed :]:
        a, d, s, p = spec.split(":")
        s = tuple(int(v) for v in s.split("x"))
        stages(a, d, s) if timed else run(a, d, s, int(p))
