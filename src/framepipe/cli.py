"""The ``framepipe`` command line: ``decode``, ``bench``, ``compare``, ``demo``, and the data side's
``pack``, ``snapshot``, ``restore`` and ``feed-bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from ._errors import FramepipeError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
ARCH_CHOICES = ("wan2.1", "wan2.2", "tiny-wan2.1", "tiny-wan2.2")
ARCH_HELP = (
    "random weights of this architecture instead of the embedded trained VAE (noise; for benchmarking "
    "a full-size architecture); with --vae, checked against the checkpoint"
)


def _segment_frames(text: str) -> int | str:
    from ._segments import SPELLING, parse_segment_frames

    try:
        return parse_segment_frames(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {SPELLING}, got {text!r}") from None


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_decode_options(p: argparse.ArgumentParser, *, demo: bool, mode: bool = True) -> None:
    if mode:
        p.add_argument(
            "--mode",
            choices=("async", "sync"),
            default="async",
            help="async: the overlapped pipeline (default); sync: the in-order reference. Same frames.",
        )
    p.add_argument(
        "--device",
        default=None,
        help="cuda, cuda:N or cpu (default: cuda if available)" + (" [demo default: cpu]" if demo else ""),
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="VAE compute dtype")
    p.add_argument("--fps", type=float, default=16.0, help="output frame rate (default 16)")
    p.add_argument("--crf", type=int, default=18, help="x264/x265 constant rate factor (default 18)")
    p.add_argument("--preset", default="medium", help="encoder preset (default medium)")
    p.add_argument("--codec", default="libx264", help="FFmpeg video encoder (default libx264)")
    p.add_argument(
        "--encoder-option",
        type=_encoder_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further FFmpeg encoder option, e.g. threads=4 or rc-lookahead=20 (repeat for more)",
    )
    p.add_argument(
        "--encoder-nice",
        type=int,
        default=0,
        metavar="N",
        help="opt-in (Linux): encode N nice levels (1-19) below the decoding, so that encoders give way to the "
        "thread that launches the GPU's work (same files)",
    )
    p.add_argument(
        "--encoder-processes",
        action="store_true",
        help="opt-in: run each encoder in a worker process fed through shared memory, so that encoding never "
        "holds the interpreter lock the decoding thread needs (same files; video files only)",
    )
    p.add_argument(
        "--segment-frames",
        type=_segment_frames,
        default=None,
        metavar="N|tail[:G[:L]]",
        help="opt-in: encode independent segments of N frames in parallel and join them into one file; "
        "'tail': segments that halve in length towards the end, so little encoding is left after the "
        "last chunk; 'tail:G': that shrink by G instead of 2; 'tail:G:L': down to a last segment of L "
        "frames instead of 4 (same frames in, a different bitstream: more keyframes, a larger file)",
    )
    if not demo:
        p.add_argument(
            "--device-yuv",
            action="store_true",
            help="opt-in: convert frames to yuv420p on the GPU (half the bytes to the host, no colour "
            "conversion there; same RGB frames, chroma within one level of FFmpeg's area filter, not its "
            "default bilinear one); video files only",
        )
    p.add_argument("--slots", type=int, default=2, help="async ring depth (default 2: double buffering)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepipe",
        description="Decode Wan latent videos chunk by chunk while the host encodes (same pixels, constant VRAM).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"framepipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .data._cli import add_parsers as add_data_parsers

    d = sub.add_parser("decode", help="decode a latent video file into MP4 / PNG frames / .npy")
    d.add_argument(
        "latents",
        nargs="+",
        help="latents: .safetensors, .pt or .npy; shape (C,T,H,W) or (B,C,T,H,W). Several files are decoded "
        "back to back in one pipeline (async): -o is then a folder, or a name with {name} (the input's stem)",
    )
    d.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: .mp4/.mov/.mkv, .npy, or a folder name for PNG frames; "
        "several videos become name_0.mp4, name_1.mp4, ... (or use {index})",
    )
    d.add_argument(
        "--vae",
        default=None,
        help="VAE checkpoint: diffusers folder, Wan2.1_VAE.pth / Wan2.2_VAE.pth, or ComfyUI "
        ".safetensors. Omitted: framepipe's embedded trained tiny Wan 2.1 VAE",
    )
    d.add_argument("--arch", default=None, choices=ARCH_CHOICES, help=ARCH_HELP)
    d.add_argument(
        "--latent-format",
        choices=("pipeline", "raw"),
        default="pipeline",
        help="pipeline: as WanPipeline(output_type='latent') returns them, de-normalized here "
        "(default); raw: already de-normalized",
    )
    d.add_argument("--seed", type=int, default=0, help="seed for random VAE weights (default 0)")
    d.add_argument(
        "--concurrent-videos",
        type=_count,
        default=1,
        metavar="N",
        help="with several inputs on CUDA: decode N of them at once, each on its own stream, so that one "
        "video's kernels fill the GPU's idle moments between another's (same frames; more peak VRAM: each "
        "adds its own activations and cache; default 1)",
    )
    _add_decode_options(d, demo=False)

    b = sub.add_parser(
        "bench",
        help="time diffusers, sync, async, gpu-only and encode-only on the same latents, side by side",
        description="Runs the same latents through each mode in one process on one card; reports min/mean/P99/max "
        "seconds, frames/s, ratio to gpu-only, kernel utilization (separate profiled run), peak VRAM, peak host "
        "memory, bytes copied device-to-host and cost.",
    )
    b.add_argument("--vae", default=None, help="VAE checkpoint (as for decode); omitted: the embedded trained VAE")
    b.add_argument("--arch", default=None, choices=ARCH_CHOICES, help=ARCH_HELP)
    b.add_argument("--latents", default=None, help="latent file in pipeline format (default: seeded random latents)")
    b.add_argument("--shape", default=None, help="latent shape BxTxHxW for random latents, e.g. 1x21x60x104")
    b.add_argument("--frames", type=int, default=None, help="pixel frames for random latents (1 + 4k), e.g. 81")
    b.add_argument("--size", default=None, help="pixel size HxW for random latents, e.g. 480x832")
    b.add_argument("--modes", default=",".join(("diffusers", "sync", "async", "gpu-only", "encode-only")),
                   help="comma-separated modes (default: all but async-stream); async-stream decodes "
                        "--stream-videos copies back to back in one pipeline, reported per video")  # fmt: skip
    b.add_argument("--stream-videos", type=int, default=4, help="videos per async-stream run (default 4)")
    b.add_argument("--concurrent-videos", type=_counts, default=[1], metavar="N[,N...]",
                   help="async-stream: decode N of its videos at once, each on its own CUDA stream (as decode "
                        "--concurrent-videos); several values give one async-stream row each (default 1)")  # fmt: skip
    b.add_argument("--encoder-variant", action="append", default=[], metavar="SPEC",
                   help="also run sync/async/encode-only/async-stream with these encoder changes, side by side "
                        "(repeatable): comma-separated processes, nice=N, segment-frames=N|tail[:G[:L]] or an encoder "
                        "option KEY=VALUE, e.g. 'processes,nice=19'")  # fmt: skip
    b.add_argument("--warmup", type=int, default=1, help="untimed runs per mode (default 1)")
    b.add_argument("--runs", type=int, default=10, help="timed runs per mode (default 10)")
    b.add_argument("--profile", choices=("on", "off"), default="on",
                   help="one extra profiled run per mode: kernel utilization, timelines (default on)")  # fmt: skip
    b.add_argument("--timeline-dir", default=None, help="write timeline-MODE.png here (needs --profile on)")
    b.add_argument("--price-per-hour", type=float, default=None, help="USD per GPU-hour, for the cost columns")
    b.add_argument("--video-fps", type=float, default=None, help="fps of the decoded video for cost (default --fps)")
    b.add_argument("--seed", type=int, default=0, help="seed for random weights and latents (default 0)")
    _add_decode_options(b, demo=False, mode=False)

    c = sub.add_parser(
        "compare",
        help="pixel error of a candidate path (dtype, executor) against the plain fp32 diffusers decode",
    )
    c.add_argument("latents", nargs="?", default=None,
                   help="latent file (default: a procedural clip encoded by the VAE itself, or --shape)")  # fmt: skip
    c.add_argument("--shape", default=None, help="seeded random latents of this shape BxTxHxW instead")
    c.add_argument("--clip", default="17x128x128",
                   help="FxHxW of the default procedural clip (default 17x128x128)")  # fmt: skip
    c.add_argument("--vae", default=None, help="VAE checkpoint (as for decode); omitted: the embedded trained VAE")
    c.add_argument("--arch", default=None, choices=ARCH_CHOICES, help=ARCH_HELP)
    c.add_argument("--latent-format", choices=("pipeline", "raw"), default="pipeline")
    c.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="candidate dtype")
    c.add_argument("--mode", choices=("async", "sync"), default="async", help="candidate executor")
    c.add_argument("--slots", type=int, default=2)
    c.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print the result as JSON")

    m = sub.add_parser(
        "demo",
        help="encode a procedural clip with the embedded trained VAE, decode it through the pipeline, and write "
        "original and reconstruction side by side (CPU by default)",
    )
    m.add_argument("-o", "--output", default="framepipe-demo.mp4", help="output (default framepipe-demo.mp4)")
    m.add_argument("--frames", type=int, default=33, help="clip length, 1 + 4k frames (default 33)")
    m.add_argument("--size", type=int, default=256, help="clip height and width, a multiple of 8 (default 256)")
    m.add_argument("--seed", type=int, default=0, help="which procedural clip (default 0)")
    _add_decode_options(m, demo=True)
    add_data_parsers(sub)
    return parser


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "framepipe" in filename.replace(os.sep, "/"):
            print(f"framepipe: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=FutureWarning)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from ._bench import EncoderSettings, format_table, run_bench
    from ._latents import check_latents, load_latents
    from ._models import describe_vae, load_vae, resolve_device

    device = resolve_device(args.device)
    custom = args.vae or args.arch or args.latents or args.shape or args.frames or args.size
    vae = load_vae(args.vae, arch=args.arch, dtype=args.dtype, device=device, seed=args.seed)
    if args.latents:
        latents = check_latents(load_latents(args.latents), z_dim=vae.config.z_dim)
    else:
        shape = _latent_shape(args, vae, small=device.type != "cuda" and not custom)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    timeline_dir = Path(args.timeline_dir) if args.timeline_dir else None

    def announce(mode: str) -> None:
        if not args.quiet and not args.json:
            print(f"bench: {mode} ({args.warmup} warm-up, {args.runs} timed"
                  f"{', 1 profiled' if args.profile == 'on' else ''})", file=sys.stderr)  # fmt: skip

    report = run_bench(
        vae, latents, modes=modes,
        encoder=EncoderSettings(codec=args.codec, preset=args.preset, crf=args.crf, fps=args.fps,
                                segment_frames=args.segment_frames, device_yuv=args.device_yuv,
                                options=dict(args.encoder_option), nice=args.encoder_nice,
                                processes=args.encoder_processes),  # fmt: skip
        warmup=args.warmup, runs=args.runs, slots=args.slots, profile=args.profile == "on",
        timeline_dir=timeline_dir, video_fps=args.video_fps, price_per_hour=args.price_per_hour, on_mode=announce,
        stream_videos=args.stream_videos, concurrent_videos=args.concurrent_videos,
        model=describe_vae(args.vae, args.arch, args.seed),
        encoder_variants=args.encoder_variant,
    )  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    st, env = report["settings"], report["environment"]
    print(f"{env.get('gpu') or 'CPU'} | {st['device']} {st['dtype']} | {st['videos']} x {st['frames_per_video']} "
          f"frames of {st['width']}x{st['height']} | {st['encoder']['codec']} {st['encoder']['preset']} "
          f"crf {st['encoder']['crf']} | {st['warmup']} warm-up + {st['runs']} runs | torch {env['torch']}, "
          f"diffusers {env['diffusers']}, libavcodec {env['libavcodec']} | {env['date']}")  # fmt: skip
    print(format_table(report["modes"], price_per_hour=st["price_per_gpu_hour"], baseline=st["baseline"]))
    print(f"kernel utilization: {st['kernel_utilization']}")
    print(f"GPU busy: {st['gpu_busy']}")
    if st["price_per_gpu_hour"] is not None:
        print(f"cost: {st['cost_formula']}")
    pngs = [r["timeline_png"] for r in report["modes"] if r["timeline_png"]]
    if pngs:
        print("timelines: " + ", ".join(pngs))
    return 0


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    """``--shape BxTxHxW`` (latent units) as four integers."""
    try:
        b, t, h, w = (int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise FramepipeError(f"Invalid --shape {text!r}; expected BxTxHxW, e.g. 1x21x60x104.") from None
    return b, t, h, w


def _parse_clip(text: str, vae) -> tuple[int, int, int]:
    """``--clip FxHxW`` in pixels, checked against what ``vae`` can encode."""
    spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FramepipeError(f"Invalid --clip {text!r}; expected FxHxW in pixels, e.g. 17x128x128.") from None
    if frames < 1 or (frames - 1) % temporal or min(height, width) < spatial or height % spatial or width % spatial:
        raise FramepipeError(
            f"Invalid --clip {text!r}: this VAE needs 1 + {temporal}k frames of multiples of {spatial} pixels."
        )
    return frames, height, width


def _latent_shape(args: argparse.Namespace, vae, *, small: bool) -> tuple[int, ...]:
    z, spatial, temporal = vae.config.z_dim, vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    if args.shape:
        b, t, h, w = _parse_shape(args.shape)
        return (b, z, t, h, w)
    frames = args.frames or (21 if small else 81)
    size = args.size or ("256x256" if small else "480x832")
    try:
        height, width = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise FramepipeError(f"Invalid --size {size!r}; expected HxW, e.g. 480x832.") from None
    if (frames - 1) % temporal or height % spatial or width % spatial or min(frames, height, width) < 1:
        raise FramepipeError(
            f"This VAE decodes 1 + {temporal}k frames of multiples of {spatial} pixels; "
            f"got {frames} frames of {height}x{width}."
        )
    return (1, z, 1 + (frames - 1) // temporal, height // spatial, width // spatial)


def _compare(args: argparse.Namespace) -> int:
    import torch

    from ._compare import compare
    from ._latents import load_latents
    from ._models import load_vae

    vae = load_vae(args.vae, arch=args.arch, dtype="float32", device=args.device, seed=args.seed)
    latent_format, source = args.latent_format, args.latents
    if args.latents:
        latents = load_latents(args.latents)
    elif args.shape:
        b, t, h, w = _parse_shape(args.shape)
        latents = torch.randn(b, vae.config.z_dim, t, h, w, generator=torch.Generator().manual_seed(args.seed))
        source = f"random latents {args.shape} (seed {args.seed})"
    else:
        from ._demo import clip_latents
        from ._synth import synth_clips

        frames, height, width = _parse_clip(args.clip, vae)
        latents = clip_latents(vae, synth_clips(1, frames, height, width, seed=args.seed))
        latent_format, source = "raw", f"procedural clip {args.clip} (seed {args.seed}) encoded by this VAE"
    report = compare(vae, latents, dtype=args.dtype, mode=args.mode, slots=args.slots, latent_format=latent_format)
    report["latents"] = source
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    e, ref, cand = report["error"], report["reference"], report["candidate"]
    psnr = "identical (inf)" if e["psnr_db"] is None else f"{e['psnr_db']:.2f} dB"
    print(f"latents: {source}")
    print(f"reference: {ref['path']}, {ref['dtype']}, {ref['device']}")
    print(f"candidate: {cand['path']}, {cand['dtype']}, {cand['device']}")
    print(f"{report['videos']} x {report['frames_per_video']} frames of {report['width']}x{report['height']}: "
          f"max abs error {e['max_abs']}, mean abs error {e['mean_abs']:.4f}, PSNR {psnr}, "
          f"{100 * e['share_differing']:.3f} % of values differ")  # fmt: skip
    return 0


def _demo(args: argparse.Namespace, common: dict) -> int:
    from ._demo import run_demo
    from ._models import load_vae

    if args.frames < 1 or (args.frames - 1) % 4 or args.size < 8 or args.size % 8:
        raise FramepipeError(f"--frames must be 1 + 4k and --size a multiple of 8; got {args.frames} and {args.size}.")
    vae = load_vae(None, dtype=args.dtype, device=args.device or "cpu")
    if not args.quiet and not args.json:
        print(f"framepipe demo: a procedural {args.frames}-frame {args.size}x{args.size} clip, encoded by "
              "framepipe's trained tiny Wan 2.1 VAE and decoded again (left: original, right: decoded)",
              file=sys.stderr)  # fmt: skip
    demo = run_demo(args.output, vae, frames=args.frames, size=args.size, seed=args.seed, **common)
    result = demo.decode
    if args.json:
        print(json.dumps({**result.to_dict(), "outputs": [str(args.output)], "psnr_db": round(demo.psnr_db, 3)}))
    elif not args.quiet:
        print(f"wrote {args.output}: {result.frames_per_video} frames of {2 * result.width}x{result.height} "
              f"(original | decoded) in {result.seconds:.2f} s ({result.frames_per_second:.1f} frames/s, "
              f"{result.mode}, {result.device}, {result.dtype}); PSNR {demo.psnr_db:.2f} dB")  # fmt: skip
    return 0


def _stream_outputs(inputs: list[str], output: str) -> list[str]:
    """Output paths for several inputs: ``{name}`` is replaced by each input's stem, or ``output``
    is an existing folder that receives ``<stem>.mp4``."""
    stems = [Path(p).stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise FramepipeError("Several inputs share a file name; their outputs would collide. Rename them.")
    if "{name}" in output:
        return [output.replace("{name}", stem) for stem in stems]
    if Path(output).is_dir():
        return [str(Path(output) / f"{stem}.mp4") for stem in stems]
    raise FramepipeError(
        f"With {len(inputs)} inputs, -o must be an existing folder or contain {{name}} (e.g. out/{{name}}.mp4); "
        f"got {output!r}."
    )


def _run(args: argparse.Namespace) -> int:
    from .data._cli import COMMANDS as DATA_COMMANDS

    if args.command in DATA_COMMANDS:
        from .data._cli import run as run_data

        return run_data(args)
    from diffusers.utils import logging as diffusers_logging

    from ._api import decode

    diffusers_logging.set_verbosity_error()
    if args.command == "bench":
        return _bench(args)
    if args.command == "compare":
        return _compare(args)

    common = dict(
        mode=args.mode, fps=args.fps, crf=args.crf, preset=args.preset, codec=args.codec, slots=args.slots,
        encoder_options=dict(args.encoder_option), encoder_nice=args.encoder_nice,
        encoder_processes=args.encoder_processes, segment_frames=args.segment_frames,
        progress=not args.quiet and not args.json,
    )  # fmt: skip
    if args.command == "demo":
        return _demo(args, common)
    common["device_yuv"] = args.device_yuv
    if len(args.latents) == 1:
        result = decode(
            args.latents[0], args.output, vae=args.vae, arch=args.arch, device=args.device, dtype=args.dtype,
            latent_format=args.latent_format, seed=args.seed, **common,
        )  # fmt: skip
    else:
        from ._api import decode_many

        pairs = list(zip(args.latents, _stream_outputs(args.latents, args.output), strict=True))
        options = dict(
            vae=args.vae, arch=args.arch, device=args.device, dtype=args.dtype, latent_format=args.latent_format,
            seed=args.seed, **common,
        )  # fmt: skip
        if args.mode == "sync" and args.concurrent_videos > 1:
            raise ValueError("--concurrent-videos needs --mode async; the sync reference decodes one video at a time.")
        if args.mode == "sync":  # the reference: one video after the other
            from ._models import load_vae

            options["vae"] = load_vae(args.vae, arch=args.arch, dtype=args.dtype, device=args.device, seed=args.seed)
            results = [decode(latents, output, **options) for latents, output in pairs]
            result = dataclasses.replace(
                results[0],
                outputs=[o for r in results for o in r.outputs],
                total_frames=sum(r.videos * r.frames_per_video for r in results),
                videos=sum(r.videos for r in results),
                seconds=sum(r.seconds for r in results),
            )
        else:
            options.pop("mode")
            result = decode_many(pairs, concurrent_videos=args.concurrent_videos, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        where = ", ".join(result.outputs)
        vram = f", peak VRAM {result.peak_vram_bytes / 2**30:.2f} GiB" if result.peak_vram_bytes else ""
        sizes = (
            f"{result.videos} x {result.frames_per_video} frames"
            if result.total_frames in (None, result.videos * result.frames_per_video)
            else f"{result.videos} videos, {result.total_frames} frames"
        )
        print(
            f"wrote {where}: {sizes} of {result.width}x{result.height} in {result.seconds:.2f} s "
            f"({result.frames_per_second:.1f} frames/s, {result.mode}, {result.device}, {result.dtype}{vram})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        return _run(args)
    except FramepipeError as e:
        print(f"framepipe: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        from .data._cli import COMMANDS as DATA_COMMANDS

        if args.command in DATA_COMMANDS:
            print("framepipe: interrupted; run the same command again to resume where it stopped.", file=sys.stderr)
        else:
            print("framepipe: interrupted; nothing was written to the output path.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as e:
        print(f"framepipe: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError":
            raise
        print("framepipe: error: the GPU ran out of memory; free GPU memory, use --dtype bfloat16, or decode "
              "fewer videos at once.", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
