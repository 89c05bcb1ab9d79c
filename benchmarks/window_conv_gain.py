"""The fast decoder with and without its own window convolution (``_window_conv.py``), side by side in
one process: ``vae.decode``; the fast decoder choosing among cuDNN's ways only; with the kernel reading
the weights' true output channels (TMA's zeros past their end, as it first shipped); with the weights
zero-padded to the kernel's tile, but no tile of two dots (``two_dot_tile``); and as shipped.
Alternated, best of ``--runs``, GPU-only decode + uint8 conversion; one JSON line per case, with the
shapes each variant computes with the kernel and the fast decode's uint8 difference from ``vae.decode``.

    python benchmarks/window_conv_gain.py --cases wan2.1:bfloat16:480x832 wan2.1:float32:480x832 --runs 3
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from unittest import mock

import torch
from decoder_speed import means, uint8_difference
from gpu_power import alternated
from script_inputs import case_lines, machine, random_case

import framepipe._decoder as decoder
import framepipe._equivalence as equivalence
from framepipe import to_uint8_frames
from framepipe._source import decode_chunks
from framepipe._window_conv import WindowTile

VARIANTS = ("cuDNN", "fast, unpadded weights", "fast, no two-dot tile", "fast")  # the last: as shipped
BEFORE_TWO_DOTS = ("cuDNN", "fast, unpadded weights", "fast, no two-dot tile")


def chooser(variant: str, chosen: dict):
    """``fastest_way`` for ``variant``, its choices kept apart from the other variants'."""
    ways_of: dict = {}
    plain = equivalence.fastest_way

    def choose(key, reference, run, ways, **options):
        if variant == "cuDNN":
            ways = [way for way in ways if not isinstance(way, WindowTile)]
        kept, equivalence._WAYS = equivalence._WAYS, ways_of
        try:
            way = plain(key, reference, run, ways, **options)
        finally:
            equivalence._WAYS = kept
        if key[0] == "conv":
            chosen[key] = way
        return way

    return choose


def decoded(vae, z, step, keep: list | None = None) -> None:
    """One decode of ``z`` through ``step`` to uint8 frames on the GPU, each chunk's frames also
    appended to ``keep`` on the host if given."""
    for chunk in decode_chunks(vae, z, step=step):
        frames_u8 = to_uint8_frames(chunk)
        if keep is not None:
            keep.append(frames_u8.cpu())


def against_vae_decode(vae, z, fast: Callable[[str], None], variants: tuple[str, ...], runs: int):
    """``vae.decode``'s uint8 frames (on the host), then it and ``fast(variant)`` for each variant alternated
    (``alternated``): the frames, its figures and each one's best seconds. Under inference mode."""
    whole = to_uint8_frames(vae.decode(z).sample).cpu()
    ways = {"vae.decode": lambda: to_uint8_frames(vae.decode(z).sample)}
    ways |= {variant: lambda v=variant: fast(v) for variant in variants}
    timed = alternated(ways, runs, z.device)
    return whole, timed, {name: round(min(s), 4) for name, s in timed["seconds"].items()}


def case(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int) -> dict:
    vae, z = random_case(arch, dtype, size, frames, "cuda")
    chosen: dict[str, dict] = {variant: {} for variant in VARIANTS}
    steps = {variant: decoder.WanDecoderStep(vae, "fast") for variant in VARIANTS}
    choosers = {variant: chooser(variant, chosen[variant]) for variant in VARIANTS}

    def fast(variant: str, keep: list | None = None) -> None:
        with contextlib.ExitStack() as patched:
            patched.enter_context(mock.patch.object(decoder, "fastest_way", choosers[variant]))
            if variant == "fast, unpadded weights":
                patched.enter_context(mock.patch.object(WindowTile, "weight_rows", lambda tile, channels: channels))
            if variant in BEFORE_TWO_DOTS:
                patched.enter_context(mock.patch.object(decoder, "two_dot_tile", lambda conv, x: None))
            decoded(vae, z, steps[variant], keep)

    with torch.inference_mode():
        shipped: list = []
        for variant in VARIANTS:  # first use: the choices; then one warm decode
            fast(variant)
        fast("fast", shipped)
        ours = torch.cat(shipped, 1)
        whole, timed, best = against_vae_decode(vae, z, fast, VARIANTS, runs)
    return {
        "arch": arch, "dtype": dtype, "height": size[0], "width": size[1], "frames": frames,
        "seconds": best, "all_seconds": timed["seconds"],
        "speedup_vs_vae_decode": {v: round(best["vae.decode"] / best[v], 3) for v in VARIANTS},
        "window_shapes": {v: [sum(isinstance(w, WindowTile) for w in c.values()), len(c)] for v, c in chosen.items()},
        **{f"fast_uint8_{k}": v for k, v in uint8_difference(ours, whole).items()},
        "watts": {name: means(figures).get("watts") for name, figures in timed["power"].items()},
        **machine("cuda"),
    }  # fmt: skip


def main() -> None:
    case_lines(__doc__.splitlines()[0], case)


if __name__ == "__main__":
    main()
