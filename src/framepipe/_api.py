"""``decode`` and ``decode_many``: latents in, videos out, through the chosen executor."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ._choices import DECODERS, check_choice
from ._errors import GPU_OUT_OF_MEMORY, DeviceError, LatentsError, OutputError, SettingsError
from ._input_files import checked_latent_file
from ._latents import LATENT_FORMATS, LatentFormat, check_latents, denormalize, load_latents, looks_raw
from ._models import load_vae, model_name, resolve_device
from ._pipeline import Job, run_async, run_sync
from ._progress import FrameProgress
from ._source import ChunkSource, VideoGeometry, check_fits, decode_chunks, geometry
from ._trace import PipelineTrace
from .sinks import Sink, VideoSettings, batch_paths, open_sink

#: Said once when no VAE is given: the embedded model decodes only what it was trained on.
EMBEDDED_WARNING = (
    "No VAE given: decoding with framepipe's embedded tiny VAE, which knows only procedural clips; "
    "for latents of a real Wan model, pass its VAE (--vae / vae=)."
)

Mode = Literal["async", "sync"]
MODES: tuple[str, ...] = ("async", "sync")

#: What a video's latents may be given as: a tensor, or a path to a latent file.
Latents = torch.Tensor | str | os.PathLike[str]
#: Where a video's frames go: an output path, or one sink per video of the latents' batch.
Output = str | os.PathLike[str] | Sink | Sequence[Sink]


@dataclass
class DecodeResult:
    """What a ``decode`` or ``decode_many`` call did: sizes, where it wrote, how long it took, peak
    device memory. ``frames_per_video`` is the first input's; ``total_frames`` counts them all."""

    mode: str
    model: str
    device: str
    dtype: str
    videos: int
    frames_per_video: int
    height: int
    width: int
    seconds: float
    total_frames: int
    outputs: list[str] = field(default_factory=list)
    peak_vram_bytes: int | None = None

    @property
    def frames_per_second(self) -> float:
        return self.total_frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_second": round(self.frames_per_second, 3)}


def decode(latents: Latents, output: Output, **options: Any) -> DecodeResult:
    """Decode one latent video (or one batch) chunk by chunk and write its frames, in constant
    device memory: ``decode_many([(latents, output)], **options)``, with the same options.

    Args:
        latents: a tensor (C, T, H, W) or (B, C, T, H, W), or a path to ``.safetensors``/``.pt``/``.npy``.
        output: an output path (``.mp4``/``.mov``/``.mkv``, ``.npy``, or a folder for PNGs; for B > 1
            ``name_0.mp4``, ``name_1.mp4``, ... or ``{index}`` in the name), or one sink per video.
    """
    return decode_many([(latents, output)], **options)


