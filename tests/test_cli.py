"""The command line as a new user meets it: real files in, one-line errors out, nothing half-written."""

import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import small_latents, small_vae
from framepipe import EncoderError, VideoFileSink
from framepipe import decode as framepipe_decode
from framepipe.cli import main
from helpers import TAKES_CTRL_C, diffusers_frames, framepipe_command


@pytest.fixture
def setup(tmp_path, version):
    vae = small_vae(version)
    vae.save_pretrained(tmp_path / "vae")
    z = small_latents(version, frames=4)
    save_file({"latents": z}, tmp_path / "latents.safetensors")
    return tmp_path, vae, z


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_decode_matches_diffusers(setup, capsys, mode):
    tmp, vae, z = setup
    for decoder in ("framepipe", "diffusers"):
        code, out, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", tmp / "f.npy", "--vae", tmp / "vae",
                              "--mode", mode, "--device", "cpu", "--decoder", decoder, "--quiet")  # fmt: skip
        assert code == 0 and err == ""
        np.testing.assert_array_equal(np.load(tmp / "f.npy"), diffusers_frames(vae, z)[0].numpy())

    code, out, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", tmp / "v.mp4", "--vae", tmp / "vae",
                          "--mode", mode, "--json", "--preset", "ultrafast", "--fps", "24")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["frames_per_video"] == 13 and report["mode"] == mode
    with av.open(str(tmp / "v.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert c.streams.video[0].average_rate == 24
    assert len(frames) == 13 and frames[0].shape == (report["height"], report["width"], 3)


def test_summary_and_png_output(setup, capsys):
    tmp, vae, z = setup
    code, out, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", tmp / "pngs", "--vae", tmp / "vae")
    assert code == 0
    assert f"wrote {tmp / 'pngs'}: 1 x 13 frames" in out
    assert len(list((tmp / "pngs").iterdir())) == 13


def _nan_latents(p):
    z = small_latents("wan2.1")
    z[0, 0, 0, 0, 0] = float("nan")
    save_file({"latents": z}, p)


BAD_LATENTS = {
    "missing": (None, "Latent file not found"),
    "empty": (lambda p: p.write_bytes(b""), "Latent file is empty"),
    "corrupt": (lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"), "Cannot read latents"),
    "rank": (lambda p: save_file({"latents": torch.zeros(16, 4, 6)}, p), "Expected latents of shape"),
    "channels": (lambda p: save_file({"latents": torch.zeros(1, 48, 2, 4, 6)}, p), "48 channels but this VAE"),
    "nan": (_nan_latents, "NaN or Inf"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_LATENTS)
def test_bad_latents(tmp_path, capsys, case):
    make, message = BAD_LATENTS[case]
    small_vae("wan2.1").save_pretrained(tmp_path / "vae")
    path = tmp_path / "z.safetensors"
    if make:
        make(path)
    code, out, err = _run(capsys, "decode", path, "-o", tmp_path / "out.mp4", "--vae", tmp_path / "vae")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("framepipe: error: ") and message in err
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _checkpoint_cases(tmp):
    torch.save({"unet.conv.weight": torch.zeros(3)}, tmp / "other_model.pth")
    state = small_vae("wan2.2").state_dict()
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"][:, :3]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "mismatched.safetensors")
    (tmp / "folder").mkdir()
    return {
        tmp / "other_model.pth": "Not a Wan VAE checkpoint",
        tmp / "mismatched.safetensors": "does not match",
        tmp / "folder": "without config.json",
        tmp / "nowhere.pth": "VAE checkpoint not found",
    }


def test_bad_checkpoints(tmp_path, capsys):
    save_file({"latents": small_latents("wan2.2")}, tmp_path / "z.safetensors")
    for checkpoint, message in _checkpoint_cases(tmp_path).items():
        code, out, err = _run(
            capsys, "decode", tmp_path / "z.safetensors", "-o", tmp_path / "o.mp4", "--vae", checkpoint
        )
        assert code == 1, checkpoint
        assert err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "o.mp4").exists()


def test_unwritable_output_and_bad_encoder(setup, capsys):
    tmp, _, _ = setup
    base = ["decode", tmp / "latents.safetensors", "--vae", tmp / "vae"]
    for output, extra, message in [
        (tmp / "no" / "such" / "dir.mp4", [], "does not exist"),
        (tmp / "vae", [], "not an empty folder"),
        (tmp / "x.gif", [], "Unsupported output type"),
        (tmp / "x.mp4", ["--codec", "nosuchcodec"], "nosuchcodec"),
        (tmp / "x.mp4", ["--preset", "ludicrous"], "Invalid preset"),
        (tmp / "x.mp4", ["--encoder-option", "rc_lookahead=0"], "has no option 'rc_lookahead'"),
        (tmp / "x.mp4", ["--encoder-option", "threads=many"], "threads"),
    ]:
        code, out, err = _run(capsys, *base, "-o", output, *extra)
        assert code == 1 and err.count("\n") == 1 and message in err, (output, err)
    assert sorted(p.name for p in tmp.iterdir()) == ["latents.safetensors", "vae"]


def test_tail_segments_from_the_command_line(setup, capsys):
    tmp, _, _ = setup
    base = ["decode", tmp / "latents.safetensors", "--vae", tmp / "vae", "--preset", "ultrafast", "--quiet"]
    code, out, err = _run(capsys, *base, "-o", tmp / "t.mp4", "--segment-frames", "tail")
    assert code == 0, err
    with av.open(str(tmp / "t.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 13
    for plan in ("tail:1.5", "tail:1.5:2"):
        code, out, err = _run(capsys, *base, "-o", tmp / "t15.mp4", "--segment-frames", plan)
        assert code == 0, err
    for bad in ("0", "head", "tail:1", "tail:x", "tail:1.5:0"):
        with pytest.raises(SystemExit) as exit_info:
            _run(capsys, *base, "-o", tmp / "u.mp4", "--segment-frames", bad)
        assert exit_info.value.code == 2 and "'tail'" in capsys.readouterr().err
    assert not (tmp / "u.mp4").exists()


def test_encoder_options_from_the_command_line(setup, capsys):
    tmp, _, _ = setup
    base = ["decode", tmp / "latents.safetensors", "--vae", tmp / "vae", "--preset", "ultrafast", "--quiet"]
    code, out, err = _run(capsys, *base, "-o", tmp / "k.mp4", "--encoder-option", "g=1", "--encoder-option", "bf=0")
    assert code == 0, err
    with av.open(str(tmp / "k.mp4")) as c:
        assert [p.is_keyframe for p in c.demux(video=0) if p.size] == [True] * 13
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, *base, "-o", tmp / "u.mp4", "--encoder-option", "threads")
    assert exit_info.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp / "u.mp4").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["feed-bench", "--files", "-5"], ">= 1"),
        (["feed-bench", "--batch", "0"], ">= 1"),
        (["feed-bench", "--loader-workers", "-1"], ">= 0"),
        (["pack", "a", "b", "--shard-size", "0"], "invalid size"),
        (["pack", "a", "b", "--workers", "0"], ">= 1"),
        (["serve", "--port", "99999"], "from 1 to 65535"),
        (["batch", "a", "-o", "b", "--ray", "auto", "--workers", "x"], ">= 1"),
    ],
)
def test_counts_out_of_range_are_refused_by_the_parser(capsys, args, expected):
    """A count or port out of its range stops at the parser, in one line, before any work (a negative
    --files, a zero --batch and --port 99999 ended in tracebacks)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in err and "Traceback" not in err


def test_feed_bench_refuses_bad_settings_before_any_work():
    from framepipe import SettingsError
    from framepipe.data._feedbench import feed_bench

    with pytest.raises(SettingsError, match=r"smallest file \(40 KB\) is larger than the largest \(4 KB\)"):
        feed_bench(files=10, min_kb=40, max_kb=4)
    with pytest.raises(SettingsError, match="batch=0"):
        feed_bench(files=10, batch=0)


def test_encoder_failing_mid_video(setup, capsys, monkeypatch, no_thread_leak):
    tmp, _, _ = setup
    (tmp / "v.mp4").write_bytes(b"previous result")
    original = VideoFileSink.write

    def flaky(self, frames):
        if self._count >= 5:
            raise EncoderError(f"Encoder 'libx264' failed at frame {self._count} of {self.path}: simulated")
        original(self, frames)

    monkeypatch.setattr(VideoFileSink, "write", flaky)
    code, out, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", tmp / "v.mp4", "--vae", tmp / "vae")
    assert code == 1 and err.count("\n") == 1 and "failed at frame 5" in err
    assert (tmp / "v.mp4").read_bytes() == b"previous result"  # the old file is untouched
    assert sorted(p.name for p in tmp.iterdir()) == ["latents.safetensors", "v.mp4", "vae"]


@pytest.mark.parametrize("where", ["join", "encode"])
def test_a_failure_inside_pyav_is_one_line(setup, capsys, monkeypatch, where, no_thread_leak):
    # PyAV 19 raised a bare AssertionError ("Container is not open") from inside the joiner: whatever
    # PyAV raises reaches the user as one EncoderError line, and nothing is left at the output path.
    import framepipe.sinks._segments as segments

    def assertion(*args, **kwargs):
        raise AssertionError("Container is not open")

    if where == "join":
        monkeypatch.setattr(segments._Joiner, "_mux", assertion)
    else:
        monkeypatch.setattr(VideoFileSink, "_mux", assertion)
    tmp, _, _ = setup
    segments_args = ["--segment-frames", "tail"] if where == "join" else []
    code, out, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", tmp / "j.mp4", "--vae", tmp / "vae",
                          "--preset", "ultrafast", "--quiet", *segments_args)  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "AssertionError: Container is not open" in err, err
    assert err.startswith("framepipe: error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp.iterdir()) == ["latents.safetensors", "vae"]


def _subprocess(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(framepipe_command(*args), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def test_real_process_error_has_no_traceback(tmp_path):
    (tmp_path / "z.pt").write_bytes(b"")
    proc = _subprocess(["decode", "z.pt", "-o", "out.mp4"], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip() == "framepipe: error: Latent file is empty: z.pt."
    assert "Traceback" not in err


def test_a_mistyped_path_fails_before_torch_and_diffusers_load(tmp_path):
    """decode, bench, compare and serve check their latent files and VAE path first: a typo is answered
    at once, not after the seconds that importing torch and diffusers take."""
    code = (
        "import sys; from framepipe.cli import main; rc = main(sys.argv[1:]); "
        "assert not {'torch', 'diffusers'} & set(sys.modules), sorted(sys.modules); sys.exit(rc)"
    )
    (tmp_path / "z.pt").write_bytes(b"not read")
    cases = {
        ("decode", "typo.pt", "-o", "out.mp4"): "Latent file not found: typo.pt.",
        ("compare", "typo.pt"): "Latent file not found: typo.pt.",
        ("bench", "--latents", "typo.pt"): "Latent file not found: typo.pt.",
        ("decode", "z.pt", "-o", "out.mp4", "--vae", "typo.pth"): "VAE checkpoint not found: typo.pth.",
        ("serve", "--vae", "typo"): "VAE checkpoint not found: typo.",
    }
    for args, message in cases.items():
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == f"framepipe: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.pt"]


@pytest.mark.parametrize(
    ("sig", "code", "words"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_and_sigterm_end_cleanly(tmp_path, sig, code, words):
    # SIGTERM is what timeout, Slurm, Kubernetes and docker stop send: it ends a run as Ctrl-C does.
    save_file({"latents": torch.randn(1, 16, 40, 8, 8)}, tmp_path / "z.safetensors")
    proc = subprocess.Popen(
        framepipe_command("decode", "z.safetensors", "-o", "out.mp4", "--arch", "tiny-wan2.1", "--device", "cpu"),
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.mp4.*")):
        time.sleep(0.05)  # wait until encoding has started
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert words in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.safetensors"]


def test_a_later_run_removes_what_a_killed_run_left(tmp_path):
    save_file({"latents": torch.randn(1, 16, 20, 8, 8)}, tmp_path / "z.safetensors")  # seconds: killed mid-run
    args = framepipe_command("decode", "z.safetensors", "-o", "out.mp4", "--arch", "tiny-wan2.1", "--device", "cpu",
                             "--quiet")  # fmt: skip
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.mp4.*")):
        time.sleep(0.05)
    proc.kill()  # kill -9: nothing can clean up
    proc.communicate(timeout=60)
    assert [p.name.startswith(".out.mp4.") for p in tmp_path.iterdir() if p.name != "z.safetensors"] == [True]
    save_file({"latents": torch.randn(1, 16, 2, 8, 8)}, tmp_path / "short.safetensors")  # the later run: short
    args[args.index("z.safetensors")] = "short.safetensors"
    assert subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "short.safetensors", "z.safetensors"]


def test_demo(tmp_path):
    """The README's main job, as a new user runs it, on a smaller clip (the default, 33 frames of 256x256,
    takes a minute on two cores; ``make demo`` runs it): the trained VAE brings a real clip back."""
    proc = _subprocess(["demo", "--json", "--frames", "17", "--size", "128"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["mode"] == "async" and report["device"] == "cpu" and report["psnr_db"] > 26
    assert report["demo_seconds"] >= report["seconds"] > 0  # the whole demo, and the decode within it
    with av.open(str(tmp_path / "framepipe-demo.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape == (128, 256, 3)
    left, right = frames[8][:, :128].astype(float), frames[8][:, 128:].astype(float)
    assert 10 * np.log10(255**2 / np.mean((left - right) ** 2)) > 24  # original and decoded, side by side


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    code, _, err = _run(capsys, "demo", "--frames", "10", "-o", tmp_path / "x.mp4")
    last = err.splitlines()[-1]  # after the demo's opening line
    assert code == 1 and last.startswith("framepipe: error:") and "decodes 1 + 4k frames" in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    z = small_latents("wan2.1").numpy()
    np.save(tmp_path / "lat.npy", z)
    np.save(tmp_path / "other.npy", z)
    before = (tmp_path / "lat.npy").read_bytes()
    code, out, err = _run(capsys, "decode", tmp_path / "lat.npy", "-o", tmp_path / "lat.npy", "--arch", "tiny-wan2.1")
    assert code == 1 and "is also an input" in err and err.count("\n") <= 2, err  # the random-weights warning
    # one input's output is another input of the same stream
    code, out, err = _run(capsys, "decode", tmp_path / "lat.npy", tmp_path / "other.npy", "-o", tmp_path / "{name}.npy",
                          "--arch", "tiny-wan2.1")  # fmt: skip
    assert code == 1 and "is also an input" in err
    assert (tmp_path / "lat.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat.npy", "other.npy"]


def test_reports_name_the_model_and_the_embedded_one_is_said_once(tmp_path, capsys):
    np.save(tmp_path / "z.npy", small_latents("wan2.1", frames=2, height=8, width=8).numpy())
    code, out, err = _run(capsys, "decode", tmp_path / "z.npy", "-o", tmp_path / "a.npy")
    assert code == 0 and "model: embedded tiny-wan2.1 (trained)" in out
    assert err.count("embedded tiny VAE, which knows only procedural clips") == 1
    code, out, err = _run(capsys, "decode", tmp_path / "z.npy", "-o", tmp_path / "b.npy", "--arch", "tiny-wan2.1",
                          "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["model"] == "random tiny-wan2.1 (seed 0)" and "embedded" not in err


def test_raw_latents_given_as_pipeline_latents_are_warned_about(tmp_path, recwarn):
    vae = small_vae("wan2.1")
    z = small_latents("wan2.1", frames=3, height=8, width=8)  # normalized: about 0 +- 1 per channel
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    raw = z * torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1) + mean  # what vae.encode() gives
    framepipe_decode(z, tmp_path / "a.npy", vae=vae)
    framepipe_decode(raw, tmp_path / "b.npy", vae=vae, latent_format="raw")
    assert not [w for w in recwarn if "look like raw latents" in str(w.message)]
    with pytest.warns(UserWarning, match="look like raw latents.*--latent-format raw"):
        framepipe_decode(raw, tmp_path / "c.npy", vae=vae)


def test_the_demo_says_what_each_phase_is_doing(tmp_path, capsys):
    code, out, err = _run(capsys, "demo", "--frames", "5", "--size", "32", "-o", tmp_path / "d.mp4")
    assert code == 0
    phases = [line for line in err.splitlines() if line.startswith("framepipe demo: ")]
    assert [p.split(": ", 1)[1].split(" ")[0] for p in phases] == ["framepipe's", "drawing", "encoding", "decoding"]
    assert "The decode took" in out and "the whole demo, drawing and encoding the clip included" in out


def test_ctrl_c_inside_one_long_native_operation_ends_within_the_grace(tmp_path):
    """A Ctrl-C that arrives while the main thread is inside one long native call (Python cannot
    raise KeyboardInterrupt until it returns) ends the process after the watchdog's grace, with
    this process's work in progress removed and one line said."""
    script = tmp_path / "long.py"
    script.write_text(
        TAKES_CTRL_C + "import sys, torch\n"
        "from pathlib import Path\n"
        "from framepipe import _watchdog\n"
        "from framepipe._paths import temporary_sibling\n"
        "out = Path(sys.argv[1])\n"
        "_watchdog.install([out.parent], grace_s=1.0)\n"
        "temporary_sibling(out).write_bytes(b'partial')\n"
        "a = torch.randn(7000, 7000, dtype=torch.float64)\n"
        "print('ready', flush=True)\n"
        "a @ a @ a @ a\n"
        "print('finished', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "v.mp4")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "finished" not in out
    assert time.monotonic() - start < 6
    assert "framepipe: interrupted inside a long operation" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.py"]


def test_read_only_destinations_are_one_line(setup, capsys, read_only_folder):
    """decode and pack into a read-only file system (root can mount one here; else skipped)."""
    tmp, _, _ = setup
    code, _, err = _run(capsys, "decode", tmp / "latents.safetensors", "-o", read_only_folder / "v.mp4", "--vae",
                        tmp / "vae")  # fmt: skip
    assert code == 1 and err.strip().splitlines()[-1].startswith("framepipe: error: Cannot write")
    (tmp / "files").mkdir()
    (tmp / "files" / "a.txt").write_text("a")
    code, _, err = _run(capsys, "pack", tmp / "files", read_only_folder / "ds")
    assert code == 1 and "Read-only file system" in err and len(err.strip().splitlines()) == 1
