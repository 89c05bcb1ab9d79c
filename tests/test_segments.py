"""Segment-parallel encoding: one valid file, same frame count and order, bounded difference."""

import av
import numpy as np
import pytest

from conftest import small_latents, small_vae
from framepipe import EncoderError, SettingsError, VideoSettings, decode
from framepipe._postprocess import to_uint8_frames
from framepipe._synth import synth_clips
from framepipe.sinks import SegmentedVideoSink, VideoFileSink, parse_segment_frames, tail_plan, tail_spec
from helpers import write_all


def _frames(n=33, h=96, w=128):
    return to_uint8_frames(synth_clips(1, n, h, w, seed=4))[0].numpy()


def _read(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _psnr(a, b):
    return 10 * np.log10(255**2 / ((a.astype(np.float64) - b) ** 2).mean())


@pytest.mark.parametrize("segment", [1, 10, 33, 50, "tail"])
def test_segments_join_into_one_file_with_every_frame_in_order(tmp_path, segment, no_thread_leak):
    src = _frames()
    write_all(VideoFileSink(tmp_path / "one.mp4"), src)
    write_all(SegmentedVideoSink(tmp_path / "seg.mp4", VideoSettings(segment_frames=segment), workers=3), src)
    one, seg = _read(tmp_path / "one.mp4"), _read(tmp_path / "seg.mp4")
    assert seg.shape == src.shape
    # Each decoded frame is nearest to its own source frame: nothing dropped, doubled or reordered.
    nearest = [int(np.argmin([np.abs(f.astype(int) - s).mean() for s in src])) for f in seg]
    assert nearest == list(range(len(src)))
    # Same encoder settings: quality within a fraction of a dB of the single encoder's.
    assert _psnr(seg, src) > _psnr(one, src) - 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4", "seg.mp4"]  # no segment files left


def _stream_and_packets(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        meta = (v.width, v.height, v.codec_context.pix_fmt, v.time_base, v.average_rate, v.frames, v.duration,
                bytes(v.codec_context.extradata))  # fmt: skip
        return meta, [(p.pts, p.dts, p.is_keyframe, bytes(p)) for p in c.demux(v) if p.dts is not None]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_one_segment_is_the_plain_encoders_file(tmp_path, suffix):
    # The segments' encoders are set up as VideoFileSink's, and joining keeps every packet as it is.
    src = _frames(12)
    write_all(VideoFileSink(tmp_path / f"one{suffix}"), src)
    write_all(SegmentedVideoSink(tmp_path / f"seg{suffix}", VideoSettings(segment_frames=12)), src)
    assert _stream_and_packets(tmp_path / f"seg{suffix}") == _stream_and_packets(tmp_path / f"one{suffix}")


def test_a_segment_ends_as_soon_as_its_last_frame_is_in(tmp_path, no_thread_leak):
    # Its encoder flushes its look-ahead then, not when the next frame arrives.
    sink = SegmentedVideoSink(tmp_path / "e.mp4", VideoSettings(segment_frames=4))
    sink.open(frames=12, height=96, width=128)
    sink.write(_frames(8)[:4])
    first = sink._segments[0]
    first.thread.join(timeout=60)
    assert not first.thread.is_alive() and first.error is None and len(sink._segments) == 1
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_closed_sinks_let_go_of_their_encoders(tmp_path):
    # A stream keeps its closed sinks until it ends; an encoder kept with each (x264: tens of MB at
    # 720p, times every segment) would grow the host memory with every video.
    src = _frames(12)
    plain = VideoFileSink(tmp_path / "p.mp4")
    write_all(plain, src)
    sink = SegmentedVideoSink(tmp_path / "s.mp4", VideoSettings(segment_frames=4))
    sink.open(frames=12, height=96, width=128)
    sink.write(src)
    segments = [s.sink for s in sink._segments]
    sink.close()
    assert plain._stream is None and sink._segments == [] and len(segments) == 3
    assert all(s._stream is None and s.stream is None and s.packets == [] for s in segments)


def test_abort_and_a_failed_join_leave_nothing(tmp_path, monkeypatch, no_thread_leak):
    src = _frames(12)
    sink = SegmentedVideoSink(tmp_path / "a.mp4", VideoSettings(segment_frames=4))
    sink.open(frames=12, height=96, width=128)
    sink.write(src[:9])
    sink.abort()
    assert list(tmp_path.iterdir()) == []

    import framepipe.sinks._segments as segments

    def broken(*args, **kwargs):
        raise EncoderError("join failed")

    monkeypatch.setattr(segments._Joiner, "_append", broken)
    with pytest.raises(EncoderError, match="join failed"):
        write_all(SegmentedVideoSink(tmp_path / "b.mp4", VideoSettings(segment_frames=4)), src)
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_fail_before_any_frame(tmp_path):
    with pytest.raises(SettingsError, match="preset"):
        SegmentedVideoSink(tmp_path / "x.mp4", VideoSettings(segment_frames=4, preset="warp-speed"))
    for bad in (0, True, "tail:", "tail:1", "tail:17", "head", "4"):
        with pytest.raises(ValueError, match="segment_frames"):
            SegmentedVideoSink(tmp_path / "x.mp4", VideoSettings(segment_frames=bad))


def test_decode_with_segments_writes_every_frame(tmp_path):
    vae, z = small_vae("wan2.1"), small_latents("wan2.1", frames=5, height=6, width=8)
    decode(z, tmp_path / "plain.mp4", vae=vae, latent_format="raw", video=VideoSettings(preset="veryfast"))
    decode(
        z, tmp_path / "seg.mp4", vae=vae, latent_format="raw", video=VideoSettings(preset="veryfast", segment_frames=4)
    )
    plain, seg = _read(tmp_path / "plain.mp4"), _read(tmp_path / "seg.mp4")
    assert seg.shape == plain.shape == (17, 48, 64, 3)


def test_an_encoder_failure_in_a_segment_is_reported_and_cleaned_up(tmp_path, monkeypatch, no_thread_leak):
    import framepipe.sinks._segments as segments

    calls = {"n": 0}
    original = segments._PacketSink.close

    def close_fails_on_second_segment(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise EncoderError("encoder failed")
        original(self)

    monkeypatch.setattr(segments._PacketSink, "close", close_fails_on_second_segment)
    sink = SegmentedVideoSink(tmp_path / "c.mp4", VideoSettings(segment_frames=4), workers=1)
    with pytest.raises(EncoderError, match="encoder failed"):
        try:
            write_all(sink, _frames(12))
        except EncoderError:
            sink.abort()  # as the pipeline does when a sink fails
            raise
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("frames", [1, 2, 4, 5, 9, 17, 33, 81, 161])
def test_tail_plan_halves_towards_the_end(frames):
    plan = tail_plan(frames)
    assert sum(plan) == frames
    assert len(plan) == 1 or plan[-1] == 4
    assert all(a == 2 * b for a, b in zip(plan[1:-1], plan[2:], strict=False))  # doubling away from the end
    assert len(plan) == 1 or plan[0] >= 4  # no first segment shorter than the last


@pytest.mark.parametrize("growth", [1.25, 1.5, 3.0])
@pytest.mark.parametrize("frames", [1, 5, 33, 81, 161])
def test_tail_plan_grows_by_the_given_factor(frames, growth):
    plan = tail_plan(frames, growth=growth)
    assert sum(plan) == frames and (len(plan) == 1 or plan[-1] == 4)
    assert all(a >= b for a, b in zip(plan[1:-1], plan[2:], strict=False))  # never shorter away from the end
    full = plan[1:]  # the first segment takes what is left over
    assert all(abs(n - round(4 * growth**k)) <= 1 for k, n in enumerate(reversed(full)) if n > 4)


def test_tail_plans_by_name():
    assert tail_plan(81, growth=1.5) == [28, 20, 14, 9, 6, 4]
    assert tail_plan(81, growth=1.25) == [21, 15, 12, 10, 8, 6, 5, 4]
    assert tail_plan(81, last=2, growth=1.5) == [17, 23, 15, 10, 7, 4, 3, 2]
    assert parse_segment_frames("tail:1.5") == "tail:1.5" and parse_segment_frames("12") == 12
    assert tail_spec("tail") == (2.0, 4) and tail_spec("tail:1.5:2") == (1.5, 2) and tail_spec(7) is None
    for bad in ("0", "tail:", "tail:1", "tail:abc", "head", "tail::2", "tail:1.5:0", "tail:1.5:2.5", "tail:2:2:1"):
        with pytest.raises(ValueError, match="segment_frames"):
            parse_segment_frames(bad)


@pytest.mark.parametrize("plan, lengths", [("tail", [5, 16, 8, 4]), ("tail:1.5:2", [7, 10, 7, 4, 3, 2])])
def test_tail_segments_follow_the_plan(tmp_path, monkeypatch, plan, lengths):
    got = []
    import framepipe.sinks._segments as segments

    original = segments._Joiner._append

    def record(self, sink, length):
        got.append(length)
        original(self, sink, length)

    monkeypatch.setattr(segments._Joiner, "_append", record)
    write_all(SegmentedVideoSink(tmp_path / "t.mp4", VideoSettings(segment_frames=plan)), _frames(33))
    growth, last = tail_spec(plan)
    assert got == tail_plan(33, last=last, growth=growth) == lengths
    assert len(_read(tmp_path / "t.mp4")) == 33


def test_tail_needs_the_frame_count(tmp_path):
    with pytest.raises(ValueError, match="frame count"):
        SegmentedVideoSink(tmp_path / "t.mp4", VideoSettings(segment_frames="tail")).open(frames=0, height=16, width=16)
    with pytest.raises(ValueError, match="segment_frames"):
        SegmentedVideoSink(tmp_path / "t.mp4", VideoSettings(segment_frames="head"))
