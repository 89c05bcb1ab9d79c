"""One video decoded on several GPUs at once, for latency: each GPU decodes a band of rows.

Every GPU holds the whole decoder and one band of each latent frame's rows (as even as the rows
allow). A 3x3 convolution reads one row beyond its band on each side: before each one the
neighbours exchange those halo rows (torch.distributed: NCCL between GPUs, Gloo on the CPU), and
a causal convolution's cache keeps its halo rows with its history frames, so each band computes
what the whole frame computes there. The mid block's attention sees the whole frame: the bands are
gathered for it (it runs at the latent size). Each chunk's bands are gathered on the first device,
where the pipeline encodes them as for one GPU.

The calling process is rank 0; ranks 1.. are helper processes, spawned, that load the same VAE,
take one command per video from a queue, and die with the caller.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import socket
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._decoder import WanDecoderStep
from ._errors import DeviceError, FramepipeError, SettingsError
from ._models import load_vae, resolve_device
from ._source import decode_chunks
from ._watchdog import die_with_parent


def bands(rows: int, parts: int) -> list[tuple[int, int]]:
    """``rows`` cut into ``parts`` contiguous bands [start, stop), the first ones one row longer."""
    if not 1 <= parts <= rows:
        raise SettingsError(f"Cannot split {rows} latent rows over {parts} devices; use at most {rows}.")
    size, extra = divmod(rows, parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + size + (p < extra)
        out.append((start, stop))
        start = stop
    return out


class SplitDecoderStep(WanDecoderStep):
    """``WanDecoderStep`` over this rank's band of rows: halo rows exchanged before each 3x3
    convolution, the attention over the gathered frame; the same values as the whole frame's."""

    def __init__(self, vae: Any, latent_bands: list[tuple[int, int]], rank: int) -> None:
        super().__init__(vae)
        self.latent_bands, self.rank, self.world = latent_bands, rank, len(latent_bands)

    def level_bands(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """The bands at ``x``'s resolution (every upsampling doubles the rows of each band)."""
        start, stop = self.latent_bands[self.rank]
        scale = x.shape[-2] // (stop - start)
        return [(a * scale, b * scale) for a, b in self.latent_bands]

    def _exchange(self, window: torch.Tensor, pad: int) -> None:
        if pad == 0:
            return
        rows = window.shape[-2]
        ops, received = [], []
        if self.rank > 0:  # my first rows go up; the band above's last rows come down into my top halo
            up = window[..., pad : 2 * pad, :].contiguous()
            halo = torch.empty_like(up)
            ops += [dist.P2POp(dist.isend, up, self.rank - 1), dist.P2POp(dist.irecv, halo, self.rank - 1)]
            received.append((slice(0, pad), halo))
        if self.rank < self.world - 1:
            down = window[..., rows - 2 * pad : rows - pad, :].contiguous()
            halo = torch.empty_like(down)
            ops += [dist.P2POp(dist.isend, down, self.rank + 1), dist.P2POp(dist.irecv, halo, self.rank + 1)]
            received.append((slice(rows - pad, rows), halo))
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        for where, halo in received:
            window[..., where, :].copy_(halo)

    def _attention(self, attention, x: torch.Tensor) -> torch.Tensor:
        level = self.level_bands(x)
        start, stop = level[self.rank]
        return attention(gather_rows(x, level))[..., start:stop, :].contiguous()

    def _resample(self, sampler, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
        if sampler.mode not in ("upsample2d", "upsample3d"):
            raise SettingsError(f"A split decode cannot run a {sampler.mode!r} resampler.")
        return super()._resample(sampler, x, cache, idx)  # upsampling row r makes rows 2r, 2r + 1: local

    def _upsample_conv(self, conv: torch.nn.Conv2d, frames: torch.Tensor) -> torch.Tensor:
        """The 3x3 convolution over a zero-bordered window whose border rows are the neighbours' rows."""
        n, c, h, w = frames.shape
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        window = torch.empty((n, c, h + 2, w + 2), dtype=frames.dtype, device=frames.device, memory_format=layout)
        window.zero_()
        window[:, :, 1:-1, 1:-1].copy_(frames)
        self._exchange(window, 1)
        return F.conv2d(window, conv.weight, conv.bias)


def gather_rows(band: torch.Tensor, level: list[tuple[int, int]], dst: int | None = None) -> torch.Tensor | None:
    """The whole frame from every rank's band (rows: dim -2): on every rank, or on ``dst`` only
    (None on the others)."""
    tallest = max(b - a for a, b in level)
    padded = band
    if band.shape[-2] < tallest:  # collectives move tensors of one size: shorter bands are padded
        padded = torch.cat([band, band.new_zeros(*band.shape[:-2], tallest - band.shape[-2], band.shape[-1])], -2)
    padded = padded.contiguous()
    if dst is not None and dist.get_rank() != dst:
        dist.gather(padded, None, dst=dst)
        return None
    parts = [torch.empty_like(padded) for _ in level]
    if dst is None:
        dist.all_gather(parts, padded)
    else:
        dist.gather(padded, parts, dst=dst)
    return torch.cat([part[..., : b - a, :] for part, (a, b) in zip(parts, level, strict=True)], dim=-2)


def band_chunks(vae: Any, latents: torch.Tensor, rank: int, world: int, latent_frames_per_chunk: int):
    """This rank's band of each decoded chunk, and the bands of the whole frame at that size."""
    latent_bands = bands(latents.shape[-2], world)
    start, stop = latent_bands[rank]
    step = SplitDecoderStep(vae, latent_bands, rank)
    spatial = vae.config.scale_factor_spatial
    level = [(a * spatial, b * spatial) for a, b in latent_bands]
    for chunk in decode_chunks(vae, latents[..., start:stop, :], latent_frames_per_chunk=latent_frames_per_chunk,
                               step=step):  # fmt: skip
        yield chunk, level


class SplitDecoder:
    """A group of devices that decodes each video together, split by rows (for latency).

    Use its ``vae`` (on the first device) and ``chunks`` as ``decode``'s chunk source::

        with SplitDecoder(["cuda:0", "cuda:1"], vae="Wan2.1_VAE.pth") as split:
            framepipe.decode(latents, "out.mp4", vae=split.vae, chunk_source=split.chunks)
    """

    def __init__(
        self,
        devices: Sequence[str],
        *,
        vae: str | os.PathLike[str] | None = None,
        arch: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
        timeout_s: float = 300.0,
    ) -> None:
        self.devices = [str(resolve_device(d)) for d in devices]
        gpus = [d for d in self.devices if d != "cpu"]
        if len(self.devices) < 2 or len(set(gpus)) != len(gpus) or 0 < len(gpus) < len(self.devices):
            raise SettingsError(  # the CPU may appear more than once: one process each (for tests)
                f"A split decode needs two or more different GPUs, got {', '.join(map(str, devices))}."
            )
        if dist.is_initialized():
            raise SettingsError("This process is already in a torch.distributed group; a split decode makes its own.")
        cuda = self.devices[0].startswith("cuda")
        self.backend = "nccl" if cuda else "gloo"
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (the helpers inherit it)
        self.failure: FramepipeError | None = None
        self.closed = self.active = False
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in self.devices[1:]]
        port = _free_port()
        spec = (str(vae) if vae is not None else None, arch, dtype, seed)
        self.helpers = [
            context.Process(
                target=_helper,
                name=f"framepipe-split-{rank}",
                daemon=True,
                args=(rank, len(self.devices), port, device, spec, timeout_s, self.commands[rank - 1], self.results),
            )  # fmt: skip
            for rank, device in enumerate(self.devices[1:], start=1)
        ]
        for helper in self.helpers:
            helper.start()
        try:
            dist.init_process_group(self.backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                    world_size=len(self.devices), timeout=timedelta(seconds=timeout_s),
                                    device_id=torch.device(self.devices[0]) if cuda else None)  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.vae = load_vae(vae, arch=arch, dtype=dtype, device=self.devices[0], seed=seed)
            for _ in self.helpers:
                message = self.results.get(timeout=timeout_s)
                if message[0] != "ready":
                    raise _helper_error(message)
        except BaseException:
            self.close()
            raise
        self._watcher = threading.Thread(target=self._watch, name="framepipe-split-watch", daemon=True)
        self._watcher.start()

    def chunks(self, vae: Any, latents: torch.Tensor, *, latent_frames_per_chunk: int = 1,
               decoder: str = "framepipe") -> Iterator[torch.Tensor]:  # fmt: skip
        """``decode_chunks`` for ``latents`` (on the first device), decoded by every device together."""
        if vae is not self.vae:
            raise SettingsError("A split decode decodes with its own VAE: pass vae=split.vae.")
        if decoder != "framepipe":
            raise SettingsError(f"A split decode runs framepipe's exact decoder; --decoder {decoder} cannot be split.")
        self._raise_if_failed()
        if self.active:
            raise SettingsError("A split decode decodes one video at a time (concurrent_videos=1).")
        bands(latents.shape[-2], len(self.devices))  # a frame too small to split: said before the helpers start
        self.active = True
        for commands in self.commands:
            commands.put(("decode", tuple(latents.shape), latent_frames_per_chunk))
        finished = False
        try:
            with torch.inference_mode():
                dist.broadcast(latents.contiguous(), src=0)
                for chunk, level in band_chunks(vae, latents, 0, len(self.devices), latent_frames_per_chunk):
                    yield gather_rows(chunk, level, dst=0)
                    self._raise_if_failed()
            finished = True
            self.active = False
        except RuntimeError as e:  # a helper died (DistBackendError is one): its own message is clearer
            self._raise_if_failed(wait_s=5.0)
            raise DeviceError(f"The split decode stopped: {e}") from e
        finally:
            if not finished:  # the helpers are still inside this video: the group cannot go on
                self.failure = self.failure or DeviceError("A split decode was stopped midway; make a new one.")
                self.close()

    def _raise_if_failed(self, wait_s: float = 0.0) -> None:
        if self.failure is None and wait_s:
            with contextlib.suppress(queue.Empty):
                self.failure = _helper_error(self.results.get(timeout=wait_s))
        if self.failure is not None:
            raise self.failure

    def _watch(self) -> None:
        """A helper that exits while the group is open fails the decode; NCCL is aborted, so that
        nothing waits forever on a rank that is gone."""
        sentinels = {helper.sentinel: helper for helper in self.helpers}
        ready = multiprocessing.connection.wait(list(sentinels))
        if self.closed:
            return
        helper = sentinels[ready[0]]
        try:
            message = self.results.get(timeout=2.0)
        except queue.Empty:
            message = ("error", DeviceError(f"the worker {helper.name} stopped (exit code {helper.exitcode})"))
        self.failure = _helper_error(message)
        with contextlib.suppress(Exception):
            dist.distributed_c10d._abort_process_group()

    def close(self) -> None:
        """Stop the helpers and leave the process group (safe to call more than once)."""
        if self.closed:
            return
        self.closed = True
        for commands in self.commands:
            commands.put(None)
        for helper in self.helpers:
            helper.join(timeout=10)
            if helper.is_alive():
                helper.kill()
                helper.join()
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        for q in [*self.commands, self.results]:
            q.close()
            q.join_thread()
        watcher = getattr(self, "_watcher", None)
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()

    def __enter__(self) -> SplitDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _helper_error(message: tuple) -> FramepipeError:
    """The exception a helper's ``("error", error)`` message stands for: our own error as the helper
    raised it, or a ``DeviceError`` naming an internal one (whose traceback the helper printed)."""
    error = message[1]
    if isinstance(error, FramepipeError):
        return error
    return DeviceError(f"the split decode's worker failed: {error} (its traceback is above)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helper(rank: int, world: int, port: int, device: str, spec: tuple, timeout_s: float, commands, results) -> None:
    """Rank ``rank``: join the group, load the VAE on ``device``, decode its band of every video."""
    die_with_parent()
    checkpoint, arch, dtype, seed = spec
    try:
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s),
                                device_id=torch.device(device) if cuda else None)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = load_vae(checkpoint, arch=arch, dtype=dtype, device=device, seed=seed)
        results.put(("ready",))
        while (command := commands.get()) is not None:
            _, shape, latent_frames_per_chunk = command
            with torch.inference_mode():
                latents = torch.empty(shape, dtype=next(vae.parameters()).dtype, device=device)
                dist.broadcast(latents, src=0)
                for chunk, level in band_chunks(vae, latents, rank, world, latent_frames_per_chunk):
                    gather_rows(chunk, level, dst=0)
            if cuda:
                torch.cuda.synchronize(device)
    except FramepipeError as e:
        results.put(("error", type(e)(f"{device}: {e}")))
        raise SystemExit(1) from None
    except BaseException as e:
        traceback.print_exc()
        results.put(("error", f"{device}: {type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
