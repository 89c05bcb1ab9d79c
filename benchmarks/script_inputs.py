"""What the benchmark scripts beside this file take in: encoder settings from their command line,
and the latent shape of a video of a given size for an architecture."""

from __future__ import annotations

import argparse

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
