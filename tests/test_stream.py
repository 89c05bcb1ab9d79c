"""Many videos through one pipeline: same frames as one at a time, clean failures, the CLI."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import small_latents, small_vae
from framepipe import EncoderError, LatentsError, NpySink, SettingsError, VideoSettings, decode, decode_many
from framepipe.cli import main


@pytest.mark.parametrize(("max_open", "concurrent"), [(1, 1), (2, 1), (2, 2), (None, 3)])
def test_stream_writes_what_decode_writes(tmp_path, version, max_open, concurrent, no_thread_leak):
    vae = small_vae(version)
    inputs = [small_latents(version, batch=2, frames=f, seed=f) for f in (3, 1, 4)]
    pairs = [(z, tmp_path / f"s{i}.npy") for i, z in enumerate(inputs)]
    result = decode_many(pairs, vae=vae, max_open=max_open, concurrent_videos=concurrent, slots=1)
    assert result.videos == 6 and result.total_frames == 2 * (9 + 1 + 13)
    for i, z in enumerate(inputs):
        decode(z, tmp_path / f"ref{i}.npy", vae=vae, mode="sync")
        for b in range(2):
            np.testing.assert_array_equal(np.load(tmp_path / f"s{i}_{b}.npy"), np.load(tmp_path / f"ref{i}_{b}.npy"))


def _recording_pulls(monkeypatch, pulls: list, fail_at: tuple[int, int] | None = None, error=KeyboardInterrupt):
    """Make decode_many's chunk source record (video, chunk) as each chunk is pulled, and raise at ``fail_at``."""
    import framepipe._api as api

    original, started = api.decode_chunks, []

    def recording(vae, z, **kw):
        video = len(started)
        started.append(video)
        for index, chunk in enumerate(original(vae, z, **kw)):
            if (video, index) == fail_at:
                raise error
            pulls.append((video, index))
            yield chunk

    monkeypatch.setattr(api, "decode_chunks", recording)


def test_concurrent_videos_take_turns_and_the_next_starts_when_one_ends(tmp_path, monkeypatch, no_thread_leak):
    pulls: list[tuple[int, int]] = []
    _recording_pulls(monkeypatch, pulls)
    vae = small_vae("wan2.1")
    pairs = [(small_latents("wan2.1", frames=f, seed=f), tmp_path / f"{i}.npy") for i, f in enumerate((3, 1, 2))]
    decode_many(pairs, vae=vae, concurrent_videos=2, max_open=2)
    # videos 0 and 1 alternate; video 1 has one chunk, so video 2 takes its place beside video 0
    assert pulls == [(0, 0), (1, 0), (0, 1), (0, 2), (2, 0), (2, 1)]
    for i, (z, _) in enumerate(pairs):
        decode(z, tmp_path / f"ref{i}.npy", vae=vae, mode="sync")
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), np.load(tmp_path / f"ref{i}.npy"))


def test_concurrent_videos_are_checked(tmp_path):
    pairs = [(small_latents("wan2.1"), tmp_path / "a.npy")]
    with pytest.raises(SettingsError, match="concurrent_videos must be a whole number >= 1"):
        decode_many(pairs, vae=small_vae("wan2.1"), concurrent_videos=0)
    with pytest.raises(SettingsError, match=r"max_open \(1\) must be at least concurrent_videos \(2\)"):
        decode_many(pairs, vae=small_vae("wan2.1"), concurrent_videos=2, max_open=1)
    with pytest.raises(SettingsError, match="concurrent_videos needs mode 'async'"):
        decode_many(pairs, vae=small_vae("wan2.1"), concurrent_videos=2, mode="sync")
    assert not any(tmp_path.iterdir())


def test_stream_of_tail_segmented_videos_writes_what_decode_writes(tmp_path, no_thread_leak):
    vae = small_vae("wan2.1")
    inputs = [small_latents("wan2.1", frames=f, height=8, width=8, seed=f) for f in (5, 3)]
    options = dict(vae=vae, video=VideoSettings(preset="ultrafast", segment_frames="tail"))
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


