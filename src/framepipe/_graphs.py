"""CUDA graphs of the decoder step: each chunk's few hundred kernels launched as one graph.

Where the decoder's kernels are short (its low-resolution blocks, the one-frame first chunk) the GPU
waits for the host to launch them, and a service's other threads (encoders, HTTP) slow the host
further. A graph captured of the step replays them all in one launch: the same kernels on the same
memory, so the same bits. A ``StepGraphs`` is kept by whoever decodes video after video (a device
worker): per decoder, one ``ChunkGraphs`` of the last latent frame size, holding its step, its
causal cache's buffers (``WanDecoderStep`` writes them in place, and its first chunk reads none, so
they serve video after video) and two graphs, the first chunk's and the later ones', each captured
once that kind of chunk has run eagerly (which made every first-use check and way choice). They
hold one chunk's memory until the owner closes them or a video of another size replaces them; a
video that finds them in use (another thread decodes one) runs eagerly.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ._decoder import WanDecoderStep
from ._errors import first_line
from ._layouts import parameters_state, same_parameters


class ChunkGraphs:
    """One decoder's chunks of one latent frame shape, as CUDA graphs once each kind of chunk (first,
    later) has run eagerly; ``step(x, cache, first_chunk=...)`` as ``WanDecoderStep``'s, with
    ``cache`` the list this object fills with its buffers at each first chunk. Its output is the
    caller's (a copy of the graph's)."""

    def __init__(self, vae: Any, *, decoder: str, shape: tuple[int, ...]) -> None:
        self.step = WanDecoderStep(vae, decoder)
        self.shape = shape
        self.state = parameters_state(vae.decoder)  # the graphs read the parameters by address
        self.lock = threading.Lock()  # one video at a time
        self.buffers: list | None = None  # the cache, once a later chunk has made every entry it uses
        self.ran: set[bool] = set()  # the kinds of chunk (first_chunk) run eagerly
        self.graphs: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.input: torch.Tensor | None = None
        self.pool = None  # the graphs' memory, shared: they never run at once
        self.stream: torch.cuda.Stream | None = None  # where they are captured
        self.failed = False  # a capture failed: eager from then on
        self.done: torch.cuda.Event | None = None  # recorded after the last video's chunks

    def run_checks(self, x: torch.Tensor) -> None:
        """The step's first-use checks for x's shape (``WanDecoderStep.run_checks``)."""
        self.step.run_checks(x)

    def fits(self, vae: Any, shape: tuple[int, ...]) -> bool:
        """Whether these graphs decode ``shape`` with ``vae``'s decoder as its parameters are now."""
        return self.step.decoder is vae.decoder and self.shape == shape and same_parameters(self.state, vae.decoder)

    def __call__(self, x: torch.Tensor, cache: list, *, first_chunk: bool) -> torch.Tensor:
        if first_chunk and self.buffers is not None:
            cache[:] = self.buffers
        if self.failed or first_chunk not in self.ran or self.buffers is None:
            out = self.step(x, cache, first_chunk=first_chunk)
            self.ran.add(first_chunk)
            if self.buffers is None and not first_chunk:  # every entry the step uses exists (others stay None)
                self.buffers = list(cache)
            return out
        if first_chunk not in self.graphs:
            self._capture(x, first_chunk)
            if self.failed:
                return self.step(x, cache, first_chunk=first_chunk)
        graph, out = self.graphs[first_chunk]
        self.input.copy_(x)
        graph.replay()
        return out.clone()

    def _capture(self, x: torch.Tensor, first_chunk: bool) -> None:
        """Record the step over the static input and buffers (nothing runs until it is replayed)."""
        with torch.cuda.device(x.device):
            if self.input is None:
                self.input = torch.empty_like(x)
                self.pool, self.stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()
            cache = list(self.buffers)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                    out = self.step(self.input, cache, first_chunk=first_chunk)
            except RuntimeError as e:  # an op that cannot be captured: this decoder runs eagerly, as it always can
                self.failed = True
                warnings.warn(f"decoding without CUDA graphs: capturing the decoder failed ({first_line(e)})",
                              stacklevel=2)  # fmt: skip
                return
        if any(a is not b for a, b in zip(cache, self.buffers, strict=True)):
            raise RuntimeError("a graphed decoder step replaced a cache buffer instead of writing it in place")
        self.graphs[first_chunk] = (graph, out)


def graphable(latents: torch.Tensor, decoder: str) -> bool:
    """Whether a decode of ``latents`` with ``decoder`` can run as graphs: framepipe's decoders (exact,
    fast or FP8), on CUDA, not inside another graph's capture."""
    return decoder != "diffusers" and latents.is_cuda and not torch.cuda.is_current_stream_capturing()


class StepGraphs:
    """The ``ChunkGraphs`` of the videos one owner decodes, by decoder module and decoder; ``close()``
    gives their memory back."""

    def __init__(self) -> None:
        self.kept: dict[tuple[int, str], ChunkGraphs] = {}
        self.lock = threading.Lock()

    @contextmanager
    def step(self, vae: Any, latents: torch.Tensor, *, decoder: str) -> Iterator[Any]:
        """The step for one video of ``latents`` (post-quant, [B, C, T, H, W]) for its decode: the
        decoder's ``ChunkGraphs`` of that shape, made (again) if need be, or a plain
        ``WanDecoderStep`` while another video holds them."""
        shape, key = (*latents.shape[:2], 1, *latents.shape[3:]), (id(vae.decoder), decoder)
        with self.lock:
            graphs = self.kept.get(key)
            busy = graphs is not None and graphs.lock.locked()
            if not busy:
                if graphs is None or not graphs.fits(vae, shape):
                    if graphs is not None:  # its memory is free to others once the GPU is done with it
                        torch.cuda.synchronize(latents.device)
                    graphs = self.kept[key] = ChunkGraphs(vae, decoder=decoder, shape=shape)
                graphs.lock.acquire()
        if busy:
            yield WanDecoderStep(vae, decoder)
            return
        stream = torch.cuda.current_stream(latents.device)
        try:
            if graphs.done is not None:  # the last video's chunks, maybe on another stream, wrote the buffers
                stream.wait_event(graphs.done)
            yield graphs
        finally:
            graphs.done = torch.cuda.Event()
            graphs.done.record(stream)
            graphs.lock.release()

    def close(self) -> None:
        """Drop every graph and buffer, once the GPU has finished with them."""
        with self.lock:
            for graphs in self.kept.values():
                if graphs.done is not None:
                    with contextlib.suppress(RuntimeError):  # a broken CUDA context has its own error to tell
                        graphs.done.synchronize()
            self.kept.clear()


__all__ = ["ChunkGraphs", "StepGraphs", "graphable"]
