"""``framepipe bench``: the same latents through every path, in one process on one card.

Modes:
    diffusers    what users do today: ``vae.decode`` of the whole video, copy to host, convert, encode.
    sync         framepipe's reference executor (per chunk: decode, copy, convert, encode).
    async        framepipe's asynchronous pipeline.
    gpu-only     the chunked decode plus uint8 conversion on the GPU; nothing is copied out or
                 encoded. This is the floor for the pipeline.
    diffusers-decoder
                 gpu-only with diffusers' decoder forward as is instead of framepipe's
                 (``decoder="diffusers"``): the same bits, so the ratio is the decoder's gain.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._api import decode, decode_many
from .._choices import CONTENTS, DECODERS, check_choice
from .._errors import SettingsError
from .._latents import denormalize
from .._pipeline import numbered_chunks
from .._postprocess import to_uint8_frames
from .._source import ProceduralChunks, decode_chunks, geometry
from .._trace import PipelineTrace, stage
from ..sinks import Sink, VideoSettings, open_sink, parse_segment_frames
from ._cost import FORMULA
from ._profile import profile_run
from ._report import ModeResult, environment, summarize

BENCH_MODES: tuple[str, ...] = (
    "diffusers", "sync", "async", "gpu-only", "diffusers-decoder", "encode-only", "async-stream",
)  # fmt: skip
DEFAULT_MODES: tuple[str, ...] = BENCH_MODES[:6]
VARIANT_MODES: tuple[str, ...] = ("sync", "async", "encode-only", "async-stream")  # framepipe's encoding modes


def encoder_variant(spec: str, base: VideoSettings) -> VideoSettings:
    """``base`` changed as ``spec`` says: comma-separated ``segment-frames=N|tail[:G[:L]]`` or any
    other ``KEY=VALUE`` as an FFmpeg encoder option."""
    changes: dict[str, Any] = {}
    options = dict(base.encoder_options)
    for token in (t.strip() for t in spec.split(",")):
        key, has_value, value = token.partition("=")
        if key == "segment-frames" and has_value:
            changes["segment_frames"] = parse_segment_frames(value)
        elif has_value and key and value:
            options[key] = value
        else:
            raise SettingsError(
                f"Invalid encoder variant {spec!r} (at {token!r}): use comma-separated segment-frames=N|tail[:G[:L]] "
                "or encoder options KEY=VALUE, e.g. 'segment-frames=tail,rc-lookahead=20'."
            )
    return replace(base, encoder_options=options, **changes)


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
        video: VideoSettings,
        slots: int = 2,
        workdir: Path,
        stream_videos: int = 4,
        content: str = "decoded",
        decoder: str = "framepipe",
    ):
        self.vae = vae
        self.decoder = decoder  # the decode's decoder in every mode but diffusers and diffusers-decoder
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latents = latents.to(self.device)  # (B, C, T, H, W), pipeline format
        self.geometry = geometry(vae, tuple(latents.shape))
        self.video = video
        self.slots = slots
        self.workdir = workdir
        self.stream_videos = stream_videos
        self.concurrent_videos = 1  # async-stream's videos decoding at once; run_bench sets it per row
        self._frames: list[np.ndarray] | None = None  # decoded chunks for encode-only
        # "procedural": the encoders get procedural clips of the decoded size (they encode like real
        # video) while the GPU still decodes the latents; "decoded": the VAE's output itself.
        self.content = content
        self.procedural = ProceduralChunks()
        self.chunks = decode_chunks if content == "decoded" else self.procedural

    def clip(self) -> torch.Tensor:
        """Procedural clips of the decoded video's shape, on the device, in the VAE's dtype."""
        return self.procedural.frames(self.geometry, self.device, self.dtype)

    # -- the modes: each does one whole run and returns once the device is idle ------------------

    def _denormalized(self) -> torch.Tensor:
        config = self.vae.config
        return denormalize(self.latents, config.latents_mean, config.latents_std, dtype=self.dtype)

    def _sinks(self, mode: str) -> list[Sink]:
        return [open_sink(self.workdir / f"{mode}-{i}.mp4", self.video) for i in range(self.geometry.batch)]

    def _open(self, sinks) -> None:
        g = self.geometry
        for sink in sinks:
            sink.open(frames=g.frames, height=g.height, width=g.width)

    def run_diffusers(self, trace: PipelineTrace) -> None:
        sinks = self._sinks("diffusers")  # what users do today: the whole video, then frames from the host
        self._open(sinks)
        with stage("decode", 0, trace), torch.inference_mode():
            z = self._denormalized()
            video = self.vae.decode(z).sample
            if self.content != "decoded":
                video = self.clip()
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
        decode(self.latents, self.workdir / f"{mode}.mp4", vae=self.vae, video=self.video, mode=mode, slots=self.slots,
               decoder=self.decoder, chunk_source=self.chunks, trace=trace)  # fmt: skip

    def run_stream(self, trace: PipelineTrace) -> None:
        pairs = [(self.latents, self.workdir / f"stream{i}.mp4") for i in range(self.stream_videos)]
        decode_many(pairs, vae=self.vae, video=self.video, slots=self.slots, trace=trace, decoder=self.decoder,
                    concurrent_videos=self.concurrent_videos, chunk_source=self.chunks)  # fmt: skip

    def run_gpu_only(self, trace: PipelineTrace, decoder: str | None = None) -> None:
        with torch.inference_mode():
            z = self._denormalized()
            for _, chunk in numbered_chunks(decode_chunks(self.vae, z, decoder=decoder or self.decoder), trace):
                to_uint8_frames(chunk)
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
            self._frames = [to_uint8_frames(c).cpu().numpy() for c in self.chunks(self.vae, z, decoder=self.decoder)]

    def runner(self, mode: str) -> Callable[[PipelineTrace], None]:
        if mode == "diffusers":
            return self.run_diffusers
        if mode in ("sync", "async"):
            return lambda trace: self.run_framepipe(mode, trace)
        if mode == "gpu-only":
            return self.run_gpu_only
        if mode == "diffusers-decoder":
            return lambda trace: self.run_gpu_only(trace, decoder="diffusers")
        if mode == "encode-only":
            return self.run_encode_only
        if mode == "async-stream":
            return self.run_stream
        raise SettingsError(f"Invalid mode ({mode!r}). Supported values are {', '.join(BENCH_MODES)}.")

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


def run_bench(
    vae,
    latents: torch.Tensor,
    *,
    modes: Sequence[str] = DEFAULT_MODES,
    video: VideoSettings | None = None,
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
    content: str = "decoded",
    decoder: str = "framepipe",
) -> dict[str, Any]:
    """Measure ``modes`` on ``latents`` (pipeline format) and return the report as a dict.

    ``content``: what the encoders get, ``"decoded"`` (the VAE's output; noise for random weights,
    x264's worst case) or ``"procedural"`` (procedural clips of the same size, which encode like
    real video, while the GPU decodes the latents all the same). ``decoder``: the decoder every mode
    but ``diffusers`` and ``diffusers-decoder`` decodes with (``decode_chunks``' choices).

    ``model`` says in the report which VAE ``vae`` is (e.g. ``"random wan2.1"``), for the record.
    Each of ``encoder_variants`` (see ``encoder_variant``) runs framepipe's encoding modes again
    with changed encoder settings, as rows named ``"async [segment-frames=tail]"``, side by side with
    the others in this process and against the same ``gpu-only``. ``async-stream`` runs once for
    each of ``concurrent_videos`` (videos decoding at once), as ``"async-stream [2 at once]"``."""
    video = video or VideoSettings()
    check_choice("content", content, CONTENTS)
    check_choice("decoder", decoder, DECODERS)
    variants = [(spec, encoder_variant(spec, video)) for spec in encoder_variants]
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad:
        raise SettingsError(f"Invalid mode(s) {', '.join(bad)}. Supported values are {', '.join(BENCH_MODES)}.")
    if runs < 1 or warmup < 0:
        raise SettingsError(f"Need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    concurrent = [concurrent_videos] if isinstance(concurrent_videos, int) else list(concurrent_videos)
    if stream_videos < 1 or not concurrent or min(concurrent) < 1:
        raise SettingsError(
            f"Need stream_videos >= 1 and concurrent_videos >= 1, got {stream_videos} and {concurrent_videos}."
        )
    if timeline_dir is not None:
        timeline_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="framepipe-bench-") as tmp:
        bench = Bench(vae, latents, video=video, slots=slots, workdir=Path(tmp), stream_videos=stream_videos,
                      content=content, decoder=decoder)  # fmt: skip
        results = []
        for mode in modes:
            for spec, settings in [("", video), *(variants if mode in VARIANT_MODES else [])]:
                for at_once in concurrent if mode == "async-stream" else [1]:
                    labels = [f"{at_once} at once"] * (at_once > 1) + [spec] * bool(spec)
                    name = f"{mode} [{'; '.join(labels)}]" if labels else mode
                    if on_mode:
                        on_mode(name)
                    bench.video, bench.concurrent_videos = settings, at_once
                    results.append(bench.run_mode(mode, warmup=warmup, runs=runs, profile=profile,
                                                  timeline_dir=timeline_dir, name=name))  # fmt: skip
                    if bench.device.type == "cuda":
                        torch.cuda.empty_cache()
        g = bench.geometry
    baseline = "diffusers" if "diffusers" in modes else ("sync" if "sync" in modes else None)
    rows = summarize(results, video_fps=video_fps or video.fps, price_per_hour=price_per_hour, baseline=baseline)
    measured = profile and bench.device.type == "cuda"
    not_measured = "not measured: " + ("no CUDA device (CPU run)" if bench.device.type != "cuda" else "profiling off")
    return {
        "environment": environment(bench.device),
        "settings": {
            "model": model,
            "content": content,
            "content_is": CONTENTS[content],
            "decoder": decoder,
            "device": str(bench.device),
            "dtype": str(bench.dtype).removeprefix("torch."),
            "latents_shape": list(latents.shape),
            "videos": g.batch,
            "frames_per_video": g.frames,
            "height": g.height,
            "width": g.width,
            "encoder": video.to_dict(),
            "encoder_variants": {spec: settings.to_dict() for spec, settings in variants},
            "slots": slots,
            "stream_videos": stream_videos if "async-stream" in modes else None,
            "concurrent_videos": concurrent if "async-stream" in modes else None,
            "warmup": warmup,
            "runs": runs,
            "profile": profile,
            "video_fps": video_fps or video.fps,
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
