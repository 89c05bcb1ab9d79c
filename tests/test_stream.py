"""Many videos through one pipeline: same frames as one at a time, clean failures, the CLI."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import small_latents, small_vae
from framepipe import EncoderError, LatentsError, NpySink, decode, decode_many
from framepipe.cli import main


@pytest.mark.parametrize("max_open", [1, 2])
def test_stream_writes_what_decode_writes(tmp_path, version, max_open, no_thread_leak):
    vae = small_vae(version)
    inputs = [small_latents(version, batch=2, frames=f, seed=f) for f in (3, 1, 4)]
    pairs = [(z, tmp_path / f"s{i}.npy") for i, z in enumerate(inputs)]
    result = decode_many(pairs, vae=vae, max_open=max_open, slots=1)
    assert result.videos == 6 and result.total_frames == 2 * (9 + 1 + 13)
    for i, z in enumerate(inputs):
        decode(z, tmp_path / f"ref{i}.npy", vae=vae, mode="sync")
        for b in range(2):
            np.testing.assert_array_equal(np.load(tmp_path / f"s{i}_{b}.npy"), np.load(tmp_path / f"ref{i}_{b}.npy"))


def test_stream_of_tail_segmented_videos_writes_what_decode_writes(tmp_path, no_thread_leak):
    vae = small_vae("wan2.1")
    inputs = [small_latents("wan2.1", frames=f, height=8, width=8, seed=f) for f in (5, 3)]
    options = dict(vae=vae, preset="ultrafast", segment_frames="tail", encoder_nice=2)
    decode_many([(z, tmp_path / f"s{i}.mp4") for i, z in enumerate(inputs)], **options)
    for i, z in enumerate(inputs):
        decode(z, tmp_path / f"ref{i}.mp4", mode="sync", **options)
        assert (tmp_path / f"s{i}.mp4").read_bytes() == (tmp_path / f"ref{i}.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref0.mp4", "ref1.mp4", "s0.mp4", "s1.mp4"]


def test_bad_input_midway_keeps_finished_videos_only(tmp_path, no_thread_leak):
    vae = small_vae("wan2.1")
    bad = small_latents("wan2.1")
    bad[0, 0, 0, 0, 0] = float("nan")
    pairs = [(small_latents("wan2.1"), tmp_path / "a.npy"), (bad, tmp_path / "b.npy"),
             (small_latents("wan2.1"), tmp_path / "c.npy")]  # fmt: skip
    with pytest.raises(LatentsError, match="NaN"):
        decode_many(pairs, vae=vae)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["a.npy"], [])  # a finished video may stay; no partials


def test_mismatched_frame_size_is_refused(tmp_path):
    vae = small_vae("wan2.1")
    pairs = [
        (small_latents("wan2.1", height=4), tmp_path / "a.npy"),
        (small_latents("wan2.1", height=6), tmp_path / "b.npy"),
    ]
    with pytest.raises(LatentsError, match="one stream needs one batch and frame size"):
        decode_many(pairs, vae=vae)
    assert not (tmp_path / "b.npy").exists()


def test_writer_failure_in_a_later_video_stops_the_stream(tmp_path, monkeypatch, no_thread_leak):
    vae = small_vae("wan2.1")
    pulled = []

    class Failing(NpySink):
        def write(self, frames):
            raise EncoderError("disk full (simulated)")

    def sinks(i):
        return [Failing(tmp_path / f"{i}.npy")] if i == 1 else [NpySink(tmp_path / f"{i}.npy")]

    pairs = [(small_latents("wan2.1", frames=6), sinks(i)) for i in range(5)]
    import framepipe._api as api

    original = api.decode_chunks

    def counting(vae, z, **kw):
        for chunk in original(vae, z, **kw):
            pulled.append(1)
            yield chunk

    monkeypatch.setattr(api, "decode_chunks", counting)
    with pytest.raises(EncoderError, match="disk full"):
        decode_many(pairs, vae=vae)
    assert len(pulled) < 6 * 3  # stopped during the second or third video, not after all five
    assert not (tmp_path / "1.npy").exists()


def test_cli_several_inputs(tmp_path, capsys):
    small_vae("wan2.1").save_pretrained(tmp_path / "vae")
    for name, frames in [("first", 2), ("second", 3)]:
        save_file({"latents": small_latents("wan2.1", frames=frames)}, tmp_path / f"{name}.safetensors")
    (tmp_path / "out").mkdir()
    args = ["decode", str(tmp_path / "first.safetensors"), str(tmp_path / "second.safetensors"), "--vae",
            str(tmp_path / "vae"), "--preset", "ultrafast"]  # fmt: skip
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert "2 videos, 14 frames" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.mp4", "second.mp4"]
    assert main([*args, "-o", str(tmp_path / "{name}.npy"), "--mode", "sync", "--quiet"]) == 0
    assert np.load(tmp_path / "second.npy").shape[0] == 9
    assert main([*args, "-o", str(tmp_path / "x.mp4")]) == 1
    assert "must be an existing folder or contain {name}" in capsys.readouterr().err


@pytest.mark.needs_cuda
def test_stream_on_cuda_equals_decode(tmp_path):
    vae = small_vae("wan2.2").cuda()
    inputs = [small_latents("wan2.2", frames=f, seed=f) for f in (4, 2, 3)]
    decode_many([(z, tmp_path / f"s{i}.npy") for i, z in enumerate(inputs)], vae=vae)
    for i, z in enumerate(inputs):
        decode(z, tmp_path / f"r{i}.npy", vae=vae, mode="sync")
        np.testing.assert_array_equal(np.load(tmp_path / f"s{i}.npy"), np.load(tmp_path / f"r{i}.npy"))
    torch.cuda.synchronize()


def test_interrupt_in_the_second_video_ends_cleanly(tmp_path, monkeypatch, no_thread_leak):
    import framepipe._api as api

    original, calls = api.decode_chunks, []

    def interrupted(vae, z, **kw):
        calls.append(1)
        for i, chunk in enumerate(original(vae, z, **kw)):
            if len(calls) == 2 and i == 1:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(api, "decode_chunks", interrupted)
    vae = small_vae("wan2.1")
    pairs = [(small_latents("wan2.1", frames=3), tmp_path / f"{i}.mp4") for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        decode_many(pairs, vae=vae, preset="ultrafast")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in (["0.mp4"], [])  # the first video may have finished; nothing partial anywhere
