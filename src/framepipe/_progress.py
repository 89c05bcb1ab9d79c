"""A progress bar in frames, with frames/s and ETA, on stderr (tqdm); silent when disabled."""

from __future__ import annotations

import threading


class FrameProgress:
    """Counts written frames; ``update`` may be called from the writer thread."""

    def __init__(self, total: int | None, *, enabled: bool, batch: int = 1, desc: str = "decode") -> None:
        self._bar = None
        self._lock = threading.Lock()
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="frame", desc=desc, dynamic_ncols=True, leave=False)
        self._batch = batch

    def update(self, frames_per_video: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(frames_per_video * self._batch)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
