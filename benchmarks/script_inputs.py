"""What the benchmark scripts beside this file take in: encoder settings and decode cases from their
command line, and the latent shape of a video of a given size for an architecture; and where the
decode cases' rows go."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

import framepipe
from framepipe.sinks import VideoSettings, parse_segment_frames


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset``, ``--crf``, ``--segment-frames`` and ``--encoder-option``, as ``framepipe``'s commands
    take them."""
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--segment-frames", default="tail")
    parser.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE")


def video_settings(args: argparse.Namespace) -> VideoSettings:
    """The ``VideoSettings`` that ``add_encoder_arguments``' options give."""
    options = dict(option.split("=", 1) for option in args.encoder_option)
    return VideoSettings(preset=args.preset, crf=args.crf, segment_frames=parse_segment_frames(args.segment_frames),
                         encoder_options=options)  # fmt: skip


def latents_shape(arch: str, *, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    """(1, C, T, H, W): the latents that ``arch``'s VAE decodes into one video of that size (its
    config read from a weightless model on the meta device)."""
    with torch.device("meta"):
        vae = framepipe.random_vae(arch)
    b, t, h, w = framepipe.latent_shape(vae, frames=frames, height=height, width=width)
    return b, vae.config.z_dim, t, h, w


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """``--arch``, ``--size``, ``--frames``, ``--dtypes``, ``--runs``, ``--device`` and ``--out``: one
    decode case a dtype, for ``rows_per_dtype``."""
    parser.add_argument("--arch", default="wan2.1")
    parser.add_argument("--size", default="480x832")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)


def rows_per_dtype(args: argparse.Namespace, run: Callable[[str, tuple[int, int]], dict], name: str) -> None:
    """``run(dtype, (height, width))`` for each of ``--dtypes``: each row printed as it comes, all of
    them written to ``--out``/NAME.json with the machine's description."""
    size = tuple(int(v) for v in args.size.split("x"))
    env = machine(args.device)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtypes:
        rows.append(run(dtype, size))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


def case_lines(description: str, case: Callable[[str, str, tuple[int, int], int, int], dict]) -> None:
    """A script's command line of ``--cases ARCH:DTYPE:HxW ...``, ``--frames`` and ``--runs``:
    ``case(arch, dtype, (height, width), frames, runs)`` for each, printed as one JSON line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", nargs="+", default=["wan2.1:bfloat16:480x832"], help="ARCH:DTYPE:HxW")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for spec in args.cases:
        arch, dtype, size = spec.split(":")
        height, width = map(int, size.split("x"))
        print(json.dumps(case(arch, dtype, (height, width), args.frames, args.runs)), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the last case's model and caches, before the next one's


def machine(device: str) -> dict:
    """Where a script's figures were measured: the card (the CPU's architecture off CUDA), torch,
    Python, the date."""
    card = torch.cuda.get_device_name() if device.startswith("cuda") else platform.machine()
    return {"device": card, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def random_case(arch: str, dtype: str, size: tuple[int, int], frames: int, device: str, videos: int = 1):
    """``arch``'s VAE with seeded random weights on ``device`` in ``dtype``, and seeded random latents
    of ``videos`` videos of ``frames`` frames of ``size`` (H, W) for it: (vae, [B, C, T, H, W])."""
    vae = framepipe.random_vae(arch).to(device, getattr(torch, dtype))
    b, t, h, w = framepipe.latent_shape(vae, frames=frames, height=size[0], width=size[1], batch=videos)
    g = torch.Generator(device=device).manual_seed(0)
    return vae, torch.randn((b, vae.config.z_dim, t, h, w), generator=g, device=device).to(vae.dtype)