def decode_many(
    inputs: Sequence[tuple[Latents, Output]],
    *,
    vae: Any = None,
    arch: str | None = None,
    video: VideoSettings | None = None,
    mode: Mode = "async",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    latent_format: LatentFormat = "pipeline",
    slots: int = 2,
    concurrent_videos: int = 1,
    max_open: int | None = None,
    latent_frames_per_chunk: int = 1,
    decoder: str = "framepipe",
    chunk_source: ChunkSource | None = None,
    progress: bool = False,
    seed: int = 0,
    trace: PipelineTrace | None = None,
) -> DecodeResult:
    """Decode latent videos back to back through one pipeline and write their frames.

    In ``"async"`` mode the next video decodes while the last one's encoder drains its look-ahead,
    so the GPU does not idle between videos; every video gets the same frames as in ``"sync"``
    mode, the in-order reference. All inputs must share batch size and frame size (their lengths
    may differ); each is loaded when it is reached.

    Args:
        inputs: ``(latents, output)`` pairs, as ``decode`` takes them.
        vae: an ``AutoencoderKLWan`` (used as it is, on its device and dtype), a checkpoint path,
            or None: the embedded trained tiny VAE, or ``arch`` with seeded random weights.
        arch: an architecture of ``ARCHITECTURES`` for random weights (noise; for benchmarks).
        video: the video encoder's settings (default ``VideoSettings()``); for outputs given as
            sinks, the sinks carry their own, and giving both is an error.
        mode: ``"async"`` (the pipeline, default) or ``"sync"`` (the reference); same frames.
        device: ``"cuda"``, ``"cuda:N"``, ``"cpu"``, or None (CUDA if available).
        dtype: ``"float32"`` or ``"bfloat16"``; the VAE computes in it.
        latent_format: ``"pipeline"`` for latents as ``WanPipeline(output_type="latent")`` returns
            them (de-normalized here with the VAE's ``latents_mean``/``latents_std``), or ``"raw"``.
        slots: ring depth of the async pipeline (>= 1; 2 is double buffering).
        concurrent_videos: async on CUDA: decode this many videos at once, each on its own stream,
            so the kernels of one fill the GPU's idle moments between another's (same frames; each
            adds its own activations and causal cache to peak VRAM).
        max_open: async: at most this many videos are being encoded at once (default
            ``concurrent_videos + 1``).
        latent_frames_per_chunk: latent frames decoded per chunk (4 frames each; the first gives 1).
        decoder: ``"framepipe"`` (default: diffusers' decoder modules, channels-last, with fewer
            copies and fused kernels, the same bits), ``"diffusers"`` (its decoder's forward as is),
            ``"fast"`` (framepipe's, its convolutions free to change the pixels: opt-in) or
            ``"fast-fp8"`` (fast, its residual blocks' convolutions in FP8 on a Hopper GPU: opt-in,
            lower fidelity).
        chunk_source: what makes a video's chunks, called as ``decode_chunks`` is (the default):
            ``chunk_source(vae, latents, latent_frames_per_chunk=..., decoder=...)``; the bench
            uses it to hand the encoders frames that encode like real video.
        progress: show a progress bar with frames/s on stderr.
        seed: seed of the random weights when ``arch`` is given.
        trace: a ``PipelineTrace`` that records each stage's host-side span and the bytes copied
            device-to-host (used by the bench).
    """
    check_choice("mode", mode, MODES)
    check_choice("decoder", decoder, DECODERS)
    if latent_format not in LATENT_FORMATS:
        raise SettingsError(f"Invalid latent_format ({latent_format!r}). Supported: {', '.join(LATENT_FORMATS)}.")
    if isinstance(concurrent_videos, bool) or not isinstance(concurrent_videos, int) or concurrent_videos < 1:
        raise SettingsError(f"concurrent_videos must be a whole number >= 1, got {concurrent_videos!r}.")
    if mode == "sync" and concurrent_videos > 1:
        raise SettingsError("concurrent_videos needs mode 'async'; the sync reference decodes one video at a time.")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise SettingsError(f"slots must be a whole number >= 1, got {slots!r}.")
    inputs = list(inputs)
    if not inputs:
        raise SettingsError("Nothing to decode: give at least one (latents, output) pair.")
    if video is not None and not isinstance(video, VideoSettings):
        raise TypeError(f"video must be a VideoSettings, got {type(video).__name__}.")
    if video is not None and any(_is_sinks(output) for _, output in inputs):
        raise SettingsError("Sinks carry their own settings: give video settings or sinks, not both.")
    video = video or VideoSettings()
    for latents, output in inputs:
        if not isinstance(latents, torch.Tensor | str | os.PathLike):
            raise TypeError(f"latents must be a torch.Tensor or a path, got {type(latents).__name__} "
                            "(a NumPy array: torch.from_numpy(array)).")  # fmt: skip
        if not (isinstance(output, str | os.PathLike) or _is_sinks(output)):
            raise TypeError(f"output must be a path or sinks, got {type(output).__name__}.")
        if not isinstance(latents, torch.Tensor):
            checked_latent_file(latents)  # every file, before the first video starts
    sources = {Path(latents).resolve() for latents, _ in inputs if not isinstance(latents, torch.Tensor)}
    for _, output in inputs:
        if not _is_sinks(output):
            _check_not_an_input(Path(output), sources)

    embedded = vae is None and arch is None
    if vae is None or isinstance(vae, str | os.PathLike):
        vae = load_vae(vae, arch=arch, dtype=dtype, device=device, seed=seed)
    param = next(vae.parameters())
    if device is not None and resolve_device(device) != param.device:
        raise DeviceError(f"The VAE is on {param.device}, but device={device!r} was asked.")
    torch_device, torch_dtype = param.device, param.dtype

    opened: list[Sink] = []
    sources: list[Iterator[torch.Tensor]] = []
    outputs: list[str] = []
    sizes: list[VideoGeometry] = []
    bar = FrameProgress(enabled=progress)

    def prepare(index: int) -> Job:
        latents, output = inputs[index]
        name = f"input {index}" if isinstance(latents, torch.Tensor) else str(latents)
        latents = prepare_latents(
            latents if isinstance(latents, torch.Tensor) else load_latents(latents), vae, latent_format, name
        )
        g = geometry(vae, tuple(latents.shape), latent_frames_per_chunk=latent_frames_per_chunk)
        if sizes and (g.batch, g.height, g.width) != (sizes[0].batch, sizes[0].height, sizes[0].width):
            first = sizes[0]
            raise LatentsError(
                f"{name} decodes to {g.batch} x {g.height}x{g.width}, but the first input to "
                f"{first.batch} x {first.height}x{first.width}; one stream needs one batch and frame size."
            )
        if not sizes:
            check_fits(vae, g, videos_at_once=concurrent_videos)  # refuse a size that cannot fit, before any work
        sizes.append(g)
        sinks, names = _make_sinks(output, g.batch, video, sources)
        for sink in sinks:
            sink.open(frames=g.frames, height=g.height, width=g.width)
            opened.append(sink)
        bar.start(g.batch * g.frames if len(inputs) == 1 else None)
        outputs.extend(names)
        chunks = (chunk_source or decode_chunks)(
            vae, latents, latent_frames_per_chunk=latent_frames_per_chunk, decoder=decoder
        )
        sources.append(chunks)
        return Job(chunks, sinks, progress=lambda t, b=g.batch: bar.update(t * b))

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    start = time.perf_counter()
    try:
        first = prepare(0)  # the first input sizes the async ring
        if embedded:  # said once the first input has passed its checks, so an error stays one line
            warnings.warn(EMBEDDED_WARNING, UserWarning, stacklevel=3)

        def jobs() -> Iterator[Job]:
            yield first
            for index in range(1, len(inputs)):
                yield prepare(index)

        if mode == "sync":
            run_sync(jobs(), trace=trace)
        else:
            run_async(jobs(), device=torch_device, geometry=sizes[0], slots=slots, max_open=max_open,
                      concurrent=concurrent_videos, trace=trace)  # fmt: skip
    except torch.OutOfMemoryError as e:
        for sink in opened:
            sink.abort()
        raise DeviceError(GPU_OUT_OF_MEMORY) from e
    except BaseException:
        for sink in opened:
            sink.abort()
        raise
    finally:
        for chunks in sources:
            chunks.close()
        bar.close()
    seconds = time.perf_counter() - start
    return DecodeResult(
        mode=mode,
        model=model_name(vae),
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        videos=sum(g.batch for g in sizes),
        frames_per_video=sizes[0].frames,
        height=sizes[0].height,
        width=sizes[0].width,
        seconds=seconds,
        total_frames=sum(g.batch * g.frames for g in sizes),
        outputs=outputs,
        peak_vram_bytes=torch.cuda.max_memory_allocated(torch_device) if torch_device.type == "cuda" else None,
    )


