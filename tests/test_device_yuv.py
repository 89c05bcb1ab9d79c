"""Opt-in yuv420p conversion on the decoding device: FFmpeg's area conversion within one level, the
encoder gets exactly these planes, and sync and async still write the same bytes."""

import av
import numpy as np
import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import EncoderError, OutputError, VideoFileSink, decode, to_uint8_frames
from framepipe._postprocess import to_yuv420p_frames
from framepipe._segments import SegmentedVideoSink
from framepipe._synth import synth_clips
from framepipe.cli import main
from helpers import diffusers_frames


def _ffmpeg_planes(rgb: np.ndarray, interpolation: str | None) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H * 3 / 2, W] yuv420p by swscale."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(format="yuv420p", interpolation=interpolation).to_ndarray()


class PlaneSink:
    """Keeps a copy of the yuv420p planes it is given."""

    frame_format = "yuv420p"

    def __init__(self):
        self.frames = []

    def open(self, *, frames, height, width):
        pass

    def write(self, frames):
        self.frames.append(np.array(frames))

    def close(self):
        pass

    def abort(self):
        pass


@pytest.mark.parametrize("source", ["procedural", "noise"])
def test_matches_ffmpeg_area_conversion_within_one_level(source):
    if source == "procedural":
        clip = synth_clips(1, 3, 96, 128, seed=7)
    else:
        clip = torch.rand(1, 3, 2, 96, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = to_yuv420p_frames(clip)[0].numpy()
    rgb = to_uint8_frames(clip)[0].numpy()
    assert ours.shape == (clip.shape[2], 96 * 3 // 2, 128) and ours.dtype == np.uint8
    for planes, frame in zip(ours, rgb, strict=True):
        area = _ffmpeg_planes(frame, "AREA").astype(int)
        assert np.abs(planes.astype(int) - area).max() <= 1
        assert (planes[:96] != area[:96]).mean() < 0.01  # luma: rounding ties only
    with pytest.raises(ValueError, match="even"):
        to_yuv420p_frames(torch.zeros(1, 3, 1, 9, 8))


def test_the_encoder_gets_these_planes_unchanged(tmp_path):
    clip = synth_clips(1, 5, 64, 96, seed=2)
    planes = to_yuv420p_frames(clip)[0].numpy()
    sink = VideoFileSink(tmp_path / "raw.mkv", codec="rawvideo", crf=None, preset=None, frame_format="yuv420p")
    sink.open(frames=5, height=64, width=96)
    sink.write(planes)
    sink.close()
    with av.open(str(tmp_path / "raw.mkv")) as c:
        back = np.stack([f.to_ndarray(format="yuv420p") for f in c.decode(video=0)])
    np.testing.assert_array_equal(back, planes)
    with pytest.raises(ValueError, match=r"yuv420p frames of shape \[t, 96, 96\]"):
        sink = VideoFileSink(tmp_path / "x.mp4", frame_format="yuv420p")
        sink.open(frames=1, height=64, width=96)
        try:
            sink.write(to_uint8_frames(clip)[0].numpy())  # RGB where planes are expected
        finally:
            sink.abort()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_decode_writes_the_planes_of_the_reference_frames(mode):
    vae, z = small_vae("wan2.1"), small_latents("wan2.1", frames=4)
    sink = PlaneSink()
    decode(z, [sink], vae=vae, mode=mode, device_yuv=True)
    got = np.concatenate(sink.frames)
    rgb = diffusers_frames(vae, z)  # [B, N, H, W, 3] uint8
    expected = to_yuv420p_frames(rgb.permute(0, 4, 1, 2, 3).float() / 127.5 - 1)[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_decode_to_mp4_and_segments(tmp_path):
    vae, z = small_vae("wan2.1"), small_latents("wan2.1", frames=4)
    decode(z, tmp_path / "rgb.mp4", vae=vae, preset="veryfast")
    decode(z, tmp_path / "yuv.mp4", vae=vae, preset="veryfast", device_yuv=True)
    decode(z, tmp_path / "seg.mp4", vae=vae, preset="veryfast", device_yuv=True, segment_frames="tail")
    reference = diffusers_frames(vae, z)[0].numpy().astype(float)
    psnr = {}
    for name in ("rgb", "yuv", "seg"):
        with av.open(str(tmp_path / f"{name}.mp4")) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert frames.shape == reference.shape
        psnr[name] = 10 * np.log10(255**2 / ((frames - reference) ** 2).mean())
    # Random weights give noise-like frames that crf 18 loses much of; what matters is that the
    # device conversion loses no more than FFmpeg's own.
    assert psnr["yuv"] > psnr["rgb"] - 0.5 and psnr["seg"] > psnr["rgb"] - 0.5, psnr


def test_only_video_outputs_take_planes(tmp_path, capsys):
    vae, z = small_vae("wan2.1"), small_latents("wan2.1")
    with pytest.raises(OutputError, match="video files"):
        decode(z, tmp_path / "f.npy", vae=vae, device_yuv=True)
    with pytest.raises(ValueError, match="yuv420p frames"):
        decode(z, [VideoFileSink(tmp_path / "v.mp4")], vae=vae, device_yuv=True)
    with pytest.raises(EncoderError, match="yuv420p encoder"):
        SegmentedVideoSink(tmp_path / "s.mp4", frame_format="yuv420p", pix_fmt="yuv444p")
    vae.save_pretrained(tmp_path / "vae")
    torch.save(z, tmp_path / "z.pt")
    code = main(["decode", str(tmp_path / "z.pt"), "-o", str(tmp_path / "g.npy"), "--vae", str(tmp_path / "vae"),
                 "--device-yuv", "--latent-format", "raw"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--device-yuv" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae", "z.pt"]


@pytest.mark.needs_cuda
def test_cuda_conversion_and_pipeline_match_the_cpu():
    clip = synth_clips(1, 5, 96, 128, seed=9)
    np.testing.assert_array_equal(to_yuv420p_frames(clip.cuda()).cpu().numpy(), to_yuv420p_frames(clip).numpy())
    vae, z = small_vae("wan2.1").cuda(), small_latents("wan2.1", frames=5).cuda()
    sinks = {mode: PlaneSink() for mode in ("sync", "async")}
    for mode, sink in sinks.items():
        decode(z, [sink], vae=vae, mode=mode, device_yuv=True)
    np.testing.assert_array_equal(np.concatenate(sinks["sync"].frames), np.concatenate(sinks["async"].frames))
