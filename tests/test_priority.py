"""Encoding at a lower priority (--encoder-nice): which threads are lowered, and the same files."""

import os
import sys
import threading

import pytest

from conftest import small_latents, small_vae
from framepipe import NpySink, VideoFileSink, decode
from framepipe._priority import call_at_lower_priority
from framepipe.cli import main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice(thread: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread or threading.get_native_id())


def _thread_nices() -> dict[int, int]:
    return {int(t): _nice(int(t)) for t in os.listdir("/proc/self/task")}


def test_call_at_lower_priority_lowers_its_thread_and_the_threads_it_starts():
    base = _nice()

    def fn():
        seen = {}
        child = threading.Thread(target=lambda: seen.setdefault("child", _nice()))
        child.start()
        child.join()
        return _nice(), seen["child"]

    assert call_at_lower_priority(fn, 3) == (min(19, base + 3), min(19, base + 3))
    assert _nice() == base  # the caller's thread is never lowered
    with pytest.raises(KeyError, match="inside"):
        call_at_lower_priority(lambda: {}["inside"], 3)


def test_the_encoders_threads_are_lowered_not_the_callers(tmp_path):
    base = _nice()
    before = _thread_nices()
    sink = VideoFileSink(tmp_path / "v.mp4", preset="ultrafast", options={"threads": "3"}, nice=6)
    sink.open(frames=2, height=256, width=256)  # x264 starts its threads here (none for tiny frames)
    try:
        new = {t: n for t, n in _thread_nices().items() if t not in before}
        assert len(new) >= 3 and set(new.values()) == {min(19, base + 6)}, new
        assert _nice() == base
    finally:
        sink.abort()
    with pytest.raises(ValueError, match="from 0 to 19"):
        VideoFileSink(tmp_path / "w.mp4", nice=20)


@pytest.mark.parametrize("segment_frames", [None, "tail"])
def test_lowered_encoding_writes_the_same_file(tmp_path, segment_frames):
    vae = small_vae("wan2.1")
    latents = small_latents("wan2.1", frames=4, height=16, width=16)  # 128x128: x264 uses threads
    base = _nice()
    for nice in (0, 5):
        decode(latents, tmp_path / f"n{nice}.mp4", vae=vae, preset="ultrafast", encoder_nice=nice,
               segment_frames=segment_frames, device="cpu")  # fmt: skip
        assert _nice() == base
    assert (tmp_path / "n0.mp4").read_bytes() == (tmp_path / "n5.mp4").read_bytes()


def test_bad_encoder_nice_from_the_command_line(tmp_path, capsys):
    code = main(["bench", "--arch", "tiny-wan2.1", "--device", "cpu", "--shape", "1x2x4x4", "--encoder-nice", "40"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1] == (
        "framepipe: error: The encoders' nice value must be a whole number from 0 to 19, got 40."
    )


class _RecordingSink(NpySink):
    """Notes the nice value of the thread that writes."""

    def write(self, frames):
        self.writer_nice = _nice()
        super().write(frames)


def test_async_writer_thread_is_lowered_and_sync_leaves_the_caller_alone(tmp_path):
    vae = small_vae("wan2.1")
    base = _nice()
    for mode, expected in (("async", min(19, base + 4)), ("sync", base)):
        sink = _RecordingSink(tmp_path / f"{mode}.npy")
        decode(small_latents("wan2.1"), [sink], vae=vae, mode=mode, encoder_nice=4, device="cpu")
        assert sink.writer_nice == expected, mode
    assert _nice() == base
