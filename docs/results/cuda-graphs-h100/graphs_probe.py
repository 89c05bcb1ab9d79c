"""Probe: where bf16/fp32 gpu-only decode idles, and what CUDA graphs per chunk buy. Not committed."""
import json, os, sys, tempfile, time
from pathlib import Path
import torch
from framepipe._models import random_vae, move_vae
from framepipe._decode import decode_chunks, _causal_conv_count
from framepipe._postprocess import converter

OUT = Path(os.environ.get("OUT", "/tmp/out"))

def graphed_chunks(vae, latents, eager=3):
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify  # noqa
    cache = [None] * _causal_conv_count(vae)
    with torch.inference_mode():
        x = vae.post_quant_conv(latents)
        n = x.shape[2]
        for i in range(min(n, eager)):
            out = vae.decoder(x[:, :, i:i+1], feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))
            yield torch.clamp(out, -1.0, 1.0)
        if n <= eager:
            return
        static_x = x[:, :, eager:eager+1].clone()
        static_cache = [None if c is None else c.clone() for c in cache]
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            work = list(static_cache)
            out = vae.decoder(static_x, feat_cache=work, feat_idx=[0], first_chunk=False)
            out = torch.clamp(out, -1.0, 1.0)
            for dst, src in zip(static_cache, work):
                assert (dst is None) == (src is None)
                if dst is not None:
                    dst.copy_(src)
        for i in range(eager, n):
            static_x.copy_(x[:, :, i:i+1])
            g.replay()
            yield out.clone()
        del g

def run(vae, z, graphs):
    convert = converter("yuv420p")
    src = graphed_chunks(vae, z) if graphs else decode_chunks(vae, z)
    with torch.inference_mode():
        outs = [convert(c) for c in src]
    torch.cuda.synchronize()
    return outs

def profile(fn):
    from torch.profiler import ProfilerActivity, profile as P
    torch.cuda.synchronize()
    with P(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        p.export_chrome_trace(d + "/t.json"); ev = json.load(open(d + "/t.json"))["traceEvents"]
    def iv(pred):
        return sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("ph") == "X" and "dur" in e and pred(e))
    kern = iv(lambda e: e.get("cat") == "kernel")
    memd = iv(lambda e: e.get("cat") in ("gpu_memcpy", "gpu_memset"))
    allg = sorted(kern + memd)
    lo, hi = allg[0][0], allg[-1][1]
    def union(ivs):
        c, end = 0.0, lo
        for a, b in ivs:
            a = max(a, end)
            if b > a: c += b - a; end = b
        return c
    gaps, end = [], lo
    for a, b in allg:
        if a > end: gaps.append(a - end)
        end = max(end, b)
    buckets = {"<5us": 0, "5-20us": 0, "20-100us": 0, "100us-1ms": 0, ">1ms": 0}
    for g in gaps:
        k = "<5us" if g < 5 else "5-20us" if g < 20 else "20-100us" if g < 100 else "100us-1ms" if g < 1000 else ">1ms"
        buckets[k] += g / 1e3
    span = hi - lo
    return {"span_ms": span / 1e3, "kernels": len(kern), "memops": len(memd),
            "kernel_util_span": union(kern) / span, "kernel+mem_util_span": union(allg) / span,
            "gap_ms_by_size": {k: round(v, 2) for k, v in buckets.items()}}

def main():
    torch.backends.cudnn.benchmark = False
    rows = []
    for dtype, (h, w) in [(torch.bfloat16, (480, 832)), (torch.float32, (480, 832)), (torch.bfloat16, (720, 1280))]:
        vae = move_vae(random_vae("wan2.1"), device=torch.device("cuda"), dtype=dtype)
        g = torch.Generator("cuda").manual_seed(0)
        z = torch.randn(1, 16, 21, h // 8, w // 8, device="cuda", dtype=dtype, generator=g)
        ref = run(vae, z, False)
        got = run(vae, z, True)
        exact = all(torch.equal(a, b) for a, b in zip(ref, got)) and len(ref) == len(got)
        maxdiff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(ref, got))
        del ref, got
        times = {False: [], True: []}
        for rep in range(2):
            for gr in (False, True):
                torch.cuda.synchronize(); t = time.perf_counter(); run(vae, z, gr); times[gr].append(time.perf_counter() - t)
        torch.cuda.reset_peak_memory_stats()
        run(vae, z, False); peak_e = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        run(vae, z, True); peak_g = torch.cuda.max_memory_allocated() / 2**30
        pe = profile(lambda: run(vae, z, False)); pg = profile(lambda: run(vae, z, True))
        row = {"dtype": str(dtype), "size": f"{h}x{w}", "exact": exact, "max_uint8_diff": maxdiff,
               "eager_s": [round(t, 4) for t in times[False]], "graph_s": [round(t, 4) for t in times[True]],
               "peak_gib_eager": round(peak_e, 2), "peak_gib_graph": round(peak_g, 2),
               "cache_mib": None, "prof_eager": pe, "prof_graph": pg}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del vae, z; torch.cuda.empty_cache()
    (OUT / "graphs_probe.json").write_text(json.dumps(rows, indent=1))
    print(f"{'case':22} {'exact':5} {'eager s':>8} {'graph s':>8} {'ratio':>6} {'util e':>7} {'util g':>7} {'k+m e':>7} {'k+m g':>7}")
    for r in rows:
        e, gg = min(r["eager_s"]), min(r["graph_s"])
        print(f"{r['dtype'][6:]+' '+r['size']:22} {str(r['exact']):5} {e:8.3f} {gg:8.3f} {gg/e:6.3f} "
              f"{r['prof_eager']['kernel_util_span']:7.3f} {r['prof_graph']['kernel_util_span']:7.3f} "
              f"{r['prof_eager']['kernel+mem_util_span']:7.3f} {r['prof_graph']['kernel+mem_util_span']:7.3f}")
        print("   gaps eager", r["prof_eager"]["gap_ms_by_size"], " graph", r["prof_graph"]["gap_ms_by_size"])

main()
