"""The ``framepipe`` command line: ``decode``, ``bench``, ``compare``, ``demo``, and the data side's
``pack``, ``snapshot``, ``restore`` and ``feed-bench``.

It parses, calls the library and prints. A user's mistake arrives as a ``FramepipeError`` and is
printed as one line with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._argtypes import whole_number
from ._choices import CONTENTS, DECODERS
from ._errors import FramepipeError, OutputError, SettingsError
from ._input_files import checked_latent_file, checked_vae_path
from ._paths import removed_if_unused

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
ARCH_CHOICES = ("wan2.1", "wan2.2", "tiny-wan2.1", "tiny-wan2.2")
ARCH_HELP = (
    "random weights of this architecture instead of the embedded trained VAE (noise; for benchmarking "
    "a full-size architecture); with --vae, checked against the checkpoint"
)
VAE_HELP = (
    "VAE checkpoint: diffusers folder, Wan2.1_VAE.pth / Wan2.2_VAE.pth, or ComfyUI .safetensors. "
    "Omitted: framepipe's embedded trained tiny Wan 2.1 VAE"
)


# -- argument types: each turns one string into a value, or tells argparse what was wrong ------------


def _segment_frames(text: str) -> int | str:
    from .sinks import SEGMENT_SPELLING, parse_segment_frames

    try:
        return parse_segment_frames(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {SEGMENT_SPELLING}, got {text!r}") from None


def _encoder_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. threads=4), got {text!r}")
    return key.strip(), value.strip()


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected one or more whole numbers >= 1 separated by commas, got {text!r}")
    return counts


_count = whole_number(1)


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # NaN and negatives too
        raise argparse.ArgumentTypeError(f"expected a number of hours > 0 (or inf), got {text!r}")
    return value


def _sizes(count: int, example: str):
    """An argument type for ``count`` whole numbers joined by ``x`` (e.g. ``480x832``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
        except ValueError:
            values = ()
        if len(values) != count or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected {count} whole numbers like {example}, got {text!r}")
        return values

    return parse


# -- the parser -----------------------------------------------------------------------------------


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vae", default=None, help=VAE_HELP)
    p.add_argument("--arch", default=None, choices=ARCH_CHOICES, help=ARCH_HELP)


def _add_video_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video output (VideoSettings)")
    g.add_argument("--fps", type=float, default=16.0, help="output frame rate (default 16)")
    g.add_argument("--crf", type=int, default=18, help="x264/x265 constant rate factor, 0-51 (default 18)")
    g.add_argument("--preset", default="medium", help="encoder speed preset (default medium)")
    g.add_argument("--codec", default="libx264", help="FFmpeg video encoder (default libx264)")
    g.add_argument(
        "--encoder-option",
        type=_encoder_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further FFmpeg encoder option, e.g. threads=4 (repeat for more); "
        "one the encoder does not know is an error",
    )
    g.add_argument(
        "--segment-frames",
        type=_segment_frames,
        default=None,
        metavar="N|tail[:G[:L]]",
        help="opt-in, a different bitstream: encode independent segments on several encoders at once "
        "and join them; N frames each, or 'tail': segments that halve towards the end (tail:G: "
        "shrink by G; tail:G:L: down to L frames)",
    )


def _add_run_options(p: argparse.ArgumentParser, *, demo: bool = False, mode: bool = True) -> None:
    if mode:
        p.add_argument(
            "--mode",
            choices=("async", "sync"),
            default="async",
            help="async: the overlapped pipeline (default); sync: the in-order reference; same frames",
        )
        p.add_argument(
            "--decoder",
            choices=DECODERS,
            default="framepipe",
            help="framepipe: diffusers' decoder modules with fewer copies and fused kernels (default); "
            "diffusers: its decoder as is; same frames. fast: framepipe's with convolutions free to change "
            "the pixels (opt-in; its error: docs/benchmarks.md). fast-fp8: fast, its residual blocks' "
            "convolutions in FP8 (Hopper GPUs; opt-in, lower fidelity)",
        )
    p.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: " + ("cpu" if demo else "cuda if available") + ")"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="VAE compute dtype")
    p.add_argument("--slots", type=int, default=2, help="async ring depth (default 2: double buffering)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .data._cli import add_parsers as add_data_parsers

    parser = argparse.ArgumentParser(
        prog="framepipe",
        description="Decode Wan latent videos chunk by chunk while the host encodes (same pixels, constant VRAM).",
    )
    parser.add_argument("--version", action="version", version=f"framepipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decode", help="decode latent videos into MP4 / PNG frames / .npy")
    d.add_argument(
        "latents",
        nargs="+",
        help="latents: .safetensors, .pt or .npy; shape (C,T,H,W) or (B,C,T,H,W). Several files are "
        "decoded back to back in one pipeline: -o is then a folder, or a name with {name}",
    )
    d.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: .mp4/.mov/.mkv, .npy, or a folder name for PNG frames; a batch of B videos "
        "becomes name_0.mp4, name_1.mp4, ... (or put {index} in the name)",
    )
    _add_model_options(d)
    d.add_argument(
        "--latent-format",
        choices=("pipeline", "raw"),
        default="pipeline",
        help="pipeline: as WanPipeline(output_type='latent') returns them, de-normalized here "
        "(default); raw: already de-normalized, as vae.encode() gives them",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the random weights with --arch (default 0)")
    d.add_argument(
        "--concurrent-videos",
        type=_count,
        default=1,
        metavar="N",
        help="with several inputs on CUDA: decode N at once, each on its own stream (same frames, "
        "more peak VRAM; default 1)",
    )
    d.add_argument(
        "--split-gpus",
        default=None,
        metavar="all|0,1,...",
        help="decode each video on these GPUs together, split by rows (for latency: halo rows over NCCL; "
        "for throughput over many videos use `framepipe batch --gpus`)",
    )
    _add_run_options(d)
    _add_video_options(d)

    bt = sub.add_parser(
        "batch",
        help="decode many latent videos into a folder, resumable: a journal records each finished video",
        description="Decodes every input into OUTDIR/<name>.mp4. A journal (OUTDIR/framepipe-batch.jsonl) "
        "records each finished video with its size and SHA-256 once it is in place; run the same command "
        "again after a failure or a kill and it skips what is done. A video that fails is recorded with "
        "its error and the batch goes on. Exit status 1 if any video failed.",
    )
    bt.add_argument(
        "inputs",
        nargs="+",
        help="latent files, folders (their .safetensors/.pt/.npy files), glob patterns, s3:// objects or prefixes, "
        "or .jsonl manifests "
        '(one JSON object per line: {"latents": PATH, "name": NAME, "fps": N, "crf": N, "preset": P})',
    )
    bt.add_argument("-o", "--output", required=True, help="output folder (created if missing) or s3://BUCKET/PREFIX")
    bt.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// inputs and outputs (default: boto3's)")
    _add_model_options(bt)
    bt.add_argument("--seed", type=int, default=0, help="seed of the random weights with --arch (default 0)")
    bt.add_argument("--latent-format", choices=("pipeline", "raw"), default="pipeline", help="as for decode")
    bt.add_argument(
        "--gpus",
        default=None,
        metavar="all|0,1,...",
        help="one worker process per GPU, each taking the next video when it is free (default: one worker on --device)",
    )
    bt.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="run on a Ray cluster (auto: the one this machine belongs to; or host:port), one decoder actor "
        "per GPU; inputs and -o: paths every node sees, or s3:// URLs",
    )
    bt.add_argument("--workers", type=_count, default=None, metavar="N", help="with --ray: N decoder actors")
    bt.add_argument(
        "--content",
        choices=tuple(CONTENTS),
        default="decoded",
        help="what the encoders get: decoded (default: the VAE's output) or, for benchmarks with random weights "
        "(--arch), procedural clips of the same size, which encode like real video while the GPU decodes all the same",
    )
    bt.add_argument("--fail-fast", action="store_true", help="stop at the first video that fails")
    bt.add_argument("--verify", action="store_true", help="check finished outputs' SHA-256 before skipping them")
    _add_run_options(bt)
    _add_video_options(bt)

    sv = sub.add_parser(
        "serve",
        help="a decode service: latents in over HTTP, MP4 out, GPU use accounted per job",
        description="Serves POST /v1/jobs (a safetensors body of latents), GET /v1/jobs/ID, GET /v1/jobs/ID/video, "
        "GET /metrics (Prometheus) and GET /healthz. Accepted jobs are journaled in --state-dir: a restarted "
        "service finishes or reports every one.",
    )
    _add_model_options(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=whole_number(1, 65535), default=8000, help="port (default 8000)")
    sv.add_argument("--state-dir", default="framepipe-serve", help="jobs, latents, videos (default ./framepipe-serve)")
    sv.add_argument(
        "--token-env",
        default=None,
        metavar="VAR",
        help="require the bearer token held in environment variable VAR (Authorization: Bearer ...)",
    )
    sv.add_argument("--gpus", default=None, metavar="all|0,1,...", help="one worker per GPU (default: one on --device)")
    sv.add_argument("--max-queue", type=_count, default=16, help="jobs waiting at most; more get 429 (default 16)")
    sv.add_argument("--max-body-mb", type=_count, default=512, help="largest request body in MiB; more gets 413")
    sv.add_argument("--max-latent-frames", type=_count, default=64, help="latent frames per job at most (default 64)")
    sv.add_argument("--input-root", default=None, help="jobs may name latents by path under this folder (default none)")
    sv.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// latents and outputs (default: boto3's)")
    sv.add_argument(
        "--keep-hours",
        type=_hours,
        default=24.0,
        help="finished jobs and their videos are removed this long after they end (default 24; inf: never)",
    )
    sv.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu for the one worker without --gpus (default: cuda if any)"
    )
    sv.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="VAE compute dtype")
    sv.add_argument("--decoder", choices=DECODERS, default="framepipe", help="as for decode")
    _add_video_options(sv)

    b = sub.add_parser(
        "bench",
        help="time diffusers, sync, async, gpu-only, diffusers-decoder and encode-only side by side",
        description="Runs the same latents through each mode in one process on one card; reports "
        "min/mean/P99/max seconds, frames/s, ratio to gpu-only, kernel utilization (separate "
        "profiled run), peak VRAM, peak host memory, bytes copied device-to-host and cost.",
    )
    _add_model_options(b)
    b.add_argument("--latents", default=None, help="latent file in pipeline format (default: seeded random latents)")
    b.add_argument(
        "--shape",
        type=_sizes(4, "1x21x60x104"),
        default=None,
        help="random latents of this shape BxTxHxW (latent units)",
    )
    b.add_argument(
        "--frames",
        type=int,
        default=None,
        help="pixel frames (1 + 4k) of the random latents (default 81 on CUDA, 21 on the CPU)",
    )
    b.add_argument(
        "--size",
        type=_sizes(2, "480x832"),
        default=None,
        help="pixel size HxW of the random latents (default 480x832 on CUDA, 256x256 on the CPU)",
    )
    b.add_argument(
        "--modes",
        default="diffusers,sync,async,gpu-only,diffusers-decoder,encode-only",
        help="comma-separated modes (default: all but async-stream); diffusers-decoder is gpu-only with "
        "diffusers' decoder instead of framepipe's; async-stream decodes --stream-videos copies back to back "
        "in one pipeline, reported per video",
    )
    b.add_argument("--stream-videos", type=int, default=4, help="videos per async-stream run (default 4)")
    b.add_argument(
        "--decoder",
        choices=DECODERS,
        default="framepipe",
        help="the decoder of every mode but diffusers and diffusers-decoder (as for decode; default framepipe)",
    )
    b.add_argument(
        "--content",
        choices=("auto", *CONTENTS),
        default="auto",
        help="what the encoders get: decoded (the VAE's output), procedural (procedural clips of the same size, "
        "which encode like real video, while the GPU decodes all the same); auto (default): procedural for "
        "random weights (--arch), whose output is noise, x264's worst case; decoded otherwise",
    )
    b.add_argument(
        "--concurrent-videos",
        type=_counts,
        default=[1],
        metavar="N[,N...]",
        help="async-stream: decode N of its videos at once; several values give one row each",
    )
    b.add_argument(
        "--encoder-variant",
        action="append",
        default=[],
        metavar="SPEC",
        help="also run sync/async/encode-only/async-stream with these encoder changes, side by side "
        "(repeatable): comma-separated segment-frames=N|tail[:G[:L]] or KEY=VALUE encoder "
        "options, e.g. 'segment-frames=tail'",
    )
    b.add_argument("--warmup", type=int, default=1, help="untimed runs per mode (default 1)")
    b.add_argument("--runs", type=int, default=10, help="timed runs per mode (default 10)")
    b.add_argument(
        "--profile",
        choices=("on", "off"),
        default="on",
        help="one extra profiled run per mode: kernel utilization, timelines (default on)",
    )
    b.add_argument("--timeline-dir", default=None, help="write timeline-MODE.png here (needs framepipe[bench])")
    b.add_argument("--price-per-hour", type=float, default=None, help="USD per GPU-hour, for the cost columns")
    b.add_argument("--video-fps", type=float, default=None, help="fps of the decoded video for cost (default --fps)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random weights and latents (default 0)")
    _add_run_options(b, mode=False)
    _add_video_options(b)

    c = sub.add_parser(
        "compare", help="pixel error of a candidate path (dtype, executor, decoder) against the plain fp32 decode"
    )
    c.add_argument(
        "latents",
        nargs="?",
        default=None,
        help="latent file (default: a procedural clip encoded by the VAE itself, or --shape)",
    )
    c.add_argument(
        "--shape",
        type=_sizes(4, "1x21x60x104"),
        default=None,
        help="seeded random latents of this shape BxTxHxW instead",
    )
    c.add_argument(
        "--clip",
        type=_sizes(3, "17x128x128"),
        default=(17, 128, 128),
        help="FxHxW of the default procedural clip (default 17x128x128)",
    )
    _add_model_options(c)
    c.add_argument(
        "--latent-format",
        choices=("pipeline", "raw"),
        default="pipeline",
        help="how the latent file is normalized (as for decode)",
    )
    c.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="the candidate's dtype")
    c.add_argument("--mode", choices=("async", "sync"), default="async", help="the candidate's executor")
    c.add_argument("--decoder", choices=DECODERS, default="framepipe", help="the candidate's decoder (as for decode)")
    c.add_argument("--slots", type=int, default=2, help="the candidate's async ring depth (default 2)")
    c.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    c.add_argument("--seed", type=int, default=0, help="seed of the clip, random latents or weights (default 0)")
    c.add_argument("--quiet", action="store_true", help="no progress")
    c.add_argument("--json", action="store_true", help="print the result as JSON")

    m = sub.add_parser(
        "demo",
        help="encode a procedural clip with the embedded trained VAE, decode it through the "
        "pipeline, and write original and reconstruction side by side (CPU by default)",
    )
    m.add_argument("-o", "--output", default="framepipe-demo.mp4", help="output (default framepipe-demo.mp4)")
    m.add_argument("--frames", type=int, default=33, help="clip length, 1 + 4k frames (default 33)")
    m.add_argument("--size", type=int, default=256, help="clip height and width, a multiple of 8 (default 256)")
    m.add_argument("--seed", type=int, default=0, help="which procedural clip (default 0)")
    _add_run_options(m, demo=True)
    _add_video_options(m)
    add_data_parsers(sub)
    return parser


