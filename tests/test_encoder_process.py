"""Encoders in worker processes (--encoder-processes): the same files, and nothing left behind."""

import os
import signal

import numpy as np
import pytest

from conftest import small_latents, small_vae
from framepipe import EncoderError, OutputError, decode, decode_many
from framepipe._encoder_process import SPARES, ProcessVideoSink, _ring_folder
from framepipe._postprocess import to_uint8_frames
from framepipe._sinks import VideoFileSink, open_sink
from framepipe._synth import synth_clips
from framepipe.cli import main
from helpers import write_all

# Byte comparisons use ultrafast at 128x128: libx264's own assembly made other presets and sizes
# write different bytes run after run, even in one process (README, "Same frames in").
FRAMES = to_uint8_frames(synth_clips(1, 13, 128, 128, seed=3))[0].numpy()


def _rings() -> set[str]:
    folder = _ring_folder()
    return {n for n in os.listdir(folder) if n.startswith("framepipe-ring-")} if folder else set()


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_process_writes_the_same_file_as_a_thread(tmp_path):
    rings = _rings()
    write_all(VideoFileSink(tmp_path / "thread.mp4", preset="ultrafast"), FRAMES)
    sink = ProcessVideoSink(tmp_path / "process.mp4", preset="ultrafast", slots=3)  # fewer slots than a chunk
    write_all(sink, FRAMES, chunk=5)
    assert (tmp_path / "thread.mp4").read_bytes() == (tmp_path / "process.mp4").read_bytes()
    assert _leftovers(tmp_path) == [] and _rings() == rings


