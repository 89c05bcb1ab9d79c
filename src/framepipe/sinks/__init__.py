"""Where decoded frames go. A sink receives one video's uint8 RGB frames in order (``Sink``);
``open_sink`` picks one by the output path. Every file sink renames its output into place only
when it is whole."""

from ._base import Sink
from ._files import ArraySink, NpySink, PngFolderSink
from ._open import batch_paths, open_sink
from ._segments import SegmentedVideoSink
from ._settings import SEGMENT_SPELLING, X264_PRESETS, VideoSettings, parse_segment_frames, tail_plan, tail_spec
from ._video import VIDEO_SUFFIXES, VideoFileSink

__all__ = [
    "SEGMENT_SPELLING",
    "VIDEO_SUFFIXES",
    "X264_PRESETS",
    "ArraySink",
    "NpySink",
    "PngFolderSink",
    "SegmentedVideoSink",
    "Sink",
    "VideoFileSink",
    "VideoSettings",
    "batch_paths",
    "open_sink",
    "parse_segment_frames",
    "tail_plan",
    "tail_spec",
]
