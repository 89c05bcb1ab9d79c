"""The fast decoder with a residual block's norm2 + SiLU applied inside conv1's tile of two dots
(``WanDecoderStep._norm_tile``), against norming conv1's output apart, side by side in one
process: ``vae.decode`` and both, alternated, best of ``--runs``, GPU-only decode + uint8 conversion,
with each one's peak memory, mean power and clock, and uint8 difference from ``vae.decode``.

    python benchmarks/norm_in_conv.py --runs 3 --cases wan2.1:bfloat16:480x832 wan2.1:bfloat16:720x1280
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
import window_conv_gain
from decoder_speed import means, uint8_difference
from script_inputs import case_lines, machine, random_case

import framepipe._decoder as decoder
from framepipe._window_conv import WindowTile

VARIANTS = ("norms apart", "norm in conv1's kernel")  # the last: as shipped


def case(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int) -> dict:
    vae, z = random_case(arch, dtype, size, frames, "cuda")
    chosen: dict[str, dict] = {variant: {} for variant in VARIANTS}
    steps = {variant: decoder.WanDecoderStep(vae, "fast") for variant in VARIANTS}
    choosers = {variant: window_conv_gain.chooser("fast", chosen[variant]) for variant in VARIANTS}

    def fast(variant: str, keep: list | None = None) -> None:
        with contextlib.ExitStack() as patched:
            patched.enter_context(mock.patch.object(decoder, "fastest_way", choosers[variant]))  # its own choices
            if variant == "norms apart":
                apart = lambda step, conv, norm, x: None  # noqa: E731
                patched.enter_context(mock.patch.object(decoder.WanDecoderStep, "_norm_tile", apart))
            window_conv_gain.decoded(vae, z, steps[variant], keep)

    with torch.inference_mode():
        outs, peaks = {}, {}
        for variant in VARIANTS:  # first use: the choices; then one decode kept, its peak measured
            fast(variant)
            keep: list = []
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fast(variant, keep)
            torch.cuda.synchronize()
            peaks[variant] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            outs[variant] = torch.cat(keep, 1)
        whole, timed, best = window_conv_gain.against_vae_decode(vae, z, fast, VARIANTS, runs)
    return {
        "case": f"{arch}:{dtype}:{size[0]}x{size[1]}", "seconds": best, "all_seconds": timed["seconds"],
        "speedup": {v: round(best["vae.decode"] / best[v], 3) for v in VARIANTS},
        "watts": {name: means(figures).get("watts") for name, figures in timed["power"].items()},
        "mhz": {name: means(figures).get("sm_mhz") for name, figures in timed["power"].items()},
        "peak_gib": peaks,
        "uint8_vs_vae_decode": {v: uint8_difference(outs[v], whole) for v in VARIANTS},
        "uint8_between": uint8_difference(outs[VARIANTS[1]], outs[VARIANTS[0]]),
        "window_shapes": {v: [sum(isinstance(w, WindowTile) for w in c.values()), len(c)] for v, c in chosen.items()},
        **machine("cuda"),
    }  # fmt: skip


def main() -> None:
    case_lines(__doc__.splitlines()[0], case)


if __name__ == "__main__":
    main()
