"""A progress bar in frames, with frames/s and ETA, on stderr (tqdm); silent when disabled."""

from __future__ import annotations

import threading


class FrameProgress:
    """Counts written frames; ``update`` may be called from the writer threads.

    Nothing is shown until ``start``, so an input that fails its checks prints only its error."""

    def __init__(self, *, enabled: bool, desc: str = "decode") -> None:
        self._enabled, self._desc = enabled, desc
        self._bar = None
        self._lock = threading.Lock()

    def start(self, total: int | None) -> None:
        """Show the bar, for ``total`` frames (None: a count without an end)."""
        if self._enabled and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="frame", desc=self._desc, dynamic_ncols=True, leave=False)

    def update(self, frames: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(frames)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