def test_a_missing_file_later_in_a_stream_fails_before_the_first_video(tmp_path):
    """Every input file is checked before the first video starts, not when the stream reaches it."""
    save_file({"latents": small_latents("wan2.1")}, tmp_path / "a.safetensors")
    pairs = [(tmp_path / "a.safetensors", tmp_path / "a.npy"), (tmp_path / "typo.safetensors", tmp_path / "b.npy")]
    with pytest.raises(LatentsError, match="Latent file not found: .*typo.safetensors"):
        decode_many(pairs, vae=small_vae("wan2.1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_mismatched_frame_size_is_refused(tmp_path):
    vae = small_vae("wan2.1")
    pairs = [
        (small_latents("wan2.1", height=4), tmp_path / "a.npy"),
        (small_latents("wan2.1", height=6), tmp_path / "b.npy"),
    ]
    with pytest.raises(LatentsError, match="one stream needs one batch and frame size"):
        decode_many(pairs, vae=vae)
    assert not (tmp_path / "b.npy").exists()


@pytest.mark.parametrize("concurrent", [1, 2])
def test_writer_failure_in_a_later_video_stops_the_stream(tmp_path, monkeypatch, concurrent, no_thread_leak):
    vae = small_vae("wan2.1")
    pulled = []

    class Failing(NpySink):
        def write(self, frames):
            raise EncoderError("disk full (simulated)")

    def sinks(i):
        return [Failing(tmp_path / f"{i}.npy")] if i == 1 else [NpySink(tmp_path / f"{i}.npy")]

    pairs = [(small_latents("wan2.1", frames=6), sinks(i)) for i in range(5)]
    _recording_pulls(monkeypatch, pulled)
    with pytest.raises(EncoderError, match="disk full"):
        decode_many(pairs, vae=vae, concurrent_videos=concurrent)
    assert len(pulled) < 6 * (2 + concurrent)  # stopped soon after the second video began, not after all five
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
    assert "must be a folder or contain {name}" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "new"), "--quiet"]) == 0  # created, as a PNG output's folder is
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["first.mp4", "second.mp4"]
    assert main([*args, "-o", str(tmp_path / "none"), "--fps", "0"]) == 1  # a failed run leaves no folder
    assert not (tmp_path / "none").exists()
    assert main([*args, "-o", str(tmp_path / "no" / "such")]) == 1
    assert "no does not exist" in capsys.readouterr().err
    (tmp_path / "two").mkdir()
    assert main([*args, "-o", str(tmp_path / "two"), "--concurrent-videos", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_frames"] == 14
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "two"), "--concurrent-videos", "0"])
    assert "--concurrent-videos: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "two"), "--concurrent-videos", "2", "--mode", "sync"]) == 1
    assert capsys.readouterr().err.strip() == (
        "framepipe: error: concurrent_videos needs mode 'async'; the sync reference decodes one video at a time."
    )


@pytest.mark.needs_cuda
@pytest.mark.parametrize("concurrent", [1, 2, 3])
def test_stream_on_cuda_equals_decode(tmp_path, concurrent):
    vae = small_vae("wan2.2").cuda()
    inputs = [small_latents("wan2.2", frames=f, seed=f) for f in (4, 2, 3, 5)]
    decode_many([(z, tmp_path / f"s{i}.npy") for i, z in enumerate(inputs)], vae=vae, concurrent_videos=concurrent,
                slots=1)  # fmt: skip
    for i, z in enumerate(inputs):
        decode(z, tmp_path / f"r{i}.npy", vae=vae, mode="sync")
        np.testing.assert_array_equal(np.load(tmp_path / f"s{i}.npy"), np.load(tmp_path / f"r{i}.npy"))
    torch.cuda.synchronize()


@pytest.mark.parametrize("concurrent", [1, 2])
def test_interrupt_in_the_second_video_ends_cleanly(tmp_path, monkeypatch, concurrent, no_thread_leak):
    _recording_pulls(monkeypatch, [], fail_at=(1, 1))
    vae = small_vae("wan2.1")
    pairs = [(small_latents("wan2.1", frames=3), tmp_path / f"{i}.mp4") for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        decode_many(pairs, vae=vae, video=VideoSettings(preset="ultrafast"), concurrent_videos=concurrent)
    names = sorted(p.name for p in tmp_path.iterdir())
    # one at a time, the first video may have finished; two at once, it was still decoding
    assert names in ((["0.mp4"], []) if concurrent == 1 else ([],))  # nothing partial anywhere


def test_arguments_of_the_wrong_type_are_named(tmp_path):
    """A NumPy array for latents, or a number for an output, is a TypeError that says what to pass."""
    z = small_latents("wan2.1")
    with pytest.raises(TypeError, match=r"latents must be a torch.Tensor or a path, got ndarray .*torch.from_numpy"):
        decode(z.numpy(), tmp_path / "a.mp4")
    with pytest.raises(TypeError, match="output must be a path or sinks, got int"):
        decode(z, 123)
    with pytest.raises(TypeError, match="video must be a VideoSettings, got dict"):
        decode(z, tmp_path / "b.mp4", video={"crf": 3})
    assert list(tmp_path.iterdir()) == []