# -- the commands ---------------------------------------------------------------------------------


def _video(args: argparse.Namespace):
    from .sinks import VideoSettings

    return VideoSettings(
        codec=args.codec,
        preset=args.preset,
        crf=args.crf,
        fps=args.fps,
        encoder_options=dict(args.encoder_option),
        segment_frames=args.segment_frames,
    )


@contextlib.contextmanager
def _output_folder(folder: Path | None) -> Iterator[None]:
    """Create the outputs' folder if it is missing (as a PNG output's folder is), and remove it again
    if the run fails before writing anything into it."""
    if folder is None or folder.is_dir():
        yield
        return
    if not folder.parent.is_dir():
        raise OutputError(f"Cannot create output folder {folder}: {folder.parent} does not exist.")
    with removed_if_unused(folder):
        folder.mkdir()
        yield


def _decode(args: argparse.Namespace) -> int:
    from ._api import decode_many, outputs_for

    outputs = [args.output] if len(args.latents) == 1 else outputs_for(args.latents, args.output)
    model = {"vae": args.vae, "arch": args.arch, "device": args.device, "seed": args.seed}
    with contextlib.ExitStack() as stack:
        if args.split_gpus:
            from ._models import resolve_gpus
            from ._split import SplitDecoder

            if args.device or args.concurrent_videos > 1 or args.mode != "async" or args.decoder != "framepipe":
                raise SettingsError(
                    "--split-gpus decodes one video at a time with framepipe's decoder in async mode; leave out "
                    "--device, --concurrent-videos, --mode sync and any --decoder but framepipe."
                )
            devices = resolve_gpus(args.split_gpus, option="--split-gpus")
            split = stack.enter_context(SplitDecoder(devices, vae=args.vae, arch=args.arch, dtype=args.dtype,
                                                     seed=args.seed))  # fmt: skip
            model = {"vae": split.vae, "chunk_source": split.chunks}
        stack.enter_context(
            _output_folder(Path(args.output) if len(args.latents) > 1 and "{name}" not in args.output else None)
        )
        result = decode_many(
            list(zip(args.latents, outputs, strict=True)),
            **model,
            video=_video(args),
            mode=args.mode,
            dtype=args.dtype,
            latent_format=args.latent_format,
            decoder=args.decoder,
            slots=args.slots,
            concurrent_videos=args.concurrent_videos,
            progress=not args.quiet and not args.json,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        vram = f", peak VRAM {result.peak_vram_bytes / 2**30:.2f} GiB" if result.peak_vram_bytes else ""
        if result.total_frames == result.videos * result.frames_per_video:
            sizes = f"{result.videos} x {result.frames_per_video} frames"
        else:
            sizes = f"{result.videos} videos, {result.total_frames} frames"
        print(
            f"wrote {', '.join(result.outputs)}: {sizes} of {result.height}x{result.width} (HxW) in "
            f"{result.seconds:.2f} s ({result.frames_per_second:.1f} frames/s, {result.mode}, {result.device}, "
            f"{result.dtype}{vram}; model: {result.model})"
        )
    return 0


def _bench_latents(args: argparse.Namespace, vae, device) -> Any:
    from ._latents import check_latents, latent_shape, load_latents, random_latents

    if args.latents:
        return check_latents(load_latents(args.latents), z_dim=vae.config.z_dim)
    if args.shape:
        return random_latents(vae, args.shape, seed=args.seed)
    small = device.type != "cuda" and not (args.vae or args.arch or args.frames or args.size)
    frames = args.frames or (21 if small else 81)
    height, width = args.size or ((256, 256) if small else (480, 832))
    return random_latents(vae, latent_shape(vae, frames=frames, height=height, width=width), seed=args.seed)


def _warn_if_embedded_on_user_latents(args: argparse.Namespace) -> None:
    """bench and compare make their own latents by default; given a user's, the embedded VAE is
    almost surely the wrong model, so say it once."""
    if args.latents and not args.vae and not args.arch:
        from ._api import EMBEDDED_WARNING

        warnings.warn(EMBEDDED_WARNING, UserWarning, stacklevel=2)


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._models import describe_vae, load_vae, resolve_device
    from .bench import format_table, run_bench

    device = resolve_device(args.device)
    _warn_if_embedded_on_user_latents(args)
    vae = load_vae(args.vae, arch=args.arch, dtype=args.dtype, device=device, seed=args.seed)
    latents = _bench_latents(args, vae, device)

    def announce(mode: str) -> None:
        if not args.quiet and not args.json:
            print(
                f"bench: {mode} ({args.warmup} warm-up, {args.runs} timed"
                f"{', 1 profiled' if args.profile == 'on' else ''})",
                file=sys.stderr,
            )

    report = run_bench(
        vae,
        latents,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()],
        video=_video(args),
        warmup=args.warmup,
        runs=args.runs,
        slots=args.slots,
        profile=args.profile == "on",
        timeline_dir=Path(args.timeline_dir) if args.timeline_dir else None,
        video_fps=args.video_fps,
        price_per_hour=args.price_per_hour,
        on_mode=announce,
        stream_videos=args.stream_videos,
        concurrent_videos=args.concurrent_videos,
        model=describe_vae(args.vae, args.arch, args.seed),
        encoder_variants=args.encoder_variant,
        content=("procedural" if args.arch and not args.vae else "decoded") if args.content == "auto" else args.content,
        decoder=args.decoder,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    st, env, enc = report["settings"], report["environment"], report["settings"]["encoder"]
    print(
        f"{env.get('gpu') or 'CPU'} | {st['model']} | {st['content']} frames to encode | {st['device']} "
        f"{st['dtype']} | {st['videos']} x "
        f"{st['frames_per_video']} frames of {st['height']}x{st['width']} (HxW) | {enc['codec']} {enc['preset']} "
        f"crf {enc['crf']}{' segments ' + str(enc['segment_frames']) if enc['segment_frames'] else ''} | "
        f"{st['warmup']} warm-up + {st['runs']} runs | torch {env['torch']}, diffusers {env['diffusers']}, "
        f"PyAV {env['pyav']} | {env['date']}"
    )
    print(format_table(report["modes"], price_per_hour=st["price_per_gpu_hour"], baseline=st["baseline"]))
    print(f"kernel utilization: {st['kernel_utilization']}")
    print(f"GPU busy: {st['gpu_busy']}")
    if st["price_per_gpu_hour"] is not None:
        print(f"cost: {st['cost_formula']}")
    pngs = [r["timeline_png"] for r in report["modes"] if r["timeline_png"]]
    if pngs:
        print("timelines: " + ", ".join(pngs))
    return 0


def _compare_command(args: argparse.Namespace) -> str:
    """The ``framepipe compare`` command line that repeats this comparison, every setting spelled out."""
    words = ["framepipe", "compare", *([args.latents] if args.latents else [])]
    if args.shape:
        words += ["--shape", "x".join(map(str, args.shape))]
    elif not args.latents:
        words += ["--clip", "x".join(map(str, args.clip))]
    for flag, value in (("--vae", args.vae), ("--arch", args.arch), ("--device", args.device)):
        if value is not None:
            words += [flag, value]
    words += ["--latent-format", args.latent_format, "--dtype", args.dtype, "--mode", args.mode,
              "--decoder", args.decoder, "--slots", str(args.slots), "--seed", str(args.seed), "--json"]  # fmt: skip
    return shlex.join(words)


def _compare(args: argparse.Namespace) -> int:
    from ._compare import compare
    from ._demo import procedural_latents
    from ._latents import load_latents, random_latents
    from ._models import load_vae
    from .bench import environment

    _warn_if_embedded_on_user_latents(args)
    vae = load_vae(args.vae, arch=args.arch, dtype="float32", device=args.device, seed=args.seed)
    latent_format = args.latent_format
    if args.latents:
        latents, source = load_latents(args.latents), args.latents
    elif args.shape:
        latents = random_latents(vae, args.shape, seed=args.seed)
        source = f"random latents {'x'.join(map(str, args.shape))} (seed {args.seed})"
    else:
        latents = procedural_latents(vae, *args.clip, seed=args.seed)
        latent_format = "raw"
        source = f"procedural clip {'x'.join(map(str, args.clip))} (FxHxW, seed {args.seed}) encoded by this VAE"
    candidate = {"dtype": args.dtype, "mode": args.mode, "decoder": args.decoder, "slots": args.slots}

    def phase(words: str) -> None:
        if not args.quiet:
            print(f"framepipe compare: {words}", file=sys.stderr)

    report = compare(vae, latents, **candidate, latent_format=latent_format, on_phase=phase, progress=not args.quiet)
    report["latents"] = source
    report["environment"] = environment(next(vae.parameters()).device)
    report["command"] = _compare_command(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    e, ref, cand = report["error"], report["reference"], report["candidate"]
    psnr = "identical (inf)" if e["psnr_db"] is None else f"{e['psnr_db']:.2f} dB"
    print(f"latents: {source}")
    print(f"model: {report['model']}")
    print(f"reference: {ref['path']}, {ref['dtype']}, {ref['device']}")
    print(f"candidate: {cand['path']}, {cand['dtype']}, {cand['device']}")
    print(
        f"{report['videos']} x {report['frames_per_video']} frames of {report['height']}x{report['width']} (HxW): "
        f"max abs error {e['max_abs']}, mean abs error {e['mean_abs']:.4f}, PSNR {psnr}, "
        f"{100 * e['share_differing']:.3f} % of values differ"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo
    from ._models import load_vae

    talk = not args.quiet and not args.json
    vae = load_vae(None, dtype=args.dtype, device=args.device or "cpu")
    if talk:
        print("framepipe demo: framepipe's trained tiny Wan 2.1 VAE encodes a procedural clip and decodes it "
              "again (left: original, right: decoded)", file=sys.stderr)  # fmt: skip

    def phase(words: str) -> None:
        if talk:
            print(f"framepipe demo: {words}", file=sys.stderr)

    demo = run_demo(args.output, vae, frames=args.frames, size=args.size, seed=args.seed, video=_video(args),
                    mode=args.mode, decoder=args.decoder, slots=args.slots, progress=talk,
                    on_phase=phase)  # fmt: skip
    result = demo.decode
    if args.json:
        report = {**result.to_dict(), "outputs": [str(args.output)], "psnr_db": round(demo.psnr_db, 3),
                  "demo_seconds": round(demo.seconds, 3)}  # fmt: skip
        print(json.dumps(report))
    elif not args.quiet:
        print(f"wrote {args.output}: {result.frames_per_video} frames of {result.height}x{2 * result.width} (HxW; "
              f"original | decoded); PSNR {demo.psnr_db:.2f} dB. The decode took {result.seconds:.2f} s "
              f"({result.frames_per_second:.1f} frames/s, {result.mode}, {result.device}, {result.dtype}); the "
              f"whole demo, drawing and encoding the clip included, {demo.seconds:.1f} s")  # fmt: skip
    return 0


def _batch(args: argparse.Namespace) -> int:
    from ._api import EMBEDDED_WARNING
    from ._models import resolve_devices
    from .batch import BatchOptions, plan_batch, run_batch

    options = BatchOptions(vae=args.vae, arch=args.arch, seed=args.seed, video=_video(args), dtype=args.dtype,
                           decoder=args.decoder, latent_format=args.latent_format, mode=args.mode,
                           slots=args.slots, endpoint_url=args.endpoint_url, content=args.content)  # fmt: skip
    tasks = plan_batch(args.inputs, endpoint_url=args.endpoint_url)
    if args.ray is not None and args.gpus is not None:
        raise SettingsError("--ray and --gpus do not go together: on Ray, each actor takes one of the cluster's GPUs.")
    devices = resolve_devices(args.gpus, args.device) if args.ray is None else ["ray"]
    if args.vae is None and args.arch is None:
        warnings.warn(EMBEDDED_WARNING, UserWarning, stacklevel=1)
    talk = not args.quiet and not args.json

    def progress(entry: dict[str, Any], index: int, total: int) -> None:
        if talk:
            what = f"done in {entry['seconds']:.2f} s" if entry["status"] == "done" else f"failed: {entry['error']}"
            print(f"[{index}/{total}] {entry['name']}: {what}", file=sys.stderr)

    # stdout holds the summary alone: what else prints there while the batch runs (Ray's raylet
    # messages reach the driver's stdout, log_to_driver or not) goes to stderr with the progress
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_batch(tasks, args.output, options, devices=devices, fail_fast=args.fail_fast,
                            verify=args.verify, ray_address=args.ray, workers=args.workers,
                            on_result=progress)  # fmt: skip
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif not args.quiet:
        ratio = summary.gpu_seconds_per_video_second
        per = f", {ratio:.3f} GPU-s per video-s" if ratio is not None and devices[0] != "cpu" else ""
        work = f" ({summary.work_seconds:.1f} s from the first video's start)" if summary.work_seconds else ""
        print(f"batch: {summary.done} done, {summary.skipped} skipped (done before), {summary.failed} failed in "
              f"{summary.seconds:.1f} s{work} on {', '.join(summary.devices)} "
              f"({summary.videos_per_hour:.0f} videos/h{per}); journal {summary.journal}")  # fmt: skip
        figures = summary.per_worker_figures()
        for name, w in figures.items() if len(figures) > 1 else ():  # where each worker's time went
            busy = f" ({w['busy_share']:.1%} of it decoding)" if w["busy_share"] is not None else ""
            videos = f"{w['videos']} video" + ("s" if w["videos"] != 1 else "")
            ready = "" if w.get("loaded_after_s") is None else f" (model loaded {w['loaded_after_s']:.2f} s in)"
            print(f"  {name}: {videos}, {w['gpu_seconds']:.2f} s decoding in {w['span_seconds']:.2f} s"
                  f"{busy}; began {w['started_after_s']:.2f} s after the first worker{ready}, ended "
                  f"{w['ended_before_s']:.2f} s before the last")  # fmt: skip
        for name, error in summary.failures:
            print(f"  failed {name}: {error}")
    return EXIT_ERROR if summary.failed else 0


def _serve(args: argparse.Namespace) -> int:
    from ._models import resolve_devices
    from .serve import ServiceOptions, serve

    devices = resolve_devices(args.gpus, args.device)
    token = None
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            raise SettingsError(f"--token-env {args.token_env}: that environment variable is empty or not set.")
    options = ServiceOptions(vae=args.vae, arch=args.arch, dtype=args.dtype, decoder=args.decoder,
                             devices=tuple(devices), video=_video(args), max_queue=args.max_queue,
                             max_body_bytes=args.max_body_mb * 2**20,
                             max_latent_frames=args.max_latent_frames, input_root=args.input_root,
                             endpoint_url=args.endpoint_url, keep_seconds=args.keep_hours * 3600)  # fmt: skip
    print(f"framepipe serve: http://{args.host}:{args.port} on {', '.join(devices)}; state in {args.state_dir}",
          file=sys.stderr)  # fmt: skip
    serve(options, args.state_dir, host=args.host, port=args.port, token=token)
    return 0


def _run(args: argparse.Namespace) -> int:
    from .data._cli import COMMANDS as DATA_COMMANDS

    if args.command in DATA_COMMANDS:
        from .data._cli import run as run_data

        return run_data(args)
    # A mistyped path fails at once, not after torch and diffusers load (seconds). Not for batch: its
    # inputs may be folders, globs, manifests or objects, and on a Ray cluster the VAE is the nodes'.
    if args.command in ("decode", "bench", "compare", "serve"):
        latents = getattr(args, "latents", None)
        for path in [latents] if isinstance(latents, str) else latents or []:
            checked_latent_file(path)
        if args.vae is not None:
            checked_vae_path(args.vae)
    from ._optional import require

    require("diffusers.utils.logging", "video").set_verbosity_error()
    commands = {"decode": _decode, "batch": _batch, "serve": _serve, "bench": _bench, "compare": _compare,
                "demo": _demo}  # fmt: skip
    return commands[args.command](args)


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "framepipe" in filename.replace(os.sep, "/"):
            print(f"framepipe: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=FutureWarning)


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by timeout, Slurm, Kubernetes, docker stop), raised where Ctrl-C's interrupt
    would be, so that it ends a run the same way: outputs aborted, threads joined, one line."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _output_folders(args: argparse.Namespace) -> list[Path]:
    """Where a command writes its outputs' work in progress (for the interrupt watchdog)."""
    output = getattr(args, "output", None)
    if not isinstance(output, str) or "://" in output:
        return []
    path = Path(output.replace("{name}", "x").replace("{index}", "0"))
    return [path, path.parent]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    in_main_thread = threading.current_thread() is threading.main_thread()
    # The real command line of a decoding command (tests calling main(argv) keep their process;
    # serve and the data commands have their own shutdown, which may rightly take longer).
    if argv is None and in_main_thread and args.command in ("decode", "batch", "demo", "bench"):
        from ._watchdog import install

        install(_output_folders(args))
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run(args)
    except FramepipeError as e:
        print(f"framepipe: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        from .data._cli import COMMANDS as DATA_COMMANDS

        how, code = ("terminated", EXIT_TERMINATED) if isinstance(e, Terminated) else ("interrupted", EXIT_INTERRUPTED)
        if args.command in DATA_COMMANDS or args.command == "batch":
            print(f"framepipe: {how}; run the same command again to resume where it stopped.", file=sys.stderr)
        else:
            print(f"framepipe: {how}; nothing was written to the output path.", file=sys.stderr)
        return code
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
