"""``framepipe bench``: the same latents through every path, in one process on one card.

Modes:
    diffusers    what users do today: ``vae.decode`` of the whole video, copy to host, convert, encode.
    sync         framepipe's reference executor (per chunk: decode, copy, convert, encode).
    async        framepipe's asynchronous pipeline.
    gpu-only     the chunked decode plus uint8 conversion on the GPU (to yuv420p with
                 ``device_yuv``); nothing is copied out or encoded. This is the floor for the decoder.
    encode-only  host encoding of the same frames (decoded beforehand); no GPU work.
    async-stream ``stream_videos`` copies of the video back to back through one pipeline
                 (``decode_many``), ``concurrent_videos`` of them decoding at once; figures are
                 per video, comparable with the others.

Each mode gets ``warmup`` untimed runs, then ``runs`` timed runs, then one profiled run on its own
(for kernel utilization and the timeline).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._api import decode, decode_many
from ._cost import FORMULA, gpu_seconds_per_video_second, usd_per_1000_hours
from ._decode import decode_chunks, geometry
from ._executors import numbered_chunks
from ._latents import denormalize
from ._postprocess import converter, to_uint8_frames
from ._priority import check_nice
from ._profile import profile_run
from ._segments import parse_segment_frames
from ._sinks import Sink, open_sink
from ._trace import PipelineTrace, stage

BENCH_MODES: tuple[str, ...] = ("diffusers", "sync", "async", "gpu-only", "encode-only", "async-stream")
DEFAULT_MODES: tuple[str, ...] = BENCH_MODES[:5]
VARIANT_MODES: tuple[str, ...] = ("sync", "async", "encode-only", "async-stream")  # framepipe's encoding modes


@dataclass
class EncoderSettings:
    codec: str = "libx264"
    preset: str = "medium"
    crf: int = 18
    fps: float = 16.0
    segment_frames: int | str | None = None  # opt-in segment-parallel encoding (SegmentedVideoSink)
    device_yuv: bool = False  # opt-in yuv420p conversion on the device
    options: dict[str, str] = field(default_factory=dict)  # further FFmpeg encoder options
    nice: int = 0  # opt-in: encoding this many nice levels below the decoding
    processes: bool = False  # opt-in: each encoder in a worker process

    @property
    def frame_format(self) -> str:
        return "yuv420p" if self.device_yuv else "rgb24"

    def sink(self, path: Path, frame_format: str | None = None) -> Sink:
        frame_format = frame_format or self.frame_format
        return open_sink(path, fps=self.fps, codec=self.codec, preset=self.preset, crf=self.crf,
                         options=self.options, nice=self.nice, processes=self.processes,
                         segment_frames=self.segment_frames,
                         frame_format=frame_format)  # fmt: skip


def _segment_plan(text: str) -> int | str | None:
    try:
        return parse_segment_frames(text)
    except ValueError:
        return None


def encoder_variant(spec: str, base: EncoderSettings) -> EncoderSettings:
    """``base`` changed as ``spec`` says: comma-separated ``processes``, ``nice=N``,
    ``segment-frames=N|tail[:G[:L]]``, or any other ``KEY=VALUE`` as an FFmpeg encoder option."""
    changes: dict[str, Any] = {}
    options = dict(base.options)
    for token in (t.strip() for t in spec.split(",")):
        key, has_value, value = token.partition("=")
        if token == "processes":
            changes["processes"] = True
        elif key == "nice" and value.isdigit():
            changes["nice"] = check_nice(int(value))
        elif key == "segment-frames" and (plan := _segment_plan(value)) is not None:
            changes["segment_frames"] = plan
        elif has_value and key and value and key not in ("nice", "segment-frames"):
            options[key] = value
        else:
            raise ValueError(
                f"Invalid encoder variant {spec!r} (at {token!r}): use comma-separated processes, nice=N, "
                "segment-frames=N|tail[:G[:L]] or an encoder option KEY=VALUE, e.g. 'processes,nice=19'."
            )
    return replace(base, options=options, **changes)


@dataclass
class ModeResult:
    """Figures for one mode. A run decodes the latent tensor (all its B videos) ``units`` times; ``stats``
    and the summary are per decode, ``d2h_gb`` too."""

    mode: str
    seconds: list[float]
    frames: int
    videos: int
    peak_vram_gib: float | None
    peak_host_extra_gib: float
    d2h_gb: float
    kernel_utilization: float | None = None
    gpu_busy: float | None = None
    utilization_to_last_kernel: float | None = None
    after_last_kernel_s: float | None = None
    timeline_png: str | None = None
    main_thread: list[tuple[float, float]] = field(default_factory=list)  # per run: (CPU s, run-queue wait s)
    extra: dict[str, Any] = field(default_factory=dict)
    units: int = 1  # decodes of the latent tensor per run (async-stream runs several back to back)

    @property
    def stats(self) -> dict[str, float]:
        """Seconds per decode of the latent tensor (per run divided by ``units``)."""
        s = np.asarray(self.seconds) / self.units
        return {"min": float(s.min()), "mean": float(s.mean()), "p99": float(np.percentile(s, 99)),
                "max": float(s.max()), "std": float(s.std())}  # fmt: skip


def thread_schedstat() -> tuple[float, float] | None:
    """The calling thread's CPU seconds so far and its seconds spent runnable but waiting for a
    core (Linux's schedstat); None where the kernel does not say.

    The wait is the sign of core contention: a decode thread that waits for a core launches late
    and the GPU idles."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


class HostMemorySampler:
    """Peak resident memory of this process above its level at ``start``, sampled every 5 ms."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> HostMemorySampler:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="framepipe-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.base


class Bench:
    """Holds the VAE, the latents and the settings; ``run_mode`` measures one mode."""

    def __init__(
        self,
        vae,
        latents: torch.Tensor,
        *,
        encoder: EncoderSettings,
        slots: int = 2,
        workdir: Path,
        stream_videos: int = 4,
    ):
        self.vae = vae
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latents = latents.to(self.device)  # (B, C, T, H, W), pipeline format
        self.geometry = geometry(vae, tuple(latents.shape))
        self.encoder = encoder
        self.slots = slots
        self.workdir = workdir
        self.stream_videos = stream_videos
        self.concurrent_videos = 1  # async-stream's videos decoding at once; run_bench sets it per row
        self._frames: list[np.ndarray] | None = None  # decoded chunks for encode-only

    # -- the modes: each does one whole run and returns once the device is idle ------------------

    def _denormalized(self) -> torch.Tensor:
        config = self.vae.config
        return denormalize(self.latents, config.latents_mean, config.latents_std, dtype=self.dtype)

    def _sinks(self, mode: str, frame_format: str | None = None):
        return [self.encoder.sink(self.workdir / f"{mode}-{i}.mp4", frame_format) for i in range(self.geometry.batch)]

    def _open(self, sinks) -> None:
        g = self.geometry
        for sink in sinks:
            sink.open(frames=g.frames, height=g.height, width=g.width)

    def run_diffusers(self, trace: PipelineTrace) -> None:
        sinks = self._sinks("diffusers", "rgb24")  # what users do today: RGB frames from the host
        self._open(sinks)
        with stage("decode", 0, trace), torch.inference_mode():
            z = self._denormalized()
            video = self.vae.decode(z).sample
        with stage("copy", 0, trace):
            host = video.cpu()
        if self.device.type == "cuda":
            trace.add_d2h(host.nbytes)
        del video
        with stage("write", 0, trace):
            frames = to_uint8_frames(host)
            for i, sink in enumerate(sinks):
                sink.write(frames[i].numpy())
        with stage("write", "flush", trace):
            for sink in sinks:
                sink.close()

    def run_framepipe(self, mode: str, trace: PipelineTrace) -> None:
        decode(self.latents, self._sinks(mode), vae=self.vae, mode=mode, slots=self.slots, trace=trace,
               device_yuv=self.encoder.device_yuv, encoder_nice=self.encoder.nice)  # fmt: skip

    def run_stream(self, trace: PipelineTrace) -> None:
        pairs = [(self.latents, self._sinks(f"stream{i}")) for i in range(self.stream_videos)]
        decode_many(pairs, vae=self.vae, slots=self.slots, trace=trace, device_yuv=self.encoder.device_yuv,
                    encoder_nice=self.encoder.nice, concurrent_videos=self.concurrent_videos)  # fmt: skip

    def run_gpu_only(self, trace: PipelineTrace) -> None:
        with torch.inference_mode():
            z = self._denormalized()
            convert = converter(self.encoder.frame_format)
            for _, chunk in numbered_chunks(decode_chunks(self.vae, z), trace):
                convert(chunk)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_encode_only(self, trace: PipelineTrace) -> None:
        if self._frames is None:
            raise RuntimeError("encode-only needs the decoded frames; call prepare_frames() first.")
        sinks = self._sinks("encode-only")
        self._open(sinks)
        for index, chunk in enumerate(self._frames):
            with stage("write", index, trace):
                for i, sink in enumerate(sinks):
                    sink.write(chunk[i])
        with stage("write", "flush", trace):
            for sink in sinks:
                sink.close()

    def prepare_frames(self) -> None:
        """Decode once and keep the uint8 chunks on the host, for encode-only."""
        with torch.inference_mode():
            z = self._denormalized()
            convert = converter(self.encoder.frame_format)
            self._frames = [convert(c).cpu().numpy() for c in decode_chunks(self.vae, z)]

    def runner(self, mode: str) -> Callable[[PipelineTrace], None]:
        if mode == "diffusers":
            return self.run_diffusers
        if mode in ("sync", "async"):
            return lambda trace: self.run_framepipe(mode, trace)
        if mode == "gpu-only":
            return self.run_gpu_only
        if mode == "encode-only":
            return self.run_encode_only
        if mode == "async-stream":
            return self.run_stream
        raise ValueError(f"Invalid mode ({mode!r}). Supported values are {', '.join(BENCH_MODES)}.")

    # -- measuring --------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_mode(
        self, mode: str, *, warmup: int, runs: int, profile: bool, timeline_dir: Path | None, name: str | None = None
    ) -> ModeResult:
        """Measure ``mode`` with the current encoder settings; ``name`` labels the row (default: ``mode``)."""
        name = name or mode
        run = self.runner(mode)
        if mode == "encode-only" and self._frames is None:
            self.prepare_frames()
        for _ in range(warmup):
            run(PipelineTrace())
        seconds, peaks_vram, peaks_host, d2h, main_thread = [], [], [], 0, []
        for _ in range(runs):
            trace = PipelineTrace()
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            with HostMemorySampler() as host:
                sched = thread_schedstat()
                start = time.perf_counter()
                run(trace)
                self._sync()
                seconds.append(time.perf_counter() - start)
                if sched is not None and (after := thread_schedstat()) is not None:
                    main_thread.append((after[0] - sched[0], after[1] - sched[1]))
            peaks_host.append(host.extra_bytes)
            if self.device.type == "cuda":
                peaks_vram.append(torch.cuda.max_memory_allocated(self.device))
            d2h = trace.d2h_bytes
        units = self.stream_videos if mode == "async-stream" else 1
        result = ModeResult(
            mode=name,
            seconds=seconds,
            frames=self.geometry.frames,
            videos=self.geometry.batch,
            units=units,
            peak_vram_gib=max(peaks_vram) / 2**30 if peaks_vram else None,
            peak_host_extra_gib=max(peaks_host) / 2**30,
            d2h_gb=d2h / 1e9 / units,
            main_thread=main_thread,
        )
        if profile:
            timeline = profile_run(run, device=self.device)
            result.kernel_utilization = timeline.kernel_utilization
            result.gpu_busy = timeline.gpu_busy
            result.utilization_to_last_kernel = timeline.utilization_to_last_kernel
            result.after_last_kernel_s = timeline.after_last_kernel_s
            result.extra["profiled_run_s"] = timeline.window_s
            if timeline_dir is not None:
                from ._timeline import draw_timeline

                slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace(" [", "-").rstrip("]"))
                png = draw_timeline(timeline, timeline_dir / f"timeline-{slug}.png", title=name)
                result.timeline_png = str(png)
        return result


def _mean_per_unit(values: list[float], units: int) -> float | None:
    return float(np.mean(values)) / units if values else None


def summarize(
    results: Sequence[ModeResult], *, video_fps: float, price_per_hour: float | None, baseline: str | None
) -> list[dict[str, Any]]:
    """One row per mode: statistics, ratios to gpu-only, and cost against ``baseline``."""
    by_mode = {r.mode: r for r in results}
    floor = by_mode["gpu-only"].stats["mean"] / by_mode["gpu-only"].videos if "gpu-only" in by_mode else None
    rows = []
    for r in results:
        st = r.stats
        per_video = st["mean"] / r.videos
        ratio = gpu_seconds_per_video_second(per_video, r.frames, video_fps)
        row: dict[str, Any] = {
            "mode": r.mode,
            **{f"{k}_s": v for k, v in st.items()},
            "runs": len(r.seconds),
            "decodes_per_run": r.units,
            "frames_per_s": r.frames * r.videos / st["mean"],
            "vs_gpu_only": per_video / floor if floor else None,
            "kernel_utilization": r.kernel_utilization,
            "gpu_busy": r.gpu_busy,
            "utilization_to_last_kernel": r.utilization_to_last_kernel,
            "after_last_kernel_s": r.after_last_kernel_s,
            "peak_vram_gib": r.peak_vram_gib,
            "peak_host_extra_gib": r.peak_host_extra_gib,
            "d2h_gb": r.d2h_gb,
            "gpu_s_per_video_s": ratio,
            "main_thread_cpu_s": _mean_per_unit([cpu for cpu, _ in r.main_thread], r.units),
            "main_thread_wait_s": _mean_per_unit([wait for _, wait in r.main_thread], r.units),
            "timeline_png": r.timeline_png,
        }
        if price_per_hour is not None:
            row["usd_per_1000h"] = usd_per_1000_hours(ratio, price_per_hour)
        rows.append(row)
    if price_per_hour is not None and baseline in by_mode:
        base = next(row for row in rows if row["mode"] == baseline)["usd_per_1000h"]
        for row in rows:
            row["saving_usd_per_1000h_vs_" + baseline.replace("-", "_")] = base - row["usd_per_1000h"]
    return rows


def format_table(rows: list[dict[str, Any]], *, price_per_hour: float | None, baseline: str | None) -> str:
    def f(value, fmt):
        return "-" if value is None else format(value, fmt)

    def percent(share):
        return "-" if share is None else f"{100 * share:.1f}%"

    head = ["mode", "min s", "mean s", "P99 s", "max s", "frames/s", "x gpu-only", "kernel util", "GPU busy",
            "VRAM GiB", "host+ GiB", "D2H GB", "GPU-s/video-s"]  # fmt: skip
    if price_per_hour is not None:
        head += ["$/1000h", f"saving vs {baseline}"]
    lines = [head]
    for r in rows:
        line = [r["mode"], f(r["min_s"], ".3f"), f(r["mean_s"], ".3f"), f(r["p99_s"], ".3f"), f(r["max_s"], ".3f"),
                f(r["frames_per_s"], ".1f"), f(r["vs_gpu_only"], ".3f"),
                percent(r["kernel_utilization"]), percent(r["gpu_busy"]),
                f(r["peak_vram_gib"], ".2f"), f(r["peak_host_extra_gib"], ".2f"), f(r["d2h_gb"], ".3f"),
                f(r["gpu_s_per_video_s"], ".3f")]  # fmt: skip
        if price_per_hour is not None:
            key = "saving_usd_per_1000h_vs_" + (baseline or "").replace("-", "_")
            line += [f(r["usd_per_1000h"], ".0f"), f(r.get(key), "+.0f")]
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]

    def render(line: list[str]) -> str:
        cells = zip(line, widths, strict=True)
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join(render([str(c) for c in line]) for line in lines)


def environment(device: torch.device) -> dict[str, Any]:
    """Card, driver and library versions for the report."""
    import platform
    import subprocess

    import av
    import diffusers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[0]  # fmt: skip
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["gpu"] = None
    return env


def run_bench(
    vae,
    latents: torch.Tensor,
    *,
    modes: Sequence[str] = DEFAULT_MODES,
    encoder: EncoderSettings | None = None,
    warmup: int = 1,
    runs: int = 10,
    slots: int = 2,
    profile: bool = True,
    timeline_dir: Path | None = None,
    video_fps: float | None = None,
    price_per_hour: float | None = None,
    on_mode: Callable[[str], None] | None = None,
    stream_videos: int = 4,
    concurrent_videos: int | Sequence[int] = 1,
    model: str | None = None,
    encoder_variants: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure ``modes`` on ``latents`` (pipeline format) and return the report as a dict.

    ``model`` says in the report which VAE ``vae`` is (e.g. ``"random wan2.1"``), for the record.
    Each of ``encoder_variants`` (see ``encoder_variant``) runs framepipe's encoding modes again
    with changed encoder settings, as rows named ``"async [processes,nice=19]"``, side by side with
    the others in this process and against the same ``gpu-only``. ``async-stream`` runs once for
    each of ``concurrent_videos`` (videos decoding at once), as ``"async-stream [2 at once]"``."""
    encoder = encoder or EncoderSettings()
    variants = [(spec, encoder_variant(spec, encoder)) for spec in encoder_variants]
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad:
        raise ValueError(f"Invalid mode(s) {', '.join(bad)}. Supported values are {', '.join(BENCH_MODES)}.")
    if runs < 1 or warmup < 0:
        raise ValueError(f"Need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    concurrent = [concurrent_videos] if isinstance(concurrent_videos, int) else list(concurrent_videos)
    if stream_videos < 1 or not concurrent or min(concurrent) < 1:
        raise ValueError(
            f"Need stream_videos >= 1 and concurrent_videos >= 1, got {stream_videos} and {concurrent_videos}."
        )
    if timeline_dir is not None:
        timeline_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="framepipe-bench-") as tmp:
        bench = Bench(vae, latents, encoder=encoder, slots=slots, workdir=Path(tmp), stream_videos=stream_videos)
        results = []
        for mode in modes:
            for spec, settings in [("", encoder), *(variants if mode in VARIANT_MODES else [])]:
                for at_once in concurrent if mode == "async-stream" else [1]:
                    labels = [f"{at_once} at once"] * (at_once > 1) + [spec] * bool(spec)
                    name = f"{mode} [{'; '.join(labels)}]" if labels else mode
                    if on_mode:
                        on_mode(name)
                    bench.encoder, bench.concurrent_videos = settings, at_once
                    results.append(bench.run_mode(mode, warmup=warmup, runs=runs, profile=profile,
                                                  timeline_dir=timeline_dir, name=name))  # fmt: skip
                    if bench.device.type == "cuda":
                        torch.cuda.empty_cache()
        g = bench.geometry
    baseline = "diffusers" if "diffusers" in modes else ("sync" if "sync" in modes else None)
    rows = summarize(results, video_fps=video_fps or encoder.fps, price_per_hour=price_per_hour, baseline=baseline)
    measured = profile and bench.device.type == "cuda"
    not_measured = "not measured: " + ("no CUDA device (CPU run)" if bench.device.type != "cuda" else "profiling off")
    return {
        "environment": environment(bench.device),
        "settings": {
            "model": model,
            "device": str(bench.device),
            "dtype": str(bench.dtype).removeprefix("torch."),
            "latents_shape": list(latents.shape),
            "videos": g.batch,
            "frames_per_video": g.frames,
            "height": g.height,
            "width": g.width,
            "encoder": asdict(encoder),
            "encoder_variants": {spec: asdict(settings) for spec, settings in variants},
            "slots": slots,
            "stream_videos": stream_videos if "async-stream" in modes else None,
            "concurrent_videos": concurrent if "async-stream" in modes else None,
            "warmup": warmup,
            "runs": runs,
            "profile": profile,
            "video_fps": video_fps or encoder.fps,
            "price_per_gpu_hour": price_per_hour,
            "baseline": baseline,
            "kernel_utilization": "union of CUDA kernel intervals in the profiled run's window / its wall time"
            if measured
            else not_measured,
            "gpu_busy": "as kernel_utilization, also counting device-to-device copies and memsets, GPU work that "
            "is not a kernel"
            if measured
            else not_measured,
            "after_last_kernel_s": "the profiled run's wall time after its last CUDA kernel ended (the host's tail); "
            "utilization_to_last_kernel: kernel union / the time up to that end",
            "cost_formula": FORMULA,
            "main_thread": "the calling thread (the one that decodes and launches the GPU's work) per decode, "
            "mean over timed runs: main_thread_cpu_s on a core, main_thread_wait_s runnable but waiting for one "
            "(Linux schedstat; null elsewhere)",
        },
        "modes": rows,
    }
