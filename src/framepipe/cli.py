"""The ``framepipe`` command line: ``decode`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from ._errors import FramepipeError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _add_decode_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
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
    p.add_argument("--slots", type=int, default=2, help="async ring depth (default 2: double buffering)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepipe",
        description="Decode Wan latent videos chunk by chunk while the host encodes (same pixels, constant VRAM).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decode", help="decode a latent video file into MP4 / PNG frames / .npy")
    d.add_argument("latents", help="latents: .safetensors, .pt or .npy; shape (C,T,H,W) or (B,C,T,H,W)")
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
        ".safetensors. Omitted: random weights (noise, for benchmarking)",
    )
    d.add_argument(
        "--arch",
        default=None,
        choices=("wan2.1", "wan2.2", "tiny-wan2.1", "tiny-wan2.2"),
        help="architecture for random weights (default wan2.1); checked against --vae",
    )
    d.add_argument(
        "--latent-format",
        choices=("pipeline", "raw"),
        default="pipeline",
        help="pipeline: as WanPipeline(output_type='latent') returns them, de-normalized here "
        "(default); raw: already de-normalized",
    )
    d.add_argument("--seed", type=int, default=0, help="seed for random VAE weights (default 0)")
    _add_decode_options(d, demo=False)

    m = sub.add_parser("demo", help="decode a built-in sample latent video on the CPU into an MP4")
    m.add_argument("-o", "--output", default="framepipe-demo.mp4", help="output (default framepipe-demo.mp4)")
    _add_decode_options(m, demo=True)
    return parser


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "framepipe" in filename.replace(os.sep, "/"):
            print(f"framepipe: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=FutureWarning)


def _run(args: argparse.Namespace) -> int:
    from diffusers.utils import logging as diffusers_logging

    from ._api import decode

    diffusers_logging.set_verbosity_error()

    common = dict(
        mode=args.mode, fps=args.fps, crf=args.crf, preset=args.preset, codec=args.codec, slots=args.slots,
        progress=not args.quiet and not args.json,
    )  # fmt: skip
    if args.command == "demo":
        from ._demo import sample_latents
        from ._models import move_vae, random_vae, resolve_device, resolve_dtype

        device = resolve_device(args.device or "cpu")
        vae = move_vae(random_vae("tiny-wan2.1", seed=0), device=device, dtype=resolve_dtype(args.dtype))
        if not args.quiet:
            print(
                "framepipe demo: a tiny Wan 2.1 VAE with seeded random weights decodes a built-in latent "
                "video; the frames show moving patterns, not a real scene.",
                file=sys.stderr,
            )
        result = decode(sample_latents(), args.output, vae=vae, latent_format="raw", **common)
    else:
        result = decode(
            args.latents, args.output, vae=args.vae, arch=args.arch, device=args.device, dtype=args.dtype,
            latent_format=args.latent_format, seed=args.seed, **common,
        )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        where = ", ".join(result.outputs)
        vram = f", peak VRAM {result.peak_vram_bytes / 2**30:.2f} GiB" if result.peak_vram_bytes else ""
        print(
            f"wrote {where}: {result.videos} x {result.frames_per_video} frames of "
            f"{result.width}x{result.height} in {result.seconds:.2f} s "
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
        print("framepipe: interrupted; nothing was written to the output path.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as e:
        print(f"framepipe: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
