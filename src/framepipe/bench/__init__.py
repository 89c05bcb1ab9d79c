"""``framepipe bench``: where the time goes. The same latents through every path, in one process
on one card, with kernel utilization from a profiled run, memory, bytes copied and cost.

Timelines need matplotlib (``pip install 'framepipe[bench]'``)."""

from ._report import ModeResult, environment, format_table, summarize
from ._run import BENCH_MODES, DEFAULT_MODES, encoder_variant, run_bench

__all__ = [
    "BENCH_MODES",
    "DEFAULT_MODES",
    "ModeResult",
    "encoder_variant",
    "environment",
    "format_table",
    "run_bench",
    "summarize",
]