def test_a_worker_encodes_one_video_after_another(tmp_path):
    SPARES.close()
    workers = set()
    for i in range(3):
        sink = ProcessVideoSink(tmp_path / f"v{i}.mp4", preset="ultrafast")
        sink.open(frames=len(FRAMES), height=128, width=128)
        workers.add(sink._worker.process.pid)
        for j in range(0, len(FRAMES), 4):
            sink.write(FRAMES[j : j + 4])
        sink.close()
    assert len(workers) == 1  # the finished worker went back to the pool and took the next video
    assert (tmp_path / "v0.mp4").read_bytes() == (tmp_path / "v2.mp4").read_bytes()
    lowered = ProcessVideoSink(tmp_path / "low.mp4", preset="ultrafast", nice=2)
    write_all(lowered, FRAMES)
    plain = ProcessVideoSink(tmp_path / "plain.mp4", preset="ultrafast")
    plain.open(frames=len(FRAMES), height=128, width=128)
    # the lowered worker is never given a video that asks for a higher priority: it could not rise again
    assert os.getpriority(os.PRIO_PROCESS, plain._worker.process.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    plain.abort()


def test_yuv420p_frames_and_a_lowered_process(tmp_path):
    from framepipe._postprocess import to_yuv420p_frames

    planes = to_yuv420p_frames(synth_clips(1, 5, 128, 128, seed=4))[0].numpy()
    write_all(
        VideoFileSink(tmp_path / "a.mp4", preset="ultrafast", frame_format="yuv420p"), planes, height=128, width=128
    )
    write_all(
        ProcessVideoSink(tmp_path / "b.mp4", preset="ultrafast", frame_format="yuv420p", nice=3),
        planes,
        height=128,
        width=128,
    )
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's per-thread nice values")
def test_a_lowered_worker_runs_all_its_threads_n_levels_down_once(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    sink = ProcessVideoSink(tmp_path / "v.mp4", preset="ultrafast", options={"threads": "3"}, nice=4)
    sink.open(frames=2, height=256, width=256)
    try:
        sink.write(np.zeros((1, 256, 256, 3), np.uint8))  # waits for the worker's answer to open
        sink._receive(block=True)  # and for its first frame: x264's threads exist by then
        tasks = f"/proc/{sink._worker.process.pid}/task"
        nices = {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(tasks)}
        assert len(os.listdir(tasks)) >= 4 and nices == {min(19, base + 4)}, nices
        assert os.getpriority(os.PRIO_PROCESS, 0) == base
    finally:
        sink.abort()


def test_an_option_the_encoder_rejects_fails_cleanly(tmp_path):
    rings = _rings()
    sink = ProcessVideoSink(tmp_path / "v.mp4", options={"no-such-option": "1"})
    sink.open(frames=len(FRAMES), height=128, width=128)
    worker = sink._worker.process
    with pytest.raises(EncoderError, match="no option 'no-such-option'"):
        sink.write(FRAMES[:4])
        sink.close()
    assert worker.poll() is not None
    assert not (tmp_path / "v.mp4").exists() and _leftovers(tmp_path) == [] and _rings() == rings


def test_a_dead_encoder_process_is_an_error_not_a_hang(tmp_path):
    sink = ProcessVideoSink(tmp_path / "v.mp4")
    sink.open(frames=13, height=128, width=128)
    sink.write(FRAMES[:4])
    os.kill(sink._worker.process.pid, signal.SIGKILL)
    sink._worker.process.wait()
    with pytest.raises(EncoderError, match="ended unexpectedly"):
        for _ in range(3):  # the loss shows on the next message to it
            sink.write(FRAMES[4:8])
        sink.close()
    assert not (tmp_path / "v.mp4").exists() and _leftovers(tmp_path) == []


def test_abort_stops_the_process_and_removes_everything(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"keep me")
    sink = ProcessVideoSink(tmp_path / "v.mp4")
    sink.open(frames=13, height=128, width=128)
    sink.write(FRAMES[:4])
    worker = sink._worker.process
    sink.abort()
    assert worker.poll() is not None
    assert (tmp_path / "v.mp4").read_bytes() == b"keep me" and _leftovers(tmp_path) == []


def test_a_worker_whose_parent_vanishes_cleans_up_itself(tmp_path):
    sink = ProcessVideoSink(tmp_path / "v.mp4")
    sink.open(frames=13, height=128, width=128)
    sink.write(FRAMES[:4])
    sink._worker.commands.close()  # as if this process had been killed: the worker reads end-of-file
    assert sink._worker.process.wait(timeout=30) == 0
    assert not (tmp_path / "v.mp4").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("segment_frames", [None, "tail"])
def test_decode_with_encoder_processes_writes_the_same_file(tmp_path, segment_frames):
    vae = small_vae("wan2.1")
    latents = small_latents("wan2.1", frames=4, height=16, width=16)
    for processes in (False, True):
        decode(latents, tmp_path / f"p{processes}.mp4", vae=vae, preset="ultrafast", device="cpu",
               encoder_processes=processes, segment_frames=segment_frames)  # fmt: skip
    assert (tmp_path / "pFalse.mp4").read_bytes() == (tmp_path / "pTrue.mp4").read_bytes()
    assert _leftovers(tmp_path) == []


def test_a_stream_with_encoder_processes(tmp_path):
    vae = small_vae("wan2.1")
    videos = [small_latents("wan2.1", frames=f, height=16, width=16, seed=f) for f in (2, 3, 4)]
    decode_many([(z, tmp_path / f"s{i}.mp4") for i, z in enumerate(videos)], vae=vae, preset="ultrafast",
                device="cpu", encoder_processes=True, encoder_nice=2)  # fmt: skip
    for i, z in enumerate(videos):
        decode(z, tmp_path / f"d{i}.mp4", vae=vae, preset="ultrafast", device="cpu")
        assert (tmp_path / f"s{i}.mp4").read_bytes() == (tmp_path / f"d{i}.mp4").read_bytes()


def test_encoder_processes_serve_video_files_only(tmp_path):
    with pytest.raises(OutputError, match="drop --encoder-processes"):
        open_sink(tmp_path / "f.npy", processes=True)


def test_encoder_processes_from_the_command_line(tmp_path, capsys):
    z = tmp_path / "z.npy"
    np.save(z, small_latents("wan2.1", frames=2, height=16, width=16).numpy())
    code = main(["decode", str(z), "-o", str(tmp_path / "v.mp4"), "--arch", "tiny-wan2.1", "--device", "cpu",
                 "--encoder-processes", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "v.mp4").stat().st_size > 0
    code = main(["decode", str(z), "-o", str(tmp_path / "w.mp4"), "--arch", "tiny-wan2.1", "--device", "cpu",
                 "--encoder-processes", "--encoder-option", "no-such-option=1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "no option 'no-such-option'" in err.strip().splitlines()[-1]
    assert not (tmp_path / "w.mp4").exists() and _leftovers(tmp_path) == []
