"""argparse value types shared by framepipe's command lines (the decoder's and the data side's): each
turns one string into a value, or tells argparse in one line what was wrong."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argument type for a whole number from ``minimum`` to ``maximum`` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value: int | None = int(text.strip())
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {text!r}")
        return value

    return parse
