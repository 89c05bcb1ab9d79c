"""framepipe: keep NVIDIA GPUs busy in generative video.

Decode a Wan latent video one chunk at a time and write each chunk on the host while the GPU
already decodes the next one: same pixels as ``AutoencoderKLWan.decode``, constant GPU memory.
The training side's data loading lives in ``framepipe.data``.
"""

from ._api import DecodeResult, decode, decode_many
from ._decode import decode_chunks
from ._errors import (
    CheckpointError,
    DataError,
    DeviceError,
    EncoderError,
    FramepipeError,
    LatentsError,
    OutputError,
    ShardError,
)
from ._latents import check_latents, denormalize, load_latents
from ._models import ARCHITECTURES, EMBEDDED_VAE, embedded_vae, load_vae, random_vae
from ._postprocess import to_uint8_frames, to_yuv420p_frames
from ._sinks import ArraySink, NpySink, PngFolderSink, Sink, VideoFileSink, open_sink

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
    "NpySink",
    "OutputError",
    "PngFolderSink",
    "ShardError",
    "Sink",
    "VideoFileSink",
    "check_latents",
    "decode",
    "decode_many",
    "decode_chunks",
    "denormalize",
    "embedded_vae",
    "load_latents",
    "load_vae",
    "open_sink",
    "random_vae",
    "to_uint8_frames",
    "to_yuv420p_frames",
]
