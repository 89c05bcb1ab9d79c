"""The bench: its arithmetic, its trace parsing, and a smoke run of every mode on a tiny model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import SettingsError, VideoSettings
from framepipe._trace import PipelineTrace
from framepipe.bench import ModeResult, run_bench, summarize
from framepipe.bench._cost import gpu_seconds_per_video_second, usd_per_1000_hours
from framepipe.bench._profile import Timeline, merge, timeline_from_events, union_length
from framepipe.cli import main


def _script(name: str):
    """benchmarks/NAME.py, a script rather than a module of the package."""
    script = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decoder_floor_counts_a_convolutions_flops_and_bytes_and_no_views():
    """benchmarks/decoder_floor.py: 2 * Cin * Cout * k^3 multiply-adds an output pixel, every operand's
    bytes once (input, weight, bias, output), nothing for a view, read and write for an in-place op."""
    floor = _script("decoder_floor")
    conv = torch.nn.Conv3d(4, 6, 3).to("meta")
    x = torch.empty(1, 4, 5, 7, 9, device="meta")
    counter = floor.Counter()
    with torch.no_grad(), counter:
        y = conv(x).permute(0, 2, 1, 3, 4)
        y.add_(1.0)
    convs, adds = counter.kinds["convolution"], counter.kinds["elementwise"]
    outputs = 3 * 5 * 7
    assert convs["ops"] == 1 and convs["flops"] == 2 * 4 * 6 * 27 * outputs
    assert convs["bytes"] == 4 * (x.numel() + conv.weight.numel() + 6 + 6 * outputs)
    assert adds["ops"] == 1 and adds["bytes"] == 2 * 4 * 6 * outputs
    assert set(counter.kinds) == {"convolution", "elementwise"}


def test_union_length_counts_overlaps_once_and_clips():
    assert union_length([(0, 1), (0.5, 2), (3, 4)], 0, 10) == pytest.approx(3.0)
    assert union_length([(0, 1), (0.5, 2), (3, 4)], 0.5, 3.5) == pytest.approx(2.0)
    assert union_length([], 0, 1) == 0
    assert merge([(0, 1), (1.05, 2), (5, 6)], gap=0.1) == [(0, 2), (5, 6)]


def test_utilization_and_alignment_from_a_chrome_trace():
    events = [
        {"ph": "X", "name": "framepipe.window", "cat": "user_annotation", "ts": 1000.0, "dur": 1_000_000.0},
        {"ph": "X", "name": "conv", "cat": "kernel", "ts": 1000.0, "dur": 400_000.0},
        {"ph": "X", "name": "conv", "cat": "kernel", "ts": 201_000.0, "dur": 400_000.0},  # overlaps the first
        {"ph": "X", "name": "late", "cat": "kernel", "ts": 1_001_000.0, "dur": 50_000.0},  # after the window
        {"ph": "X", "name": "Memcpy DtoH (Device -> Pinned)", "cat": "gpu_memcpy", "ts": 601_000.0, "dur": 10_000.0},
        # Device-side work that is not a kernel: busy time, not kernel time. One overlaps a kernel.
        {"ph": "X", "name": "Memcpy DtoD (Device -> Device)", "cat": "gpu_memcpy", "ts": 501_000.0, "dur": 200_000.0},
        {"ph": "X", "name": "Memset (Device)", "cat": "gpu_memset", "ts": 801_000.0, "dur": 50_000.0},
    ]
    trace = PipelineTrace()
    trace.add_span("write", 10.25, 10.5)  # perf_counter clock; the window started at 10.0
    t = timeline_from_events(events, trace, 10.0, cuda=True)
    assert t.window_s == pytest.approx(1.0)
    assert t.kernel_utilization == pytest.approx(0.6)
    assert t.gpu_busy == pytest.approx(0.75)  # + 0.6-0.7 of the copy, + the memset; the DtoH copy is a transfer
    assert t.last_kernel_end_s == pytest.approx(0.6)  # the late kernel starts after the window
    assert t.after_last_kernel_s == pytest.approx(0.4)
    assert t.utilization_to_last_kernel == pytest.approx(1.0)
    assert t.d2h_copies == [pytest.approx((0.6, 0.61))]
    assert t.host["write"] == [pytest.approx((0.25, 0.5))]
    assert Timeline(window_s=1.0, cuda=False).kernel_utilization is None
    assert Timeline(window_s=1.0, cuda=False).gpu_busy is None


def test_cost_formula():
    # 81 frames at 16 fps = 5.0625 s of video; 4.05 s of GPU per video -> 0.8 GPU-s per video-s.
    ratio = gpu_seconds_per_video_second(4.05, 81, 16)
    assert ratio == pytest.approx(0.8)
    assert usd_per_1000_hours(ratio, 2.5) == pytest.approx(2000.0)


def test_summary_statistics_and_savings():
    def result(mode, seconds):
        return ModeResult(mode, seconds, frames=81, videos=1, peak_vram_gib=None, peak_host_extra_gib=0, d2h_gb=0)

    results = [result("diffusers", [5.0, 5.0, 6.0]), result("async", [4.0] * 3), result("gpu-only", [3.0] * 3)]
    rows = summarize(results, video_fps=16, price_per_hour=1.0, baseline="diffusers")
    by = {r["mode"]: r for r in rows}
    assert by["diffusers"]["max_s"] == 6.0 and by["diffusers"]["p99_s"] == pytest.approx(5.98)
    assert by["async"]["vs_gpu_only"] == pytest.approx(4 / 3)
    saving = by["async"]["saving_usd_per_1000h_vs_diffusers"]
    assert saving == pytest.approx((16 / 3 - 4.0) / (81 / 16) * 1000)


def test_bench_smoke_all_modes(tmp_path):
    vae = small_vae("wan2.1")
    report = run_bench(vae, small_latents("wan2.1", frames=3), warmup=0, runs=2, timeline_dir=tmp_path,
                       price_per_hour=3.0)  # fmt: skip
    rows = {r["mode"]: r for r in report["modes"]}
    assert list(rows) == ["diffusers", "sync", "async", "gpu-only", "diffusers-decoder", "encode-only"]
    for mode, row in rows.items():
        assert row["runs"] == 2 and 0 < row["min_s"] <= row["mean_s"] <= row["max_s"]
        assert row["kernel_utilization"] is None  # CPU: nothing to measure, and the report says so
        assert (tmp_path / f"timeline-{mode}.png").stat().st_size > 1000
    assert rows["gpu-only"]["vs_gpu_only"] == 1.0
    assert "no CUDA device" in report["settings"]["kernel_utilization"]
    assert "no CUDA device" in report["settings"]["gpu_busy"]
    assert report["settings"]["frames_per_video"] == 9
    json.dumps(report)


def test_bench_stream_mode_is_reported_per_video():
    vae = small_vae("wan2.1")
    report = run_bench(vae, small_latents("wan2.1", frames=3), modes=["gpu-only", "async-stream"], warmup=0, runs=1,
                       profile=False, stream_videos=3, concurrent_videos=[1, 2])  # fmt: skip
    rows = {r["mode"]: r for r in report["modes"]}
    assert list(rows) == ["gpu-only", "async-stream", "async-stream [2 at once]"]
    assert rows["async-stream"]["decodes_per_run"] == 3 and report["settings"]["stream_videos"] == 3
    assert rows["async-stream [2 at once]"]["decodes_per_run"] == 3
    assert report["settings"]["concurrent_videos"] == [1, 2]
    line = _script("bench_table").command(report["settings"], ["gpu-only", "async-stream"])
    assert "--stream-videos 3 --concurrent-videos 1,2" in line
    with pytest.raises(SettingsError, match="concurrent_videos >= 1"):
        run_bench(vae, small_latents("wan2.1"), modes=["async-stream"], concurrent_videos=0)
    # a run of the stream decodes the latents 3 times; its figures are per decode
    three = ModeResult(mode="async-stream", seconds=[3.0, 6.0], frames=5, videos=1, peak_vram_gib=None,
                       peak_host_extra_gib=0.0, d2h_gb=0.0, units=3)  # fmt: skip
    assert three.stats["mean"] == pytest.approx(1.5) and three.stats["max"] == pytest.approx(2.0)


def test_bench_cli_json(tmp_path, capsys):
    code = main(["bench", "--arch", "tiny-wan2.1", "--shape", "1x2x4x4", "--runs", "1", "--warmup", "0",
                 "--modes", "sync,async,gpu-only", "--profile", "off", "--json", "--device", "cpu",
                 "--encoder-option", "threads=2", "--decoder", "fast"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert [r["mode"] for r in report["modes"]] == ["sync", "async", "gpu-only"]
    assert report["settings"]["latents_shape"] == [1, 16, 2, 4, 4]
    assert report["settings"]["model"] == "random tiny-wan2.1 (seed 0)"
    assert report["settings"]["encoder"]["encoder_options"] == {"threads": "2"}
    assert report["settings"]["decoder"] == "fast"
    if sys.platform.startswith("linux"):  # where the kernel reports a thread's schedstat
        for row in report["modes"]:
            assert row["main_thread_cpu_s"] > 0 and row["main_thread_wait_s"] >= 0, row
    line = _script("bench_table").command(report["settings"], [r["mode"] for r in report["modes"]])
    assert "--encoder-option threads=2" in line and "--modes sync,async,gpu-only" in line
    assert "--decoder fast" in line
    assert "--device cpu" in line and "--profile off" in line and "--stream-videos" not in line


def test_bench_defaults_to_the_embedded_vae(capsys):
    code = main(["bench", "--shape", "1x2x4x4", "--runs", "1", "--warmup", "0", "--modes", "sync,gpu-only",
                 "--profile", "off", "--json", "--device", "cpu"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and "random weights" not in err, err
    assert json.loads(out)["settings"]["model"] == "embedded tiny-wan2.1 (trained)"


@pytest.mark.parametrize(
    "args, message",
    [(["--modes", "sync,turbo"], "Invalid mode(s) turbo"), (["--size", "480x830"], "multiples of 8"),
     (["--runs", "0"], "runs >= 1")],
)  # fmt: skip
def test_bench_cli_errors(capsys, args, message):
    code = main(["bench", "--arch", "tiny-wan2.1", "--device", "cpu", "--frames", "5", *args])
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]  # after the random-weights warning
    assert code == 1 and last.startswith("framepipe: error: ") and message in last and "Traceback" not in err


@pytest.mark.needs_cuda
def test_bench_cuda_reports_utilization(tmp_path):
    vae = small_vae("wan2.1").cuda()
    report = run_bench(vae, small_latents("wan2.1", frames=4, height=16, width=16), warmup=1, runs=2,
                       timeline_dir=tmp_path)  # fmt: skip
    for row in report["modes"]:
        if row["mode"] == "encode-only":
            assert row["kernel_utilization"] == pytest.approx(0.0, abs=0.05)
        else:
            assert 0 < row["kernel_utilization"] <= row["utilization_to_last_kernel"] <= 1
            assert row["kernel_utilization"] <= row["gpu_busy"] <= 1
            assert row["after_last_kernel_s"] >= 0
            assert row["peak_vram_gib"] > 0
    rows = {r["mode"]: r for r in report["modes"]}
    assert rows["gpu-only"]["d2h_gb"] == 0 and rows["async"]["d2h_gb"] > 0
    # async copies uint8 frames, sync and diffusers copy float32: four times the bytes.
    assert rows["sync"]["d2h_gb"] == pytest.approx(4 * rows["async"]["d2h_gb"])
    torch.cuda.synchronize()


def test_encoder_variants_change_only_what_they_name():
    from framepipe.bench import encoder_variant

    base = VideoSettings(preset="fast", encoder_options={"threads": "2"})
    v = encoder_variant("rc-lookahead=10, segment-frames=tail", base)
    assert (v.segment_frames, v.preset) == ("tail", "fast")
    assert v.encoder_options == {"threads": "2", "rc-lookahead": "10"} and base.encoder_options == {"threads": "2"}
    assert encoder_variant("segment-frames=20", base).segment_frames == 20
    assert encoder_variant("segment-frames=tail:1.5", base).segment_frames == "tail:1.5"
    for bad in ("", "nice", "processes", "segment-frames=0", "segment-frames=tail:0.5", "fast", "=3"):
        with pytest.raises(SettingsError):
            encoder_variant(bad, base)


def test_bench_runs_encoder_variants_side_by_side(tmp_path, capsys):
    code = main(["bench", "--arch", "tiny-wan2.1", "--shape", "1x2x4x4", "--runs", "1", "--warmup", "0",
                 "--modes", "async,gpu-only,encode-only", "--profile", "off", "--json", "--device", "cpu",
                 "--encoder-variant", "segment-frames=4", "--encoder-variant", "threads=1"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert [r["mode"] for r in report["modes"]] == [
        "async", "async [segment-frames=4]", "async [threads=1]", "gpu-only",
        "encode-only", "encode-only [segment-frames=4]", "encode-only [threads=1]",
    ]  # fmt: skip
    variants = report["settings"]["encoder_variants"]
    assert variants["segment-frames=4"]["segment_frames"] == 4
    assert variants["threads=1"]["encoder_options"] == {"threads": "1"}
    assert all(r["vs_gpu_only"] > 0 for r in report["modes"])
    line = _script("bench_table").command(report["settings"], ["async", "gpu-only", "encode-only"])
    assert "--encoder-variant 'segment-frames=4' --encoder-variant 'threads=1'" in line
    code = main(
        ["bench", "--arch", "tiny-wan2.1", "--shape", "1x2x4x4", "--device", "cpu", "--encoder-variant", "nice"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "Invalid encoder variant 'nice'" in err.strip().splitlines()[-1]


def test_bench_cli_refuses_a_bad_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "1x2x3"])
    assert exit_info.value.code == 2 and "expected 4 whole numbers like 1x21x60x104" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "2,x", ""])
def test_bench_cli_refuses_bad_concurrent_videos(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--modes", "async-stream", "--concurrent-videos", value])
    assert exit_info.value.code == 2
    assert "expected one or more whole numbers >= 1" in capsys.readouterr().err


def test_the_table_has_no_saving_column_without_a_baseline():
    from framepipe.bench import format_table

    results = [ModeResult(mode=m, seconds=[1.0, 1.2], frames=81, videos=1, peak_vram_gib=None,
                          peak_host_extra_gib=0.0, d2h_gb=0.0) for m in ("async", "gpu-only")]  # fmt: skip
    rows = summarize(results, video_fps=16, price_per_hour=4.0, baseline=None)
    table = format_table(rows, price_per_hour=4.0, baseline=None)
    assert "$/1000h" in table and "saving" not in table and "None" not in table


def test_procedural_content_reaches_the_encoders_while_the_gpu_decodes(tmp_path, monkeypatch):
    """With content="procedural", the frames written are the procedural clip's, and the decode
    still ran on the latents (the VAE's own chunks were made, then set aside)."""
    import framepipe._source as source
    import framepipe.bench._run as run_module
    from framepipe import ArraySink, decode, to_uint8_frames
    from framepipe._source import decode_chunks
    from framepipe._synth import synth_clips

    vae = small_vae("wan2.1")
    z = small_latents("wan2.1", frames=3)
    bench = run_module.Bench(vae, z, video=VideoSettings(preset="ultrafast"), workdir=tmp_path, content="procedural")
    decoded = []

    def spy(*args, **options):
        for chunk in decode_chunks(*args, **options):
            decoded.append(chunk.clone())
            yield chunk

    monkeypatch.setattr(source, "decode_chunks", spy)
    sink = ArraySink()
    decode(z, sink, vae=vae, chunk_source=bench.chunks)
    g = bench.geometry
    clip = to_uint8_frames(synth_clips(g.batch, g.frames, g.height, g.width))[0].numpy()
    assert (sink.frames == clip).all()
    assert len(decoded) == 3 and not (to_uint8_frames(torch.cat(decoded, 2))[0].numpy() == clip).all()
    report = run_bench(vae, z, modes=["async", "gpu-only", "encode-only"], warmup=0, runs=1, profile=False,
                       content="procedural")  # fmt: skip
    assert report["settings"]["content"] == "procedural"
    with pytest.raises(SettingsError, match="Invalid content"):
        run_bench(vae, z, modes=["gpu-only"], runs=1, content="real")
    with pytest.raises(SettingsError, match="Invalid decoder"):
        run_bench(vae, z, modes=["gpu-only"], runs=1, decoder="quick")