def outputs_for(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> list[Path]:
    """One output path per input file: ``{name}`` in ``output`` is replaced by each input's stem,
    or ``output`` is a folder (existing, or a name without a suffix) that receives ``<stem>.mp4``."""
    stems = [Path(p).stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise OutputError("Several inputs share a file name; their outputs would collide. Rename them.")
    output = str(output)
    if "{name}" in output:
        return [Path(output.replace("{name}", stem)) for stem in stems]
    folder = Path(output)
    if folder.is_dir() or (not folder.exists() and not folder.suffix):
        return [folder / f"{stem}.mp4" for stem in stems]
    raise OutputError(
        f"With {len(stems)} inputs, the output must be a folder or contain {{name}} "
        f"(e.g. out/{{name}}.mp4); got {output!r}."
    )


def prepare_latents(latents: torch.Tensor, vae: Any, latent_format: str, name: str) -> torch.Tensor:
    """Check the latents against the VAE and bring them to its device and dtype, de-normalized."""
    param = next(vae.parameters())
    if isinstance(latents, torch.Tensor):  # the checks below read every value: on a GPU in microseconds
        latents = latents.to(param.device)
    latents = check_latents(latents, z_dim=vae.config.z_dim)
    if latent_format == "pipeline" and looks_raw(latents, vae.config.latents_mean, vae.config.latents_std):
        warnings.warn(
            f"The latents of {name} look like raw latents (already de-normalized: their statistics match the VAE's "
            "latents_mean/latents_std, not 0 and 1); de-normalizing them again gives a washed-out video. "
            "If they come from vae.encode(), use --latent-format raw (latent_format='raw').",
            UserWarning,
            stacklevel=4,
        )
    if latent_format == "pipeline":
        return denormalize(latents, vae.config.latents_mean, vae.config.latents_std, dtype=param.dtype)
    return latents.to(param.dtype)


def _is_sinks(output: Output) -> bool:
    return isinstance(output, Sink) or (isinstance(output, Sequence) and not isinstance(output, str))


def _check_not_an_input(path: Path, sources: set[Path]) -> None:
    if path.resolve() in sources:
        raise OutputError(
            f"The output {path} is also an input; writing it would destroy the latents. Give another path."
        )


def _make_sinks(output: Output, batch: int, video: VideoSettings, sources: set[Path]) -> tuple[list[Sink], list[str]]:
    if _is_sinks(output):
        sinks = [output] if isinstance(output, Sink) else list(output)
        if len(sinks) != batch:
            raise SettingsError(f"Got {len(sinks)} sink(s) for {batch} video(s); give one sink per video.")
        return sinks, [str(getattr(s, "path", type(s).__name__)) for s in sinks]
    paths = batch_paths(Path(output), batch)
    if len(set(paths)) != len(paths):
        raise OutputError(f"Output names for {batch} videos collide: {paths[0]}.")
    for path in paths:
        _check_not_an_input(path, sources)
    return [open_sink(p, video) for p in paths], [str(p) for p in paths]
