"""Sinks: round trips through a trusted decoder, lifecycle, and nothing half-written."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from framepipe import (
    EncoderError,
    NpySink,
    OutputError,
    PngFolderSink,
    SettingsError,
    VideoFileSink,
    VideoSettings,
    open_sink,
)
from framepipe.sinks import batch_paths
from helpers import write_all


def _frames(n=9, h=32, w=48):
    """Smooth moving gradients: what 4:2:0 H.264 keeps within a few levels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        r = 128 + 100 * np.sin((x + 2 * i) / w * np.pi)
        g = 40 + 180 * y / h
        b = 128 + 90 * np.cos((x + y - 3 * i) / (w + h) * 2 * np.pi)
        out.append(np.stack([r, g, b], axis=-1))
    return np.round(np.stack(out)).astype(np.uint8)


def test_mp4_round_trip(tmp_path):
    frames = _frames()
    write_all(VideoFileSink(tmp_path / "v.mp4", VideoSettings(fps=16, crf=10, preset="ultrafast")), frames)
    with av.open(str(tmp_path / "v.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 16
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == frames.shape
    error = np.abs(decoded.astype(int) - frames.astype(int))  # lossy: 4:2:0 chroma, BT.601 round trip
    assert error.mean() < 4
    assert (error <= 8).mean() > 0.95
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_png_and_npy_are_lossless(tmp_path):
    frames = _frames(n=5)
    write_all(PngFolderSink(tmp_path / "pngs"), frames)
    write_all(NpySink(tmp_path / "f.npy"), frames)
    pngs = sorted((tmp_path / "pngs").iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), frames)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "pngs"]


@pytest.mark.parametrize("make", [lambda p: VideoFileSink(p / "v.mp4"), lambda p: NpySink(p / "f.npy"),
                                  lambda p: PngFolderSink(p / "pngs")])  # fmt: skip
def test_lifecycle_and_abort_leave_nothing(tmp_path, make):
    frames = _frames(n=4)
    sink = make(tmp_path)
    with pytest.raises(RuntimeError, match="not open"):
        sink.write(frames)
    sink.open(frames=8, height=32, width=48)
    sink.write(frames)
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # at most a hidden temporary
    assert not sink.path.exists()
    sink.abort()
    sink.abort()
    sink.close()  # after abort: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_close_twice_is_a_no_op(tmp_path):
    sink = NpySink(tmp_path / "f.npy")
    write_all(sink, _frames(n=2))
    sink.close()
    assert (tmp_path / "f.npy").exists()


def test_overwrite_replaces_file_atomically(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"old")
    write_all(VideoFileSink(tmp_path / "v.mp4", VideoSettings(preset="ultrafast")), _frames(n=2))
    assert (tmp_path / "v.mp4").read_bytes()[:3] != b"old"


def test_bad_encoder_settings(tmp_path):
    with pytest.raises(SettingsError, match="Invalid preset 'warp-speed' for libx264. Supported: ultrafast"):
        VideoFileSink(tmp_path / "v.mp4", VideoSettings(preset="warp-speed"))
    with pytest.raises(SettingsError, match="Invalid crf 99"):
        VideoFileSink(tmp_path / "v.mp4", VideoSettings(crf=99))
    with pytest.raises(EncoderError, match="Cannot start encoder 'libx264'.*bogus"):
        VideoFileSink(tmp_path / "v.mp4", VideoSettings(encoder_options={"profile": "bogus"})).open(
            frames=1, height=32, width=48
        )
    for codec in ("nosuchcodec", "aac"):  # unknown, and an audio encoder
        with pytest.raises(EncoderError, match=f"no video encoder '{codec}'; choose one it has, such as libx264"):
            VideoFileSink(tmp_path / "v.mp4", VideoSettings(codec=codec)).open(frames=1, height=32, width=48)
    with pytest.raises(EncoderError, match="even"):
        VideoFileSink(tmp_path / "v.mp4").open(frames=1, height=33, width=48)
    with pytest.raises(EncoderError, match=r"Encoder 'libx264' has no option 'lookahead', 'thread'; `ffmpeg -h"):
        VideoFileSink(
            tmp_path / "v.mp4", VideoSettings(encoder_options={"thread": "2", "lookahead": "0", "g": "4"})
        ).open(frames=1, height=32, width=48)
    assert list(tmp_path.iterdir()) == []


def test_encoder_options_reach_the_encoder(tmp_path):
    frames = _frames(n=6)
    for name, options in [("default", {}), ("g1", {"g": "1"})]:
        write_all(
            VideoFileSink(tmp_path / f"{name}.mp4", VideoSettings(preset="ultrafast", encoder_options=options)), frames
        )
    keyframes = {}
    for name in ("default", "g1"):
        with av.open(str(tmp_path / f"{name}.mp4")) as c:
            keyframes[name] = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert keyframes == {"default": [True] + [False] * 5, "g1": [True] * 6}


