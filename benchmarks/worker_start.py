"""Where a batch worker's start-up goes: its phases timed in one spawned process per device, all
started at once, as ``framepipe batch --gpus`` starts its workers (seconds from the start).

Phases: torch imported; diffusers and framepipe's batch worker imported; the random VAE built on
the CPU; the CUDA context; the VAE moved; then a warm-up decode of two latent frames at 8x8 and two
at the frame size (twice: the second as the device worker's second warm-up, graphs aside).

    python benchmarks/worker_start.py --devices cuda:0,cuda:1 --dtype bfloat16 --size 480x832
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time


def worker(device: str, dtype: str, latent_size: tuple[int, int], t0: float, out) -> None:
    marks = {"entered": time.time() - t0}
    import torch

    marks["torch"] = time.time() - t0
    import diffusers  # noqa: F401

    import framepipe.batch._processes  # noqa: F401
    from framepipe import to_uint8_frames
    from framepipe._models import move_vae, random_vae
    from framepipe._source import decode_chunks

    marks["diffusers_and_framepipe"] = time.time() - t0
    vae = random_vae("wan2.1")
    marks["random_vae_on_cpu"] = time.time() - t0
    torch.zeros(1, device=device)
    marks["cuda_context"] = time.time() - t0
    vae = move_vae(vae, device=torch.device(device), dtype=getattr(torch, dtype))
    torch.cuda.synchronize(device)
    marks["moved"] = time.time() - t0
    with torch.cuda.device(device):
        for i, size in enumerate(((8, 8), latent_size, latent_size)):
            z = torch.zeros(1, 16, 2, *size, device=device, dtype=getattr(torch, dtype))
            for chunk in decode_chunks(vae, z, decoder="framepipe"):
                to_uint8_frames(chunk)
            torch.cuda.synchronize(device)
            marks[f"warm_up_{i}_{size[0]}x{size[1]}"] = time.time() - t0
    out.put((device, {k: round(v, 3) for k, v in marks.items()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="cuda:0", help="one spawned process per device, e.g. cuda:0,cuda:1")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--size", default="480x832", help="frame size HxW of the warm-up")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    ctx = mp.get_context("spawn")
    out, t0 = ctx.Queue(), time.time()
    processes = [ctx.Process(target=worker, args=(d, args.dtype, (h // 8, w // 8), t0, out))
                 for d in args.devices.split(",")]  # fmt: skip
    for process in processes:
        process.start()
    marks = dict(out.get() for _ in processes)
    for process in processes:
        process.join()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "dtype": args.dtype, "size": args.size, "seconds": marks}))


if __name__ == "__main__":
    main()
