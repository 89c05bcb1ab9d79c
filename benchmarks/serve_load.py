"""Load test of ``framepipe serve``: the real service on loopback, a real HTTP client, bounded in jobs.

1. Single job: one job at a time (the first is a warm-up); its latency, submit to MP4 in place.
2. Capacity: ``--saturate`` jobs submitted at once; jobs/s from the first to the last finish.
3. Load: ``--jobs`` jobs submitted at ``--load`` (default 0.8) of that capacity, at a fixed pace
   (``--arrivals poisson`` for random gaps); jobs/s, p50/p99 latency (the client's: from sending
   the request to the MP4 in place), GPU energy per video, and how busy the GPU was from a
   torch.profiler trace of the whole phase, as kernel utilization (kernels only, the bench's
   measure) and as GPU busy (kernels, device-to-device copies and memsets: outside a CUDA graph the
   decoder's cache copies are ``cudaMemcpyAsync`` calls, not kernels): over the whole phase, over the
   time some job was waiting or decoding (accepted, its latents durable -> its last chunk on the
   host), where an idle GPU means a gap between requests, and over the time some job was decoding
   (its first kernels launched -> its last chunk on the host); and how long a job waits from its
   acceptance to its first kernels' launch (``start_delay``).

    python benchmarks/serve_load.py --arch wan2.1 --size 480x832 --frames 81 --dtype bfloat16 --out load.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from safetensors.torch import save
from script_inputs import add_encoder_arguments, latents_shape, video_settings

from framepipe._device_worker import DeviceWorker
from framepipe.bench._profile import merge, profile_run, union_length
from framepipe.serve import JobStore, ServiceOptions, create_app
from framepipe.serve._feed import JobFeed


def record_steps(marks: dict[str, dict[str, float]]) -> None:
    """Record when the worker took each job from the queue, when its latents were on the GPU and when
    its encoder was open too, to show where a job's wait before its first kernels goes."""
    take, open_, ready = JobFeed.take, JobFeed.open, DeviceWorker.open

    def timed_take(self):
        job_id = take(self)
        if job_id is not None:
            marks.setdefault(job_id, {})["taken"] = time.time()
        return job_id

    def timed_open(self, job_id):
        order = open_(self, job_id)
        marks[job_id]["opened"] = time.time()
        return order

    def timed_ready(self, job_id):
        opened = ready(self, job_id)
        marks[job_id]["ready"] = time.time()
        return opened

    JobFeed.take, JobFeed.open, DeviceWorker.open = timed_take, timed_open, timed_ready