def test_unwritable_outputs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="does not exist"):
        VideoFileSink(tmp_path / "no" / "v.mp4").open(frames=1, height=32, width=48)
    with pytest.raises(OutputError, match="is not a folder"):
        NpySink(tmp_path / "file" / "f.npy").open(frames=1, height=32, width=48)
    with pytest.raises(OutputError, match="existing folder"):
        (tmp_path / "d.mp4").mkdir()
        VideoFileSink(tmp_path / "d.mp4").open(frames=1, height=32, width=48)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an empty folder"):
        PngFolderSink(tmp_path / "full").open(frames=1, height=32, width=48)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="Unsupported output type"):
        open_sink(tmp_path / "v.gif")


def test_npy_sink_checks_frame_count(tmp_path):
    sink = NpySink(tmp_path / "f.npy")
    sink.open(frames=3, height=32, width=48)
    sink.write(_frames(n=2))
    with pytest.raises(EncoderError, match="got 2 frames, expected 3"):
        sink.close()
    assert list(tmp_path.iterdir()) == []


def test_batch_paths(tmp_path):
    assert batch_paths(tmp_path / "v.mp4", 1) == [tmp_path / "v.mp4"]
    assert batch_paths(tmp_path / "v.mp4", 2) == [tmp_path / "v_0.mp4", tmp_path / "v_1.mp4"]
    assert batch_paths(tmp_path / "clip{index}.mp4", 2) == [tmp_path / "clip0.mp4", tmp_path / "clip1.mp4"]


def test_video_settings_are_checked_when_made():
    assert VideoSettings().codec_options == {"crf": "18", "preset": "medium"}
    assert VideoSettings(crf=None, preset=None).codec_options == {}
    assert VideoSettings(encoder_options={"crf": "30"}).codec_options["crf"] == "30"  # an explicit option wins
    assert VideoSettings(codec="h264_nvenc", crf=99).codec_options == {"preset": "medium"}  # crf is x264/x265's
    assert VideoSettings(fps=30000 / 1001).rate == Fraction(30000, 1001) and VideoSettings().rate == 16
    for bad, message in [
        (dict(fps=0), "fps must be a number from"),
        (dict(fps=float("nan")), "fps must be a number from"),
        (dict(fps=1e-9), "fps must be a number from"),
        (dict(fps=float("inf")), "fps must be a number from"),
        (dict(crf=18.5), "Invalid crf 18.5"),
        (dict(preset="fastest"), "Invalid preset 'fastest'"),
        (dict(encoder_options={"threads": 4}), "map names to strings"),
        (dict(segment_frames=0), "segment_frames must be"),
        (dict(codec=""), "codec must be"),
    ]:
        with pytest.raises(SettingsError, match=message):
            VideoSettings(**bad)
    settings = VideoSettings()
    with pytest.raises(AttributeError):
        settings.crf = 10  # frozen: one object, passed down whole


def test_sinks_and_video_settings_together_are_refused(tmp_path):
    from conftest import small_latents, small_vae
    from framepipe import ArraySink, decode

    with pytest.raises(SettingsError, match="give video settings or sinks, not both"):
        decode(small_latents("wan2.1"), [ArraySink()], vae=small_vae("wan2.1"), video=VideoSettings(crf=10))


def test_an_npy_that_cannot_fit_fails_before_any_frame(tmp_path, monkeypatch):
    # With 1 MB free, the memory-mapped .npy killed the process with SIGBUS at a later write.
    import shutil

    import framepipe.sinks._files as files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(OutputError, match=r"do not fit in the 0\.00 GiB free there"):
        NpySink(tmp_path / "f.npy").open(frames=81, height=480, width=832)
    assert list(tmp_path.iterdir()) == []


def test_an_npy_reserves_its_space_when_it_opens(tmp_path):
    sink = NpySink(tmp_path / "f.npy")
    sink.open(frames=8, height=64, width=64)
    tmp = next(tmp_path.iterdir())
    assert os.stat(tmp).st_blocks * 512 >= 8 * 64 * 64 * 3  # allocated, not sparse
    sink.abort()


def test_an_option_value_the_encoder_cannot_parse_is_an_error(tmp_path):
    # x264 logged "Error parsing option 'foo = bar'" and went on: the README promises an error.
    sink = VideoFileSink(tmp_path / "v.mp4", VideoSettings(encoder_options={"x264-params": "foo=bar"}))
    with pytest.raises(EncoderError, match=r"did not take its options: Error parsing option 'foo = bar'"):
        sink.open(frames=1, height=32, width=48)
    assert list(tmp_path.iterdir()) == []
    write_all(
        VideoFileSink(tmp_path / "ok.mp4", VideoSettings(encoder_options={"x264-params": "keyint=5"})), _frames(n=2)
    )


def test_x265_keeps_quiet_unless_asked():
    # Only the options: PyAV's wheels (18.1 and 19.0.2) corrupt the heap when libx265 encodes in a
    # process where libx264 has encoded before (docs/compatibility.md), so no x265 encode runs here.
    assert VideoSettings(codec="libx265").codec_options["x265-params"] == "log-level=error"
    assert (
        VideoSettings(codec="libx265", encoder_options={"x265-params": "keyint=5"}).codec_options["x265-params"]
        == "keyint=5:log-level=error"
    )
    assert "log-level" not in VideoSettings(codec="libx264").codec_options.get("x265-params", "")
