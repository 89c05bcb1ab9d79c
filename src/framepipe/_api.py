"""``decode``: latents in, video files out, through the chosen executor."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ._decode import decode_chunks, geometry
from ._errors import DeviceError, LatentsError, OutputError
from ._executors import Job, run_async, run_async_stream, run_sync
from ._latents import LATENT_FORMATS, LatentFormat, check_latents, denormalize, load_latents
from ._models import load_vae, resolve_device
from ._priority import check_nice
from ._progress import FrameProgress
from ._sinks import Sink, batch_paths, open_sink
from ._trace import PipelineTrace, stage

Mode = Literal["async", "sync"]
MODES: tuple[str, ...] = ("async", "sync")


@dataclass
class DecodeResult:
    """What a ``decode`` call did: sizes, where it wrote, how long it took, peak device memory."""

    mode: str
    device: str
    dtype: str
    videos: int
    frames_per_video: int
    height: int
    width: int
    seconds: float
    outputs: list[str] = field(default_factory=list)
    peak_vram_bytes: int | None = None
    total_frames: int | None = None  # set when videos differ in length (a stream of inputs)

    @property
    def frames_per_second(self) -> float:
        frames = self.total_frames if self.total_frames is not None else self.videos * self.frames_per_video
        return frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_second": round(self.frames_per_second, 3)}


def decode(
    latents: torch.Tensor | str | os.PathLike[str],
    output: str | os.PathLike[str] | Sink | Sequence[Sink],
    *,
    vae: Any = None,
    arch: str | None = None,
    mode: Mode = "async",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    latent_format: LatentFormat = "pipeline",
    fps: float = 16,
    crf: int | None = 18,
    preset: str | None = "medium",
    codec: str = "libx264",
    encoder_options: Mapping[str, str] | None = None,
    encoder_nice: int = 0,
    encoder_processes: bool = False,
    segment_frames: int | str | None = None,
    device_yuv: bool = False,
    slots: int = 2,
    latent_frames_per_chunk: int = 1,
    progress: bool = False,
    seed: int = 0,
    trace: PipelineTrace | None = None,
) -> DecodeResult:
    """Decode a Wan latent video chunk by chunk and write its frames, in constant device memory.

    Args:
        latents: a tensor (C, T, H, W) or (B, C, T, H, W), or a path to ``.safetensors``/``.pt``/``.npy``.
        output: an output path (``.mp4``/``.mov``/``.mkv``, ``.npy``, or a folder for PNGs; for B > 1
            ``name_0.mp4``, ``name_1.mp4``, ... or ``{index}`` in the name), or one sink per video.
        vae: an ``AutoencoderKLWan`` (used as it is, on its device and dtype), a checkpoint path,
            or None for ``arch`` with seeded random weights (noise; for benchmarks).
        mode: ``"async"`` (the pipeline, default) or ``"sync"`` (the reference); same frames.
        device: ``"cuda"``, ``"cpu"``, or None (CUDA if available).
        dtype: ``"float32"`` or ``"bfloat16"``; the VAE computes in it.
        latent_format: ``"pipeline"`` for latents as ``WanPipeline(output_type="latent")`` returns
            them (de-normalized here with the VAE's ``latents_mean``/``latents_std``), or ``"raw"``.
        fps, crf, preset, codec: video encoder settings (see ``VideoFileSink``).
        encoder_options: further FFmpeg encoder options, as strings (``{"threads": "4"}``).
        encoder_nice: opt-in (Linux): run the encoding (the writer thread, the encoders' threads)
            this many nice levels below the decoding, so that it gives way to the thread that
            launches the GPU's work (0-19; 0: unchanged). The files are the same.
        encoder_processes: opt-in: run each video file's encoder in a worker process, fed through
            shared memory, so that encoding never holds this interpreter's lock while the decoding
            thread needs it (``ProcessVideoSink``). The files are the same. Video file outputs only.
        segment_frames: opt-in: encode video files as independent segments of this many frames, or
            ``"tail"`` for segments that halve towards the end (``"tail:G"``: shrink by G;
            ``"tail:G:L"``: down to L frames, not 4), several at once, joined into one file (a
            different bitstream; see ``SegmentedVideoSink``).
        device_yuv: opt-in: convert frames to yuv420p on the decoding device, so half the bytes
            cross to the host and the encoder gets its planes as they are. The RGB frames are the
            same; the chroma differs from FFmpeg's default conversion (``to_yuv420p_frames``).
            Video file outputs only.
        slots: ring depth of the async executor (>= 1; 2 is double buffering).
        latent_frames_per_chunk: latent frames decoded per chunk (4 frames each; the first gives 1).
        progress: show a progress bar with frames/s on stderr.
        seed: seed of the random weights when no checkpoint is given.
        trace: a ``PipelineTrace`` that records each stage's host-side span and the bytes copied
            device-to-host (used by the bench).
    """
    if mode not in MODES:
        raise ValueError(f"Invalid mode ({mode!r}). Supported values are {', '.join(MODES)}.")
    if latent_format not in LATENT_FORMATS:
        raise ValueError(f"Invalid latent_format ({latent_format!r}). Supported: {', '.join(LATENT_FORMATS)}.")
    if not isinstance(latents, torch.Tensor):
        latents = load_latents(latents)

    if vae is None or isinstance(vae, str | os.PathLike):
        vae = load_vae(vae, arch=arch, dtype=dtype, device=device, seed=seed)
    param = next(vae.parameters())
    if device is not None and resolve_device(device) != param.device:
        raise DeviceError(f"The VAE is on {param.device}, but device={device!r} was asked.")
    torch_device, torch_dtype = param.device, param.dtype

    latents = _prepare(latents, vae, latent_format)

    g = geometry(vae, tuple(latents.shape), latent_frames_per_chunk=latent_frames_per_chunk)
    video_options = _video_options(fps=fps, crf=crf, preset=preset, codec=codec, encoder_options=encoder_options,
                                   encoder_nice=encoder_nice, encoder_processes=encoder_processes,
                                   segment_frames=segment_frames, device_yuv=device_yuv)  # fmt: skip
    frame_format = video_options["frame_format"]
    sinks, outputs = _make_sinks(output, g.batch, **video_options)

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    opened: list[Sink] = []
    chunks = decode_chunks(vae, latents, latent_frames_per_chunk=latent_frames_per_chunk)
    bar = FrameProgress(total=g.batch * g.frames, enabled=progress, batch=g.batch)
    start = time.perf_counter()
    try:
        for sink in sinks:
            sink.open(frames=g.frames, height=g.height, width=g.width)
            opened.append(sink)
        if mode == "sync":
            run_sync(chunks, sinks, progress=bar.update, trace=trace, frame_format=frame_format)
        else:
            run_async(chunks, sinks, device=torch_device, geometry=g, slots=slots, progress=bar.update, trace=trace,
                      frame_format=frame_format, nice=encoder_nice)  # fmt: skip
        with stage("write", "flush", trace):  # the encoder's look-ahead tail
            for sink in sinks:
                sink.close()
    except BaseException:
        for sink in opened:
            sink.abort()
        raise
    finally:
        chunks.close()
        bar.close()
    seconds = time.perf_counter() - start

    peak = torch.cuda.max_memory_allocated(torch_device) if torch_device.type == "cuda" else None
    return DecodeResult(
        mode=mode,
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        videos=g.batch,
        frames_per_video=g.frames,
        height=g.height,
        width=g.width,
        seconds=seconds,
        outputs=outputs,
        peak_vram_bytes=peak,
    )


def decode_many(
    inputs: Sequence[tuple[torch.Tensor | str | os.PathLike[str], str | os.PathLike[str] | Sequence[Sink]]],
    *,
    vae: Any = None,
    arch: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    latent_format: LatentFormat = "pipeline",
    fps: float = 16,
    crf: int | None = 18,
    preset: str | None = "medium",
    codec: str = "libx264",
    encoder_options: Mapping[str, str] | None = None,
    encoder_nice: int = 0,
    encoder_processes: bool = False,
    segment_frames: int | str | None = None,
    device_yuv: bool = False,
    slots: int = 2,
    concurrent_videos: int = 1,
    max_open: int | None = None,
    progress: bool = False,
    seed: int = 0,
    trace: PipelineTrace | None = None,
) -> DecodeResult:
    """Decode many latent videos through one asynchronous pipeline, back to back.

    ``inputs`` is a sequence of ``(latents, output)`` pairs, each as in ``decode``. The next video
    decodes while the previous video's encoder drains its look-ahead, so the GPU does not idle
    between videos. Every video writes the same frames as ``decode`` would. All inputs must share
    batch size and frame size (their lengths may differ). Inputs are loaded as they are reached.

    ``concurrent_videos`` (CUDA): decode this many videos at once, each on its own stream, so the
    kernels of one fill the GPU's idle moments between another's (same frames; each video decoding
    at once adds its own activations and causal cache to peak VRAM). ``max_open``: at most this
    many videos are being encoded at once (default ``concurrent_videos + 1``).
    """
    if concurrent_videos < 1:
        raise ValueError(f"concurrent_videos must be >= 1, got {concurrent_videos}.")
    if latent_format not in LATENT_FORMATS:
        raise ValueError(f"Invalid latent_format ({latent_format!r}). Supported: {', '.join(LATENT_FORMATS)}.")
    if not inputs:
        raise ValueError("decode_many needs at least one (latents, output) pair.")
    if vae is None or isinstance(vae, str | os.PathLike):
        vae = load_vae(vae, arch=arch, dtype=dtype, device=device, seed=seed)
    param = next(vae.parameters())
    torch_device, torch_dtype = param.device, param.dtype
    video_options = _video_options(fps=fps, crf=crf, preset=preset, codec=codec, encoder_options=encoder_options,
                                   encoder_nice=encoder_nice, encoder_processes=encoder_processes,
                                   segment_frames=segment_frames, device_yuv=device_yuv)  # fmt: skip
    frame_format = video_options["frame_format"]
    opened: list[Sink] = []
    chunk_sources: list[Iterator[torch.Tensor]] = []
    outputs: list[str] = []
    counts = {"videos": 0, "frames": 0}
    bar = FrameProgress(total=None, enabled=progress)

    def prepare(item) -> tuple[Job, Any]:
        latents, output = item
        name = str(latents) if not isinstance(latents, torch.Tensor) else f"input {len(chunk_sources)}"
        latents = _prepare(latents if isinstance(latents, torch.Tensor) else load_latents(latents), vae, latent_format)
        g = geometry(vae, tuple(latents.shape))
        if chunk_sources and (g.batch, g.height, g.width) != (first.batch, first.height, first.width):
            raise LatentsError(
                f"{name} decodes to {g.batch} x {g.width}x{g.height}, but the first input to "
                f"{first.batch} x {first.width}x{first.height}; one stream needs one batch and frame size."
            )
        sinks, names = _make_sinks(output, g.batch, **video_options)
        for sink in sinks:
            sink.open(frames=g.frames, height=g.height, width=g.width)
            opened.append(sink)
        outputs.extend(names)
        counts["videos"] += g.batch
        counts["frames"] += g.batch * g.frames
        chunks = decode_chunks(vae, latents)
        chunk_sources.append(chunks)
        return Job(chunks, sinks, progress=lambda t, b=g.batch: bar.update(t * b)), g

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    start = time.perf_counter()
    try:
        first_job, first = prepare(inputs[0])

        def jobs():
            yield first_job
            for item in inputs[1:]:
                yield prepare(item)[0]

        run_async_stream(jobs(), device=torch_device, geometry=first, slots=slots, max_open=max_open,
                         concurrent=concurrent_videos, trace=trace, frame_format=frame_format,
                         nice=encoder_nice)  # fmt: skip
    except BaseException:
        for sink in opened:
            sink.abort()
        raise
    finally:
        for chunks in chunk_sources:
            chunks.close()
        bar.close()
    seconds = time.perf_counter() - start
    return DecodeResult(
        mode="async-stream",
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        videos=counts["videos"],
        frames_per_video=first.frames,
        height=first.height,
        width=first.width,
        seconds=seconds,
        outputs=outputs,
        peak_vram_bytes=torch.cuda.max_memory_allocated(torch_device) if torch_device.type == "cuda" else None,
        total_frames=counts["frames"],
    )


def _prepare(latents: torch.Tensor, vae, latent_format: str) -> torch.Tensor:
    """Check the latents against the VAE and bring them to its device and dtype, de-normalized."""
    param = next(vae.parameters())
    latents = check_latents(latents, z_dim=vae.config.z_dim).to(param.device)
    if latent_format == "pipeline":
        return denormalize(latents, vae.config.latents_mean, vae.config.latents_std, dtype=param.dtype)
    return latents.to(param.dtype)


def _video_options(
    *,
    fps,
    crf,
    preset,
    codec,
    encoder_options,
    encoder_nice: int,
    encoder_processes: bool,
    segment_frames,
    device_yuv: bool,
) -> dict[str, Any]:
    """The sinks' settings from ``decode``'s arguments (checked here, before any work)."""
    return dict(fps=fps, crf=crf, preset=preset, codec=codec, options=dict(encoder_options or {}),
                nice=check_nice(encoder_nice), processes=bool(encoder_processes), segment_frames=segment_frames,
                frame_format="yuv420p" if device_yuv else "rgb24")  # fmt: skip


def _make_sinks(output, batch: int, **video_options) -> tuple[list[Sink], list[str]]:
    if isinstance(output, Sink):
        output = [output]
    if isinstance(output, Sequence) and not isinstance(output, str):
        sinks = list(output)
        if len(sinks) != batch:
            raise ValueError(f"Got {len(sinks)} sink(s) for {batch} video(s); give one sink per video.")
        wanted = video_options.get("frame_format", "rgb24")
        if any(getattr(s, "frame_format", "rgb24") != wanted for s in sinks):
            raise ValueError(f"Every sink must take {wanted} frames (a video sink's frame_format).")
        return sinks, [str(getattr(s, "path", type(s).__name__)) for s in sinks]
    paths = batch_paths(Path(output), batch)
    if len(set(paths)) != len(paths):
        raise OutputError(f"Output names for {batch} videos collide: {paths[0]}.")
    return [open_sink(p, **video_options) for p in paths], [str(p) for p in paths]
