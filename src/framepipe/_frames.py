"""What a sink receives, as plain shapes: kept free of torch so that encoder processes start fast."""

from __future__ import annotations

FRAME_FORMATS = ("rgb24", "yuv420p")


def frame_shape(frame_format: str, height: int, width: int) -> tuple[int, ...]:
    """Shape of one frame as the sinks receive it: [H, W, 3] for rgb24, [H * 3 / 2, W] for yuv420p."""
    return (height, width, 3) if frame_format == "rgb24" else (height * 3 // 2, width)


def check_frame_format(frame_format: str) -> str:
    """``frame_format`` if it is one of ``FRAME_FORMATS``; a ``ValueError`` otherwise."""
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"Invalid frame_format {frame_format!r}. Supported: {', '.join(FRAME_FORMATS)}.")
    return frame_format
