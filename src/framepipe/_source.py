"""The chunk source: decode a latent video one latent frame at a time with Wan's causal conv cache.

This is ``AutoencoderKLWan._decode`` without the concatenation: the same modules are called on the
same slices in the same order, so every chunk equals the matching frames of ``vae.decode``, but
each chunk is handed on as soon as it exists and the whole video is never held on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ._choices import DECODERS, check_choice
from ._decoder import WanDecoderStep
from ._errors import GPU_OUT_OF_MEMORY, CheckpointError, DeviceError, SettingsError
from ._graphs import StepGraphs, graphable
from ._optional import require
from ._window_conv import kernel_runs_on

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan


#: What makes a video's chunks, called as ``decode_chunks`` is: ``decode_chunks`` or ``ProceduralChunks()``.
ChunkSource = Callable[..., Iterator[torch.Tensor]]


@dataclass(frozen=True)
class VideoGeometry:
    """Sizes of the decoded video: ``batch`` videos of ``frames`` frames of ``height`` x ``width``."""

    batch: int
    frames: int
    height: int
    width: int
    max_chunk_frames: int


def geometry(
    vae: AutoencoderKLWan, latents_shape: tuple[int, ...], *, latent_frames_per_chunk: int = 1
) -> VideoGeometry:
    """What ``vae`` decodes latents of ``latents_shape`` (B, C, T, H, W) into, chunk by chunk."""
    b, _, t, h, w = latents_shape
    spatial = vae.config.scale_factor_spatial
    temporal = vae.config.scale_factor_temporal
    frames = 1 + temporal * (t - 1)
    return VideoGeometry(b, frames, h * spatial, w * spatial, temporal * latent_frames_per_chunk)


def causal_conv_count(vae: AutoencoderKLWan) -> int:
    """How many causal 3D convolutions the decoder has: one cache entry each."""
    wan = require("diffusers.models.autoencoders.autoencoder_kl_wan", "video")
    return sum(isinstance(m, wan.WanCausalConv3d) for m in vae.decoder.modules())


#: One latent frame through the decoder: ``step(x, cache, first_chunk=...)`` (see ``WanDecoderStep``).
DecoderStep = Callable[..., torch.Tensor]


@torch.inference_mode()
def decode_chunks(
    vae: AutoencoderKLWan,
    latents: torch.Tensor,
    *,
    latent_frames_per_chunk: int = 1,
    decoder: str = "framepipe",
    step: DecoderStep | None = None,
    graphs: StepGraphs | None = None,
) -> Iterator[torch.Tensor]:
    """Yield decoded chunks of ``latents`` (already de-normalized, on the VAE's device and dtype).

    # latents: [B, C, T, H, W] -> each chunk: [B, 3, t, H*s, W*s] in [-1, 1], vae dtype, on device.
    The first chunk holds 1 + 4 (k - 1) frames, later ones 4 k, for k latent frames per chunk
    (k = 1 by default, as diffusers). ``decoder``: ``"framepipe"`` (``WanDecoderStep``: the same
    bits, fewer copies), ``"fast"`` (the same, its convolutions free to change the bits),
    ``"fast-fp8"`` (fast, its residual blocks' convolutions in FP8: ``_fp8.py``; a Hopper GPU) or
    ``"diffusers"`` (its ``WanDecoder3d.forward`` as is); ``step`` replaces either (the split
    decode's band of rows uses it). ``graphs``: where framepipe's decoders keep
    their CUDA graphs for the next video (``_graphs.py``; a device worker's). The kernels run on the
    current CUDA stream; nothing here waits for the GPU (see ``FirstChunkCheck``).
    """
    if latent_frames_per_chunk < 1:
        raise SettingsError(f"latent_frames_per_chunk must be >= 1, got {latent_frames_per_chunk}.")
    check_choice("decoder", decoder, DECODERS)
    if decoder == "fast-fp8" and not (latents.is_cuda and kernel_runs_on(latents.device)):
        raise SettingsError(
            f"--decoder fast-fp8 needs an NVIDIA Hopper (or newer) GPU with Triton; the latents are on "
            f"{latents.device}. Use --decoder fast there."
        )
    unpatchify = require("diffusers.models.autoencoders.autoencoder_kl_wan", "video").unpatchify
    patch = vae.config.patch_size
    feat_cache: list[torch.Tensor | None] = [None] * causal_conv_count(vae)
    held = ExitStack()  # the graphs this video holds
    made = step is None and decoder != "diffusers"  # framepipe's step, made here (not a split band's)
    if made:
        if graphs is not None and graphable(latents, decoder):
            step = held.enter_context(graphs.step(vae, latents, decoder=decoder))
        else:
            step = WanDecoderStep(vae, decoder)
    elif step is None:

        def step(x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
            return vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)

    try:
        # As diffusers: the 1x1x1 post-quant conv runs once over the whole (small) latent video.
        x = vae.post_quant_conv(latents)
        if latents.is_cuda:  # made on another stream: its memory must not be reused before this read
            latents.record_stream(torch.cuda.current_stream(latents.device))
        num_latent = x.shape[2]
        if made and num_latent:
            step.run_checks(x[:, :, :1])  # its first-use checks, before the cache grows
        start = 0
        check: FirstChunkCheck | None = None
        while start < num_latent:
            group = min(latent_frames_per_chunk, num_latent - start)
            outs = []
            for i in range(start, start + group):
                outs.append(step(x[:, :, i : i + 1], feat_cache, first_chunk=(i == 0)))
            out = outs[0] if group == 1 else torch.cat(outs, dim=2)
            del outs
            if patch is not None:
                out = unpatchify(out, patch_size=patch)
            if check is None:
                check = FirstChunkCheck(out)
            yield torch.clamp(out, min=-1.0, max=1.0)
            check.raise_if_bad(wait=False)
            start += group
        if check is not None:
            check.raise_if_bad(wait=True)
    except torch.OutOfMemoryError as e:
        raise DeviceError(GPU_OUT_OF_MEMORY) from e
    finally:
        feat_cache.clear()
        held.close()


class ProceduralChunks:
    """A chunk source for benchmarks with random weights, whose decode is noise (x264's worst case):
    it decodes as ``decode_chunks`` does, so the GPU does the same work, and hands on in each chunk's
    place the frames of a procedural clip of the decoded size, which encode like real video."""

    def __init__(self) -> None:
        self.clip: torch.Tensor | None = None  # the longest clip drawn so far, [B, 3, F, H, W]

    def frames(self, g: VideoGeometry, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A procedural clip of ``g``'s size per video; drawn again only for a longer or another-sized video."""
        c = self.clip
        if c is None or c.shape[2] < g.frames or c.shape[:1] + c.shape[3:] != (g.batch, g.height, g.width):
            from ._synth import synth_clips

            c = synth_clips(g.batch, g.frames, g.height, g.width, device=device)
        self.clip = c = c.to(device, dtype)
        return c[:, :, : g.frames]

    def __call__(self, vae: AutoencoderKLWan, latents: torch.Tensor, **options) -> Iterator[torch.Tensor]:
        g = geometry(vae, tuple(latents.shape))
        clip, start = None, 0
        for chunk in decode_chunks(vae, latents, **options):
            if clip is None:  # once per video, on the decode's device and in its dtype
                clip = self.frames(g, chunk.device, chunk.dtype)
            n = chunk.shape[2]
            yield clip[:, :, start : start + n]
            start += n


class FirstChunkCheck:
    """Whether the first decoded chunk is finite: a VAE with broken weights (or one that overflows
    in bfloat16) decodes NaN, which clamping and the uint8 rule would turn into a black video.

    The flag is computed on the GPU and copied to pinned memory behind a CUDA event, and read only
    once the event has passed (``wait=False``), or at the end of the video (``wait=True``), so the
    check never stalls the launching of the next chunks. Later chunks are not checked.
    """

    def __init__(self, chunk: torch.Tensor) -> None:
        finite = torch.isfinite(chunk).all()
        self.checked, self.event = False, None
        if chunk.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(finite, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag = finite

    def raise_if_bad(self, *, wait: bool) -> None:
        if self.checked or (self.event is not None and not wait and not self.event.query()):
            return
        if self.event is not None:
            self.event.synchronize()
        self.checked = True
        if not bool(self.flag):
            raise CheckpointError(
                "The VAE decoded NaN or infinite values: its weights are broken, or this checkpoint overflows "
                "in bfloat16 (try --dtype float32). Nothing was written."
            )


def minimum_decode_bytes(vae: AutoencoderKLWan, g: VideoGeometry, dtype: torch.dtype) -> int:
    """A lower bound on the memory one chunk's decode takes: the decoder's last stage keeps about
    three tensors of its full-resolution width, for the chunk's frames and the two its causal
    cache holds (measured peaks are 2-4 times this: 8.9 GiB for Wan 2.1 at 480x832 in fp32)."""
    width = vae.config.get("decoder_base_dim") or vae.config.base_dim
    frames = g.max_chunk_frames + 2
    return 3 * g.batch * width * frames * g.height * g.width * dtype.itemsize


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a decode on ``device``: the GPU's free memory plus what torch holds cached,
    or the host's available memory (Linux); None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(vae: AutoencoderKLWan, g: VideoGeometry, *, videos_at_once: int = 1) -> None:
    """``DeviceError`` before any work when even the lower bound of the decode's memory
    (``minimum_decode_bytes``) exceeds what ``vae``'s device has free."""
    param = next(vae.parameters())
    needed = videos_at_once * minimum_decode_bytes(vae, g, param.dtype)
    free = free_bytes(param.device)
    if free is not None and needed > free:
        raise DeviceError(
            f"Decoding {g.batch} video(s) of {g.height}x{g.width} (HxW) needs at least {needed / 2**30:.1f} GiB on "
            f"{param.device}, which has {free / 2**30:.1f} GiB free; decode smaller frames or fewer at once, "
            "use --dtype bfloat16, or a device with more memory."
        )
