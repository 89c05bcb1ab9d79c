"""The fast decoder with a residual block's norm2 + SiLU applied inside conv1's tile of two dots
(``WanDecoderStep._norm_tile``), against norming conv1's output apart, side by side in one
process: ``vae.decode`` and both, alternated, best of ``--runs``, GPU-only decode + uint8 conversion,
with each one's peak memory, mean power and clock, and uint8 difference from ``vae.decode``.

    python benchmarks/norm_in_conv.py --runs 3 --cases wan2.1:bfloat16:480x832 wan2.1:bfloat16:720x1280
"""

from __future__ import annotations

import torch
import window_conv_gain
from decoder_speed import means, uint8_difference
from gpu_power import alternated
from script_inputs import case_lines, machine, random_case

import framepipe._decoder as decoder
from framepipe import to_uint8_frames
from framepipe._window_conv import WindowTile

IN_KERNEL = decoder.WanDecoderStep._norm_tile
VARIANTS = ("norms apart", "norm in conv1's kernel")  # the last: as shipped


def case(arch: str, dtype: str, size: tuple[int, int], frames: int, runs: int) -> dict:
    vae, z = random_case(arch, dtype, size, frames, "cuda")
    chosen: dict[str, dict] = {variant: {} for variant in VARIANTS}
    steps = {variant: decoder.WanDecoderStep(vae, exact=False) for variant in VARIANTS}
    choosers = {variant: window_conv_gain.chooser("fast", chosen[variant]) for variant in VARIANTS}
    plain = decoder.fastest_way

    def fast(variant: str, keep: list | None = None) -> None:
        decoder.fastest_way = choosers[variant]  # each variant's first-use choices its own
        if variant == "norms apart":
            decoder.WanDecoderStep._norm_tile = lambda step, conv, norm, x: None
        try:
            window_conv_gain.decoded(vae, z, steps[variant], keep)
        finally:
            decoder.fastest_way, decoder.WanDecoderStep._norm_tile = plain, IN_KERNEL

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
        whole = to_uint8_frames(vae.decode(z).sample).cpu()
        ways = {"vae.decode": lambda: to_uint8_frames(vae.decode(z).sample)}
        ways |= {variant: lambda v=variant: fast(v) for variant in VARIANTS}
        timed = alternated(ways, runs, z.device)
    best = {name: round(min(s), 4) for name, s in timed["seconds"].items()}
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