class Service:
    """The service in this process on a free loopback port."""

    def __init__(self, options: ServiceOptions, state_dir: Path) -> None:
        self.store = JobStore(state_dir, options)
        self.store.start_workers()
        config = uvicorn.Config(create_app(self.store), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

    def submit(self, body: bytes) -> str:
        answer = self.client.post("/v1/jobs", content=body)
        answer.raise_for_status()
        return answer.json()["id"]

    def wait(self, ids: list[str], timeout: float = 1800) -> list[dict]:
        """The jobs once all have ended, each unfinished one polled every 20 ms."""
        end, final = time.time() + timeout, {}
        while True:
            for i in ids:
                if i not in final and (job := self.client.get(f"/v1/jobs/{i}").json())["state"] in ("done", "failed"):
                    final[i] = job
            if len(final) == len(ids):
                failed = [j for j in final.values() if j["state"] == "failed"]
                if failed:
                    raise RuntimeError(f"{len(failed)} job(s) failed: {failed[0]['error']}")
                return [final[i] for i in ids]
            if time.time() > end:
                raise TimeoutError("the jobs did not finish")
            time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join()
        self.store.stop_workers()


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99), linear between the closest ranks (statistics' inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="wan2.1", help="random full-size weights of this architecture")
    p.add_argument("--size", default="480x832", help="frame size HxW")
    p.add_argument("--frames", type=int, default=81, help="frames per video (1 + 4k)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cuda")
    add_encoder_arguments(p)
    p.add_argument("--saturate", type=int, default=8, help="jobs submitted at once to measure capacity")
    p.add_argument("--jobs", type=int, default=16, help="jobs of the load phase")
    p.add_argument("--load", type=float, default=0.8, help="arrival rate as a share of the capacity")
    p.add_argument("--arrivals", choices=("fixed", "poisson"), default="fixed")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()

    height, width = (int(v) for v in args.size.lower().split("x"))
    video = video_settings(args)
    options = ServiceOptions(arch=args.arch, dtype=args.dtype, devices=(args.device,), video=video,
                             max_queue=max(args.saturate, args.jobs) + 1, max_body_bytes=2**31,
                             max_latent_frames=1 + (args.frames - 1) // 4, max_latent_pixels=2**20)  # fmt: skip
    shape = latents_shape(args.arch, frames=args.frames, height=height, width=width)
    g = torch.Generator().manual_seed(0)
    bodies = [save({"latents": torch.randn(shape, generator=g)}) for _ in range(4)]
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    marks: dict[str, dict[str, float]] = {}
    record_steps(marks)
    with tempfile.TemporaryDirectory() as state:
        service = Service(options, Path(state))
        try:
            single = []
            for i in range(3):
                sent = time.time()
                job = service.wait([service.submit(bodies[i % 4])])[0]
                single.append(job["finished"] - sent)
            single_s = statistics.median(single[1:])
            say(f"single job: {single_s:.3f} s (submit -> MP4), warm-up {single[0]:.3f} s")

            jobs = service.wait([service.submit(bodies[i % 4]) for i in range(args.saturate)])
            ends = sorted(j["finished"] for j in jobs)
            capacity = (len(ends) - 1) / (ends[-1] - ends[0])
            say(f"capacity: {capacity:.3f} jobs/s ({1 / capacity:.3f} s per job) over {args.saturate} jobs at once")

            rate = args.load * capacity
            rng = random.Random(0)
            phase: dict = {}

            def load(_trace) -> None:
                phase["t0"] = time.time()
                ids, due, phase["sent"] = [], time.time(), []
                for i in range(args.jobs):
                    time.sleep(max(0.0, due - time.time()))
                    phase["sent"].append(time.time())
                    ids.append(service.submit(bodies[i % 4]))
                    due += rng.expovariate(rate) if args.arrivals == "poisson" else 1 / rate
                phase["jobs"] = service.wait(ids)
                phase["t1"] = time.time()

            device = torch.device(args.device)
            timeline = profile_run(load, device=device)
            jobs, t0 = phase["jobs"], phase["t0"]
            latency = [j["finished"] - sent for j, sent in zip(jobs, phase["sent"], strict=True)]
            start_delay = [j["started"] - j["created"] for j in jobs]  # accepted -> its first kernels launched
            steps = {
                "accepted_to_taken": [marks[j["id"]]["taken"] - j["created"] for j in jobs],
                "taken_to_latents_on_gpu": [marks[j["id"]]["opened"] - marks[j["id"]]["taken"] for j in jobs],
                "latents_on_gpu_to_encoder_open": [marks[j["id"]]["ready"] - marks[j["id"]]["opened"] for j in jobs],
                "encoder_open_to_first_chunk_queued": [j["started"] - marks[j["id"]]["ready"] for j in jobs],
            }
            with_work = [(j["created"] - t0, j["decoded"] - t0) for j in jobs]
            covered = union_length(with_work, 0.0, timeline.window_s)
            decoding = [(j["started"] - t0, j["decoded"] - t0) for j in jobs]
            busy = {}  # kernels only, and the GPU's work: kernels, device-to-device copies and memsets
            if timeline.cuda and covered > 0:
                decoding_s = union_length(decoding, 0.0, timeline.window_s)
                for name, work in (("kernel", timeline.kernels), ("gpu", timeline.kernels + timeline.device_copies)):
                    busy[f"{name}_with_work"] = _busy(work, with_work) / covered
                    busy[f"{name}_while_decoding"] = _busy(work, decoding) / decoding_s
            joules = [j["account"]["energy_joules"] for j in jobs if j["account"]["energy_joules"] is not None]
            result = {
                "date": time.strftime("%Y-%m-%d"),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "arch": args.arch, "dtype": args.dtype, "size": args.size, "frames": args.frames,
                "encoder": {"preset": args.preset, "crf": args.crf, "segment_frames": args.segment_frames},
                "single_job_s": round(single_s, 4),
                "capacity_jobs_per_s": round(capacity, 4),
                "load": {"share": args.load, "arrivals": args.arrivals, "jobs": args.jobs,
                         "jobs_per_s": round(len(jobs) / (phase["t1"] - t0), 4),
                         "latency_p50_s": round(percentile(latency, 50), 4),
                         "latency_p99_s": round(percentile(latency, 99), 4),
                         "p99_over_single": round(percentile(latency, 99) / single_s, 3),
                         "start_delay_p50_s": round(percentile(start_delay, 50), 4),
                         "start_delay_max_s": round(max(start_delay), 4),
                         "start_delay_steps_p50_s": {k: round(percentile(v, 50), 4) for k, v in steps.items()},
                         "kernel_utilization": _round(timeline.kernel_utilization),
                         "kernel_utilization_with_work": _round(busy.get("kernel_with_work")),
                         "kernel_utilization_while_decoding": _round(busy.get("kernel_while_decoding")),
                         "gpu_busy": _round(timeline.gpu_busy),
                         "gpu_busy_with_work": _round(busy.get("gpu_with_work")),
                         "gpu_busy_while_decoding": _round(busy.get("gpu_while_decoding")),
                         "share_of_time_with_work": round(covered / timeline.window_s, 4),
                         "joules_per_video": round(statistics.mean(joules), 2) if joules else None,
                         "gpu_seconds_per_video": _mean([j["account"]["gpu_seconds"] for j in jobs])},
                "command": " ".join(["python", *sys.argv]),
            }  # fmt: skip
        finally:
            service.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _busy(work: list[tuple[float, float]], intervals: list[tuple[float, float]]) -> float:
    """Seconds within the union of ``intervals`` in which some of ``work`` (GPU intervals) ran."""
    return sum(union_length(work, a, b) for a, b in merge(sorted(intervals)))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 4) if values else None


if __name__ == "__main__":
    sys.exit(main())
