"""``VideoSettings``: how frames become a video file, checked once and passed down whole.

It is the one place where the encoder's settings live: the command line builds one, ``decode``
takes one, the sinks read it, and the bench and the demo pass it on unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from .._errors import SettingsError

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")  # fmt: skip
TAIL = "tail"
SEGMENT_SPELLING = "a number of frames >= 1, 'tail', 'tail:G' or 'tail:G:L' (1 < G <= 16, 1 <= L <= 64)"


@dataclass(frozen=True)
class VideoSettings:
    """The video encoder's settings. Invalid values raise ``SettingsError`` when the object is made.

    Args:
        codec: FFmpeg encoder name (default ``libx264``; ``libx265``; ``h264_nvenc`` on cards with NVENC).
        preset: encoder speed preset (default ``medium``); None: the encoder's own default.
        crf: constant rate factor of x264/x265 (default 18; lower is better quality and a larger
            file, 0 is lossless); None: the encoder's own default.
        fps: frames per second of the output (default 16, Wan's rate).
        encoder_options: further FFmpeg encoder options as strings (``{"threads": "4"}``); one the
            encoder does not know fails when the file is opened, never silently.
        segment_frames: opt-in, a different bitstream: encode independent segments of this many
            frames on several encoders at once and join them into one file; ``"tail"`` for
            segments that halve in length towards the end (``"tail:G"``: shrink by G instead of 2;
            ``"tail:G:L"``: down to L frames instead of 4). See ``SegmentedVideoSink``.
    """

    codec: str = "libx264"
    preset: str | None = "medium"
    crf: int | None = 18
    fps: float = 16.0
    encoder_options: Mapping[str, str] = field(default_factory=dict)
    segment_frames: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not self.codec:
            raise SettingsError(f"codec must be an FFmpeg encoder name, got {self.codec!r}.")
        if (
            isinstance(self.fps, bool)
            or not isinstance(self.fps, int | float)
            or not (math.isfinite(self.fps) and 1 / 1001 <= self.fps <= 1000)
        ):
            raise SettingsError(f"fps must be a number from 1/1001 to 1000, got {self.fps!r}.")
        if self.codec in ("libx264", "libx265"):
            if self.preset is not None and self.preset not in X264_PRESETS:
                raise SettingsError(
                    f"Invalid preset {self.preset!r} for {self.codec}. Supported: {', '.join(X264_PRESETS)}."
                )
            crf = self.crf
            if crf is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51):
                raise SettingsError(f"Invalid crf {crf!r} for {self.codec}: use 0 (lossless) to 51.")
        options = dict(self.encoder_options or {})
        bad = [f"{k!r}={v!r}" for k, v in options.items() if not (isinstance(k, str) and k and isinstance(v, str))]
        if bad:
            raise SettingsError(f"Encoder options must map names to strings, got {', '.join(bad)}.")
        object.__setattr__(self, "encoder_options", options)
        if self.segment_frames is not None:
            tail_spec(self.segment_frames)

    @property
    def rate(self) -> Fraction:
        """``fps`` as the fraction the container stores (denominator at most 1001: 30000/1001 stays exact)."""
        return Fraction(self.fps).limit_denominator(1001)

    @property
    def codec_options(self) -> dict[str, str]:
        """What FFmpeg's encoder is given: ``encoder_options`` plus ``crf`` and ``preset`` where
        the encoder takes them (an explicit encoder option wins)."""
        options = dict(self.encoder_options)
        if self.codec in ("libx264", "libx265"):
            if self.crf is not None:
                options.setdefault("crf", str(self.crf))
            if self.preset is not None:
                options.setdefault("preset", self.preset)
        elif self.preset is not None and self.codec.endswith("_nvenc"):
            options.setdefault("preset", self.preset)
        if self.codec == "libx265" and "log-level" not in options.get("x265-params", ""):
            # x265 prints its own banner (25 lines) to stderr; errors still come through.
            params = options.get("x265-params", "")
            options["x265-params"] = f"{params}:log-level=error" if params else "log-level=error"
        return options

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values, for reports."""
        return asdict(self)


def tail_spec(segment_frames: int | str) -> tuple[float, int] | None:
    """``(growth, last)`` of a ``"tail"``, ``"tail:G"`` or ``"tail:G:L"`` segment plan (G defaults
    to 2, L to 4); None for fixed-length segments. ``SettingsError`` for anything else."""
    if isinstance(segment_frames, str) and segment_frames.split(":")[0] == TAIL:
        values = segment_frames.split(":")[1:]
        try:
            growth = float(values[0]) if values else 2.0
            last = int(values[1]) if len(values) > 1 else 4
        except ValueError:
            growth, last = 0.0, 0
        if len(values) <= 2 and 1 < growth <= 16 and 1 <= last <= 64:
            return growth, last
    elif isinstance(segment_frames, int) and not isinstance(segment_frames, bool) and segment_frames >= 1:
        return None
    raise SettingsError(f"segment_frames must be {SEGMENT_SPELLING}, got {segment_frames!r}.")


def parse_segment_frames(text: str) -> int | str:
    """``segment_frames`` from its command-line spelling: ``N``, ``tail``, ``tail:G`` or ``tail:G:L``."""
    value: int | str = int(text) if text.strip().isdigit() else text
    tail_spec(value)
    return value


def tail_plan(frames: int, last: int = 4, growth: float = 2.0) -> list[int]:
    """Segment lengths for ``frames`` frames that grow by ``growth`` away from the end:
    ..., last * growth**2, last * growth, last (rounded).

    With x264's look-ahead, a segment's encoding is mostly still ahead when its last frame arrives,
    and it must finish while the segments after it are decoded. So a segment may be about as long
    as those after it, times its encoder's speed over the decoder's: ``growth`` = 1 + that ratio
    (2: as fast as the decoder; lower when the decoder is faster or the encoders share few cores).
    Frames left over at the start form a first segment of their own (joined to the next if shorter
    than ``last``: every segment costs a keyframe)."""
    if frames < 1 or last < 1 or not growth > 1:
        raise ValueError(f"tail_plan needs frames >= 1, last >= 1 and growth > 1, got {frames}, {last} and {growth}.")
    lengths, left, k = [], frames, 0
    while left > 0:
        length = max(lengths[-1] if lengths else last, round(last * growth**k))
        lengths.append(min(length, left))
        left -= lengths[-1]
        k += 1
    lengths.reverse()
    if len(lengths) > 1 and lengths[0] < last:
        first = lengths.pop(0)
        lengths[0] += first
    return lengths
