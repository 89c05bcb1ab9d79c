"""Executors under failure: a writer that breaks, a source that is interrupted, a slow sink."""

import threading
import time

import numpy as np
import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import EncoderError, NpySink, decode
from framepipe._pipeline import Job, run_async, run_sync
from framepipe._source import VideoGeometry

GEOMETRY = VideoGeometry(batch=1, frames=1 + 4 * 19, height=8, width=8, max_chunk_frames=4)


def _chunks(n, counter, delay=0.0, fail_at=None):
    """A stand-in decoder: n chunks of [1, 3, t, 8, 8]; counts how many were produced."""
    for i in range(n):
        if fail_at == i:
            raise KeyboardInterrupt
        time.sleep(delay)
        counter.append(i)
        t = 1 if i == 0 else 4
        yield torch.full((1, 3, t, 8, 8), (i % 100) / 100.0)


def _async(chunks, sink, **options):
    run_async([Job(chunks, [sink])], device=torch.device("cpu"), geometry=GEOMETRY, **options)


class RecordingSink:
    def __init__(self, fail_after=None, delay=0.0):
        self.frames, self.fail_after, self.delay = [], fail_after, delay
        self.aborted = self.closed = False

    def open(self, *, frames, height, width):
        pass

    def write(self, frames):
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise EncoderError("disk full (simulated)")
        time.sleep(self.delay)
        self.frames.extend(np.array(frames))

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_writer_failure_stops_decode_promptly(slots, no_thread_leak):
    produced = []
    sink = RecordingSink(fail_after=5)
    with pytest.raises(EncoderError, match="disk full"):
        _async(_chunks(20, produced), sink, slots=slots)
    # The failing write is noticed within the ring's depth, not after the whole video.
    assert len(produced) <= 3 + slots + 2


def test_interrupt_in_source_ends_cleanly(no_thread_leak):
    produced = []
    sink = RecordingSink(delay=0.01)
    with pytest.raises(KeyboardInterrupt):
        _async(_chunks(20, produced, fail_at=6), sink)
    assert len(produced) == 6


def test_backpressure_bounds_work_in_flight(no_thread_leak):
    produced, written_at = [], []
    sink = RecordingSink(delay=0.02)
    original_write = sink.write

    def write(frames):
        written_at.append(len(produced))
        original_write(frames)

    sink.write = write
    _async(_chunks(12, produced), sink, slots=2)
    # When chunk i starts being written, the producer is at most slots + 2 chunks ahead
    # (slots queued, one being converted, one being decoded).
    assert all(ahead - i <= 2 + 2 for i, ahead in enumerate(written_at))
    assert len(sink.frames) == 1 + 4 * 11


def test_sync_and_async_same_frames_from_any_source():
    a, b = RecordingSink(), RecordingSink(delay=0.001)
    run_sync([Job(_chunks(6, []), [a])])
    _async(_chunks(6, []), b, slots=1)
    np.testing.assert_array_equal(np.stack(a.frames), np.stack(b.frames))
    assert a.closed and b.closed  # the executors close the sinks of each job they finish


def test_decode_aborts_every_sink_on_failure(tmp_path, no_thread_leak):
    vae = small_vae("wan2.1")
    z = small_latents("wan2.1", batch=2, frames=5)

    class Failing(NpySink):
        def write(self, frames):
            super().write(frames)
            if self._count > 5:
                raise EncoderError("encoder crashed (simulated)")

    sinks = [NpySink(tmp_path / "a.npy"), Failing(tmp_path / "b.npy")]
    with pytest.raises(EncoderError, match="encoder crashed"):
        decode(z, sinks, vae=vae)
    assert list(tmp_path.iterdir()) == []


def test_writer_thread_is_not_left_behind_after_success(tmp_path):
    decode(small_latents("wan2.1"), tmp_path / "x.npy", vae=small_vae("wan2.1"))
    assert not [t for t in threading.enumerate() if t.name == "framepipe-writer"]
