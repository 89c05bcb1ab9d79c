"""The device worker: a feed's videos streamed back to back, each opened while the one before decodes."""

import threading
import time

import numpy as np
import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import _device_worker, decode
from framepipe._device_worker import DeviceWorker, VideoOrder
from framepipe._errors import LatentsError
from framepipe._pipeline import on_device
from framepipe.sinks import VideoSettings


class ListFeed:
    """Latents from a list; what happened, in order, in ``events``."""

    def __init__(self, vae, latents, folder):
        self.vae, self.latents, self.folder = vae, latents, folder
        self.todo = list(range(len(latents)))
        self.events, self.lock = [], threading.Lock()
        self.results = {}

    def log(self, *event):
        with self.lock:
            self.events.append(event)

    def take(self):
        return self.todo.pop(0) if self.todo else None

    def open(self, item):
        self.log("open", item, threading.current_thread().name)
        z = self.latents[item]
        if z is None:
            raise LatentsError(f"video {item} has no latents")
        return VideoOrder(z.to(next(self.vae.parameters()).dtype), self.folder / f"v{item}.npy", VideoSettings())

    def started(self, item):
        self.log("started", item)

    def done(self, item, video):
        self.log("done", item)
        self.results[item] = video

    def failed(self, item, message, *, internal):
        self.log("failed", item, message, internal)


def test_videos_stream_with_the_reference_frames_and_open_ahead(tmp_path, monkeypatch, no_thread_leak):
    vae = small_vae("wan2.1")
    latents = [small_latents("wan2.1", frames=f, seed=f) for f in (3, 2, 4)]
    feed = ListFeed(vae, latents, tmp_path)
    original = _device_worker.decode_chunks
    warm_ups = []

    def slow(vae, z, **kwargs):  # each chunk takes 0.2 s: the next video's opening must not wait for it
        video = [i for i, x in enumerate(latents) if x.shape == z.shape and z.any()]  # none: a warm-up (zeros)
        if not z.any():
            warm_ups.append(tuple(z.shape[-2:]))
        for index, chunk in enumerate(original(vae, z, **kwargs)):
            time.sleep(0.2)
            if index == z.shape[2] - 1 and video:
                feed.log("last chunk", video[0])
            yield chunk

    monkeypatch.setattr(_device_worker, "decode_chunks", slow)
    DeviceWorker(feed, vae).run()
    assert warm_ups == [(8, 8), tuple(latents[0].shape[-2:])]  # at start, then once for the videos' frame size

    for i, z in enumerate(latents):
        decode(z, tmp_path / f"ref{i}.npy", vae=vae, mode="sync", latent_format="raw")
        np.testing.assert_array_equal(np.load(tmp_path / f"v{i}.npy"), np.load(tmp_path / f"ref{i}.npy"))
        assert feed.results[i].frames == 1 + 4 * (z.shape[2] - 1)
        assert feed.results[i].account.gpu_seconds is None  # the CPU: not measured, never zero
    events = feed.events
    for i in (1, 2):  # opened in the background while the video before it still decoded
        assert events.index(("open", i, "framepipe-open-next")) < events.index(("last chunk", i - 1))


def test_a_video_that_cannot_open_fails_alone(tmp_path, no_thread_leak):
    vae = small_vae("wan2.1")
    two = small_latents("wan2.1", batch=2, frames=2)
    latents = [small_latents("wan2.1", frames=3), None, small_latents("wan2.1", frames=2), two]
    feed = ListFeed(vae, latents, tmp_path)
    DeviceWorker(feed, vae).run()
    assert ("failed", 1, "video 1 has no latents", False) in feed.events
    failed = [e for e in feed.events if e[0] == "failed" and e[1] == 3]
    assert failed and failed[0][2].startswith("The latents hold 2 videos") and failed[0][3] is False
    assert sorted(feed.results) == [0, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0.npy", "v2.npy"]  # nothing half-written


def test_a_bug_in_the_feed_keeps_its_traceback(tmp_path, capsys, no_thread_leak):
    vae = small_vae("wan2.1")
    feed = ListFeed(vae, [small_latents("wan2.1", frames=2), "not a tensor"], tmp_path)
    DeviceWorker(feed, vae).run()
    failed = [e for e in feed.events if e[0] == "failed"]
    assert len(failed) == 1 and failed[0][1] == 1 and failed[0][3] is True
    assert failed[0][2].startswith("internal error (AttributeError")
    assert "Traceback" in capsys.readouterr().err
    assert sorted(feed.results) == [0]


def test_a_feed_that_raises_stops_the_worker_with_its_traceback(tmp_path, no_thread_leak):
    from framepipe._device_worker import FeedFailed

    class Broken(ListFeed):
        def take(self):
            if len(self.todo) == 1:
                raise RuntimeError("a bug in take")
            return super().take()

    vae = small_vae("wan2.1")
    feed = Broken(vae, [small_latents("wan2.1", frames=2) for _ in range(3)], tmp_path)
    with pytest.raises(FeedFailed) as info:
        DeviceWorker(feed, vae).run()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert 0 in feed.results and 2 not in feed.results  # video 1 may have been closed before the stop
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{i}.npy" for i in sorted(feed.results)]  # no partial


def test_a_worker_thread_makes_its_own_gpu_current():
    """What a worker makes without naming a device (pinned buffers, events) must go to its own GPU:
    a thread starts on GPU 0 (no GPU needed to build the context manager)."""
    context = on_device(torch.device("cuda:1"))
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    with on_device(torch.device("cpu")):  # nothing to switch
        pass
