"""On a CUDA GPU: same pixels across executors and diffusers, the ring under stress, constant VRAM."""

import time

import numpy as np
import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import decode, decode_many, random_vae
from framepipe._pipeline import _Ring
from helpers import diffusers_frames

pytestmark = pytest.mark.needs_cuda


class MemorySink:
    """Keeps a copy of every frame; optionally sleeps inside write and checks its input did not change."""

    def __init__(self, delay=0.0):
        self.frames, self.delay, self.changed_during_write = [], delay, 0

    def open(self, *, frames, height, width):
        pass

    def write(self, frames):
        snapshot = np.array(frames)
        time.sleep(self.delay)
        if not np.array_equal(snapshot, frames):  # the pinned slot was overwritten under us
            self.changed_during_write += 1
        self.frames.append(snapshot)

    def close(self):
        pass

    def abort(self):
        pass

    def video(self):
        return np.concatenate(self.frames)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_executors_equal_diffusers(version, dtype):
    vae = small_vae(version).to("cuda", dtype)
    z = small_latents(version, batch=2, frames=5, height=8, width=12)
    reference = diffusers_frames(vae, z.cuda()).numpy()
    for mode in ("sync", "async"):
        sinks = [MemorySink(), MemorySink()]
        decode(z, sinks, vae=vae, mode=mode)
        for b, sink in enumerate(sinks):
            np.testing.assert_array_equal(sink.video(), reference[b], err_msg=f"{mode} video {b}")


def _stalling_chunks(vae, z):
    """Decode, but stall the compute stream between chunks so copies and writes interleave badly."""
    from framepipe import decode_chunks

    for chunk in decode_chunks(vae, z):
        torch.cuda._sleep(2_000_000)
        yield chunk


def test_pinned_ring_is_not_overwritten_while_a_sink_reads_it(monkeypatch):
    vae = small_vae("wan2.1").cuda()
    z = small_latents("wan2.1", frames=8, height=8, width=8).cuda()
    reference = diffusers_frames(vae, z, latent_format="raw").numpy()[0]
    import framepipe._api as api

    monkeypatch.setattr(api, "decode_chunks", lambda vae, z, **kw: _stalling_chunks(vae, z))
    sink = MemorySink(delay=0.05)
    decode(z, [sink], vae=vae, latent_format="raw", slots=2)
    assert sink.changed_during_write == 0
    np.testing.assert_array_equal(sink.video(), reference)


def test_concurrent_videos_share_the_ring_safely(monkeypatch):
    vae = small_vae("wan2.1").cuda()
    inputs = [small_latents("wan2.1", frames=f, height=8, width=8, seed=f).cuda() for f in (6, 3, 5)]
    references = [diffusers_frames(vae, z, latent_format="raw").numpy()[0] for z in inputs]
    import framepipe._api as api

    monkeypatch.setattr(api, "decode_chunks", lambda vae, z, **kw: _stalling_chunks(vae, z))
    sinks = [MemorySink(delay=0.03) for _ in inputs]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    decode_many([(z, [s]) for z, s in zip(inputs, sinks, strict=True)], vae=vae, latent_format="raw",
                concurrent_videos=2, slots=1)  # fmt: skip
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    for sink, reference in zip(sinks, references, strict=True):
        assert sink.changed_during_write == 0
        np.testing.assert_array_equal(sink.video(), reference)


def test_pinned_ring_guard_corruption_happens_without_slot_release(monkeypatch):
    # Guards the test above: hand out slots round-robin without waiting for the writer, and the
    # same slow sink does see its frames overwritten (so the check above can fail).
    counter = iter(range(10**6))
    monkeypatch.setattr(_Ring, "acquire", lambda self, writer: next(counter) % len(self.host))
    vae = small_vae("wan2.1").cuda()
    z = small_latents("wan2.1", frames=8, height=8, width=8).cuda()
    sink = MemorySink(delay=0.05)
    decode(z, [sink], vae=vae, latent_format="raw", slots=2)
    assert sink.changed_during_write > 0


def test_peak_vram_does_not_grow_with_length():
    vae = random_vae("tiny-wan2.1").cuda()
    peaks = []
    for frames in (6, 24):
        z = torch.randn(1, 16, frames, 32, 48)
        torch.cuda.synchronize()
        result = decode(z, [MemorySink()], vae=vae, latent_format="raw")
        peaks.append(result.peak_vram_bytes)
    assert peaks[1] <= peaks[0] * 1.02, peaks


def test_no_device_memory_left_behind():
    vae = small_vae("wan2.1").cuda()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    decode(small_latents("wan2.1", frames=4), [MemorySink()], vae=vae)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@two_gpus
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_split_decode_on_two_gpus_gives_the_single_gpus_frames(tmp_path, version, dtype):
    """NCCL halo exchange and gather: the frames against the single GPU's. Not bit for bit: cuDNN
    picks its kernels by shape, and a band's convolutions round differently (docs/batch.md)."""
    from framepipe._source import decode_chunks
    from framepipe._split import SplitDecoder

    small_vae(version).save_pretrained(tmp_path / "vae")
    with SplitDecoder(["cuda:0", "cuda:1"], vae=tmp_path / "vae", dtype=dtype) as split:
        z = small_latents(version, frames=5, height=10, width=12).to("cuda:0", split.vae.dtype)
        single = [c.clone() for c in decode_chunks(split.vae, z)]
        both = list(split.chunks(split.vae, z))
        assert len(single) == len(both) == 5 and [c.shape for c in single] == [c.shape for c in both]
        sinks, reference = [MemorySink()], [MemorySink()]
        decode(z, sinks, vae=split.vae, chunk_source=split.chunks, latent_format="raw")
        decode(z, reference, vae=split.vae, latent_format="raw")
        mse = np.mean((sinks[0].video().astype(float) - reference[0].video().astype(float)) ** 2)
        assert mse == 0 or 10 * np.log10(255**2 / mse) >= 40  # rounding, as documented: not a wrong band


def test_the_service_accounts_each_job_on_the_gpu(tmp_path):
    """Jobs through one stream on CUDA: each job's account is measured, back to back."""
    from safetensors.torch import save_file

    from framepipe.serve import JobStore, ServiceOptions
    from framepipe.sinks import VideoSettings

    small_vae("wan2.1").save_pretrained(tmp_path / "vae")
    store = JobStore(tmp_path / "state", ServiceOptions(vae=str(tmp_path / "vae"), devices=("cuda:0",),
                                                        video=VideoSettings(preset="ultrafast")))  # fmt: skip
    ids = []
    for i in range(3):
        save_file({"latents": small_latents("wan2.1", frames=6, height=16, width=24, seed=i)}, tmp_path / "z.st")
        ids.append(store.submit(tmp_path / "z.st", {}, "pipeline").id)
    store.start_workers()
    try:
        end = time.time() + 120
        while any(store.jobs[i].state in ("queued", "running") for i in ids):
            assert time.time() < end
            time.sleep(0.05)
    finally:
        store.stop_workers()
    jobs = [store.jobs[i] for i in ids]
    assert [j.state for j in jobs] == ["done"] * 3
    for job in jobs:
        assert job.account["gpu_seconds"] > 0 and job.account["peak_memory_bytes"] > 0
        assert job.started <= job.decoded <= job.finished
    spans = sorted((j.decoded - j.account["gpu_seconds"], j.decoded) for j in jobs)
    assert all(a[1] <= b[0] + 0.01 for a, b in zip(spans, spans[1:], strict=False))  # back to back, no overlap
