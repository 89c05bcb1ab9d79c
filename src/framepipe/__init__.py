"""framepipe: keep NVIDIA GPUs busy in generative video.

Decode a Wan latent video one chunk at a time and write each chunk on the host while the GPU
already decodes the next one: same pixels as ``AutoencoderKLWan.decode``, constant GPU memory.
Decoding needs ``framepipe[video]``; the training side's data loading lives in ``framepipe.data``
and needs neither diffusers nor PyAV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import (
    CheckpointError,
    DataError,
    DeviceError,
    EncoderError,
    FramepipeError,
    LatentsError,
    MissingDependencyError,
    OutputError,
    SettingsError,
    ShardError,
    TooLargeError,
)
from ._lazy import public_names

# The rest of the public API, by the module that owns each name: imported at first use, so that
# ``framepipe --help``, the data commands and their worker processes start without torch.
_MODULES = {
    "._api": ("DecodeResult", "decode", "decode_many"),
    "._latents": ("check_latents", "denormalize", "latent_shape", "load_latents", "random_latents"),
    "._models": ("ARCHITECTURES", "EMBEDDED_VAE", "embedded_vae", "load_vae", "random_vae"),
    "._postprocess": ("to_uint8_frames",),
    "._source": ("decode_chunks",),
    "._split": ("SplitDecoder",),
    ".sinks": ("ArraySink", "NpySink", "PngFolderSink", "SegmentedVideoSink", "Sink", "VideoFileSink",
               "VideoSettings", "open_sink"),
}  # fmt: skip
__getattr__, __dir__ = public_names(__name__, _MODULES)

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._api import DecodeResult, decode, decode_many
    from ._latents import check_latents, denormalize, latent_shape, load_latents, random_latents
    from ._models import ARCHITECTURES, EMBEDDED_VAE, embedded_vae, load_vae, random_vae
    from ._postprocess import to_uint8_frames
    from ._source import decode_chunks
    from ._split import SplitDecoder
    from .sinks import (
        ArraySink,
        NpySink,
        PngFolderSink,
        SegmentedVideoSink,
        Sink,
        VideoFileSink,
        VideoSettings,
        open_sink,
    )

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ArraySink",
    "CheckpointError",
    "DataError",
    "DecodeResult",
    "DeviceError",
    "EMBEDDED_VAE",
    "EncoderError",
    "FramepipeError",
    "LatentsError",
    "MissingDependencyError",
    "NpySink",
    "OutputError",
    "PngFolderSink",
    "SegmentedVideoSink",
    "SettingsError",
    "ShardError",
    "Sink",
    "SplitDecoder",
    "TooLargeError",
    "VideoFileSink",
    "VideoSettings",
    "check_latents",
    "decode",
    "decode_chunks",
    "decode_many",
    "denormalize",
    "embedded_vae",
    "latent_shape",
    "load_latents",
    "load_vae",
    "open_sink",
    "random_latents",
    "random_vae",
    "to_uint8_frames",
]
