"""framepipe batch: plans from files, folders, globs and manifests; a journal that loses nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import av
import pytest
from safetensors.torch import save_file

from conftest import small_latents, small_vae
from framepipe import DeviceError, SettingsError
from framepipe.batch import JOURNAL_NAME, BatchOptions, Journal, file_digest, plan_batch, run_batch
from framepipe.cli import main
from framepipe.sinks import VideoSettings
from helpers import framepipe_command

FAST = BatchOptions(video=VideoSettings(preset="ultrafast"))


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    small_vae("wan2.1").save_pretrained(folder)
    return folder


def _latents(folder, count, *, frames=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_file({"latents": small_latents("wan2.1", frames=frames + i % 3, seed=i)}, folder / f"v{i}.safetensors")
    return folder


def _frames(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


def _options(vae_folder, **changes):
    return BatchOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast", **changes))


def test_plan_from_folders_globs_and_manifests(tmp_path):
    _latents(tmp_path / "a", 2)
    _latents(tmp_path / "b" / "deep", 1)
    (tmp_path / "b" / "deep" / "v0.safetensors").rename(tmp_path / "b" / "deep" / "w0.safetensors")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        '# a comment\n{"latents": "a/v0.safetensors", "name": "first", "fps": 24}\n\n'
        '{"latents": "' + str(tmp_path / "a" / "v1.safetensors") + '", "name": "second", "crf": 30}\n'
    )
    assert [t.name for t in plan_batch([str(tmp_path / "a"), str(tmp_path / "b")])] == ["v0", "v1", "w0"]
    assert [t.name for t in plan_batch([str(tmp_path / "a" / "*.safetensors")])] == ["v0", "v1"]
    tasks = plan_batch([str(manifest)])
    assert [(t.name, t.settings) for t in tasks] == [("first", {"fps": 24}), ("second", {"crf": 30})]
    assert tasks[0].latents == str(tmp_path / "a" / "v0.safetensors")


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "line 2: not a JSON object"),
        ('{"name": "x"}', 'line 2: expected an object with "latents"'),
        ('{"latents": "a.pt", "speed": 2}', "line 2: unknown key.*speed"),
        ('{"latents": "a.pt", "fps": "fast"}', "line 2: .*fps"),
        ('{"latents": "a.pt", "name": "../up"}', "line 2: name must be a plain file name"),
        ('{"latents": "a.txt"}', "line 2: .*not a latent file"),
    ],
)
def test_bad_manifest_lines_are_named(tmp_path, line, match):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"latents": "ok.pt"}\n' + line + "\n")
    with pytest.raises(SettingsError, match=match):
        plan_batch([str(manifest)])


def test_plan_refusals(tmp_path):
    _latents(tmp_path / "a", 1)
    _latents(tmp_path / "b", 1)
    with pytest.raises(SettingsError, match="would both write v0.mp4"):
        plan_batch([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SettingsError, match="Input not found"):
        plan_batch([str(tmp_path / "nope.pt")])
    with pytest.raises(SettingsError, match="No latent files match"):
        plan_batch([str(tmp_path / "*.npy")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SettingsError, match="No latent files"):
        plan_batch([str(tmp_path / "empty")])


def test_ray_workers_without_ray_are_refused_before_any_work(tmp_path, vae_folder):
    """``workers`` (``--workers``) counts Ray actors; without ``ray_address`` it was silently ignored."""
    _latents(tmp_path / "in", 1)
    tasks = plan_batch([str(tmp_path / "in")])
    with pytest.raises(SettingsError, match=r"needs a Ray cluster \(--ray\)"):
        run_batch(tasks, tmp_path / "out", _options(vae_folder), workers=2)
    assert not (tmp_path / "out").exists()


def test_failures_are_recorded_and_the_batch_goes_on(tmp_path, vae_folder):
    _latents(tmp_path / "in", 3)
    (tmp_path / "in" / "v1.safetensors").write_bytes(b"garbage")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"latents": "in/v2.safetensors", "name": "fast", "fps": 24}\n')
    tasks = plan_batch(
        [str(tmp_path / "in" / "v0.safetensors"), str(tmp_path / "in" / "v1.safetensors"), str(manifest)]
    )
    seen = []
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder), on_result=lambda e, i, n: seen.append((i, n)))
    assert (summary.done, summary.failed, summary.skipped) == (2, 1, 0)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert summary.failures[0][0] == "v1" and "Cannot read latents" in summary.failures[0][1]
    assert _frames(tmp_path / "out" / "fast.mp4") == (13, 24.0)  # the manifest's fps
    journal = Journal(tmp_path / "out")
    entry = journal.entries["v0"]
    assert entry["status"] == "done" and file_digest(tmp_path / "out" / "v0.mp4") == (entry["bytes"], entry["sha256"])
    assert entry["account"]["energy_joules"] is None and entry["account"]["gpu_seconds"] is None  # CPU: not measured
    assert summary.video_seconds == pytest.approx(5 / 16 + 13 / 24)
    json.dumps(summary.to_dict())

    # a re-run skips what is done and tries the failed one again
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder))
    assert (summary.done, summary.failed, summary.skipped) == (0, 1, 2)


def test_fail_fast(tmp_path, vae_folder):
    _latents(tmp_path / "in", 3)
    (tmp_path / "in" / "v0.safetensors").write_bytes(b"garbage")
    summary = run_batch(plan_batch([str(tmp_path / "in")]), tmp_path / "out", _options(vae_folder), fail_fast=True)
    assert (summary.done, summary.failed) == (0, 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [JOURNAL_NAME]


def test_changed_outputs_are_decoded_again(tmp_path, vae_folder):
    tasks = plan_batch([str(_latents(tmp_path / "in", 2))])
    run_batch(tasks, tmp_path / "out", _options(vae_folder))
    out0, out1 = tmp_path / "out" / "v0.mp4", tmp_path / "out" / "v1.mp4"
    good = out0.read_bytes()
    out0.write_bytes(good[:100])  # truncated: its size no longer matches
    out1.write_bytes(bytes(len(out1.read_bytes())))  # same size, other bytes: only --verify sees it
    assert run_batch(tasks, tmp_path / "out", _options(vae_folder)).done == 1
    assert out0.read_bytes() == good
    assert run_batch(tasks, tmp_path / "out", _options(vae_folder), verify=True).done == 1
    assert _frames(out1)[0] == 9


def test_a_torn_journal_line_is_cut(tmp_path, vae_folder):
    tasks = plan_batch([str(_latents(tmp_path / "in", 2))])
    run_batch(tasks[:1], tmp_path / "out", _options(vae_folder))
    with open(tmp_path / "out" / JOURNAL_NAME, "a") as f:
        f.write('{"name": "v1", "status": "do')  # killed in the middle of an append
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder))
    assert (summary.done, summary.skipped) == (1, 1)
    lines = (tmp_path / "out" / JOURNAL_NAME).read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["v0", "v1"]


def test_several_workers_start_with_the_longest_videos(tmp_path):
    from framepipe.batch._run import longest_first

    tasks = plan_batch([str(_latents(tmp_path / "in", 3))])  # 2, 3, 4 latent frames
    assert [t.name for t in longest_first(tasks)] == ["v2", "v1", "v0"]


def test_two_workers_share_the_work(tmp_path, vae_folder):
    tasks = plan_batch([str(_latents(tmp_path / "in", 5))])
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder), devices=["cpu", "cpu"])
    assert (summary.done, summary.failed) == (5, 0)
    for task in tasks:
        assert _frames(tmp_path / "out" / f"{task.name}.mp4")[0] in (5, 9, 13)
    # each worker's share: named in the journal and the summary, its times within the batch's
    figures = summary.to_dict()["per_worker"]
    assert set(figures) <= {"cpu#0", "cpu#1"} and sum(f["videos"] for f in figures.values()) == 5
    assert {e["worker"] for e in Journal(tmp_path / "out").entries.values()} == set(figures)
    assert min(f["started_after_s"] for f in figures.values()) == 0
    assert min(f["ended_before_s"] for f in figures.values()) == 0
    for f in figures.values():
        assert f["gpu_seconds"] > 0 and f["span_seconds"] > 0 and f["busy_share"] > 0
        # its start-up: spawned, imported, model loaded, then warmed up before its first video
        assert 0 < f["loaded_after_s"] <= f["first_video_after_s"] < summary.seconds


def test_one_device_batch_says_when_its_model_was_loaded(tmp_path, vae_folder):
    tasks = plan_batch([str(_latents(tmp_path / "in", 1))])
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder))
    (figures,) = summary.to_dict()["per_worker"].values()
    assert 0 <= figures["loaded_after_s"] <= figures["first_video_after_s"] < summary.seconds


def test_a_worker_that_dies_hands_its_videos_to_the_other(tmp_path, vae_folder):
    import multiprocessing

    tasks = plan_batch([str(_latents(tmp_path / "in", 6))])
    killed = []

    def kill_one_worker(entry, index, total):  # at the first result: kill -9 one worker mid-stream
        if not killed:
            worker = multiprocessing.active_children()[0]
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder), devices=["cpu", "cpu"],
                        on_result=kill_one_worker)  # fmt: skip
    assert killed and (summary.done, summary.failed) == (6, 0)  # what the dead one held, the other decoded
    again = run_batch(tasks, tmp_path / "out", _options(vae_folder), devices=["cpu", "cpu"])
    assert (again.skipped, again.done, again.failed) == (6, 0, 0)
    for task in tasks:
        assert _frames(tmp_path / "out" / f"{task.name}.mp4")[0] in (5, 9, 13)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [JOURNAL_NAME] + [f"{t.name}.mp4" for t in tasks]
    )  # nothing half-written


def test_when_every_worker_dies_the_batch_stops_in_one_line_and_a_rerun_finishes(tmp_path, vae_folder):
    import multiprocessing

    tasks = plan_batch([str(_latents(tmp_path / "in", 6))])

    def kill_every_worker(entry, index, total):
        for worker in multiprocessing.active_children():
            if worker.name.startswith("framepipe-batch-"):
                os.kill(worker.pid, signal.SIGKILL)

    with pytest.raises(DeviceError, match="Every batch worker has stopped"):
        run_batch(tasks, tmp_path / "out", _options(vae_folder), devices=["cpu", "cpu"], on_result=kill_every_worker)
    first = Journal(tmp_path / "out").entries
    assert all(e["status"] == "done" for e in first.values())  # what was not done is not in the journal
    again = run_batch(tasks, tmp_path / "out", _options(vae_folder))  # in this process: quicker
    assert (again.skipped, again.done, again.failed) == (len(first), 6 - len(first), 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [JOURNAL_NAME] + [f"{t.name}.mp4" for t in tasks]
    )


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_file_of_several_videos_fails_in_one_line(tmp_path, vae_folder, mode):
    (tmp_path / "in").mkdir()
    save_file({"latents": small_latents("wan2.1", batch=2, frames=2)}, tmp_path / "in" / "two.safetensors")
    options = BatchOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast"), mode=mode)
    summary = run_batch(plan_batch([str(tmp_path / "in")]), tmp_path / "out", options)
    assert (summary.done, summary.failed) == (0, 1)
    assert summary.failures[0][1].startswith("The latents hold 2 videos (batch dimension)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [JOURNAL_NAME]


def test_unwritable_output_folder_is_one_line(tmp_path, vae_folder, capsys):
    _latents(tmp_path / "in", 1)
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "file" / "out"), "--vae", str(vae_folder)]) == 1
    assert "cannot create the destination folder" in capsys.readouterr().err


def test_read_only_output_folder_is_one_line(tmp_path, vae_folder, capsys, read_only_folder):
    _latents(tmp_path / "in", 1)
    assert main(["batch", str(tmp_path / "in"), "-o", str(read_only_folder / "out"), "--vae", str(vae_folder)]) == 1
    assert "Read-only file system" in capsys.readouterr().err


def test_cli(tmp_path, vae_folder, capsys):
    _latents(tmp_path / "in", 2)
    args = [
        "batch",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "--vae",
        str(vae_folder),
        "--preset",
        "ultrafast",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[2/2] v1: done" in captured.err and "batch: 2 done, 0 skipped" in captured.out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert main(["batch", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 1
    assert "error: Input not found" in capsys.readouterr().err
    assert main([*args, "--gpus", "0"]) == 1  # no GPU here
    assert "CUDA GPU" in capsys.readouterr().err


def test_cli_json_stays_alone_on_stdout(tmp_path, vae_folder, capsys, monkeypatch):
    """What prints on stdout during a batch (Ray's raylet messages do, on a cluster) goes to stderr:
    ``--json`` output parses."""
    import framepipe.batch

    run_batch_ = framepipe.batch.run_batch

    def chatty(*args, **kwargs):
        print("(raylet) A worker died or was killed while executing a task by an unexpected system error.")
        return run_batch_(*args, **kwargs)

    monkeypatch.setattr(framepipe.batch, "run_batch", chatty)
    _latents(tmp_path / "in", 1)
    args = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--vae", str(vae_folder), "--preset",
            "ultrafast", "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["done"] == 1 and "(raylet) A worker died" in captured.err


@pytest.mark.filterwarnings("ignore:No VAE checkpoint given")  # random weights: the point here
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_procedural_content_reaches_the_encoders(tmp_path, mode):
    """--content procedural (random weights): the videos show the procedural clip of their size."""
    import numpy as np

    from framepipe import to_uint8_frames
    from framepipe._synth import synth_clips

    _latents(tmp_path / "in", 2)
    options = BatchOptions(arch="tiny-wan2.1", video=VideoSettings(preset="ultrafast"), mode=mode, content="procedural")
    assert run_batch(plan_batch([str(tmp_path / "in")]), tmp_path / "out", options).done == 2
    for i, frames in enumerate((5, 9)):  # 2 and 3 latent frames
        with av.open(str(tmp_path / "out" / f"v{i}.mp4")) as container:
            got = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)
        clip = to_uint8_frames(synth_clips(1, frames, 32, 48))[0].numpy().astype(np.float64)
        assert got.shape == clip.shape
        assert 10 * np.log10(255**2 / ((got - clip) ** 2).mean()) > 25  # H.264 (yuv420p) of the clip, not the decode


def test_procedural_content_needs_random_weights(tmp_path, vae_folder, capsys):
    with pytest.raises(SettingsError, match="random weights"):
        BatchOptions(content="procedural")
    with pytest.raises(SettingsError, match="random weights"):
        BatchOptions(vae=str(vae_folder), arch="wan2.1", content="procedural")
    with pytest.raises(SettingsError, match="Invalid content"):
        BatchOptions(arch="wan2.1", content="noise")
    assert main(["batch", str(tmp_path), "-o", str(tmp_path / "out"), "--content", "procedural"]) == 1
    assert "error: --content procedural replaces" in capsys.readouterr().err


def test_cli_says_where_each_workers_time_went(tmp_path, monkeypatch, capsys):
    import framepipe.batch
    from framepipe.batch._run import BatchSummary, WorkerShare

    summary = BatchSummary(done=3, seconds=9.0, devices=["cuda:0", "cuda:1"])
    for name, entries in {"cuda:0": [(0.0, 4.0, 3.5)], "cuda:1": [(0.5, 2.5, 1.9), (2.4, 4.5, 2.0)]}.items():
        share = summary.per_worker[name] = WorkerShare()
        for start, end, seconds in entries:
            share.add({"started_at": 100 + start, "finished_at": 100 + end, "seconds": seconds})
    monkeypatch.setattr(framepipe.batch, "run_batch", lambda *a, **k: summary)
    assert main(["batch", str(_latents(tmp_path / "in", 1)), "-o", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("  cuda:0: 1 video, 3.50 s decoding in 4.00 s (87.5% of it decoding); began 0.00 s after "
                        "the first worker, ended 0.50 s before the last")  # fmt: skip
    assert lines[2].startswith("  cuda:1: 2 videos, 3.90 s decoding in 4.00 s (97.5% of it decoding); began 0.50 s")


def test_a_batch_removes_partial_videos_that_dead_processes_left(tmp_path, vae_folder):
    """Also of videos that are done and will not be written again (a worker died mid-video, another
    one finished it); a live process's and another host's are left alone."""
    from framepipe._paths import temporary_sibling

    tasks = plan_batch([str(_latents(tmp_path / "in", 2))])
    out = tmp_path / "out"
    run_batch(tasks, out, _options(vae_folder))
    code = ("import sys; from pathlib import Path; from framepipe._paths import temporary_sibling; "
            "temporary_sibling(Path(sys.argv[1]), clean=False).write_bytes(b'partial')")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(out / "v0.mp4")], check=True)  # its process is gone
    mine = temporary_sibling(out / "v1.mp4", clean=False)
    mine.write_bytes(b"partial")  # this live process's
    elsewhere = out / ".v1.mp4.otherhost-1-0123abcd.partial.mp4"
    elsewhere.write_bytes(b"partial")  # another host's: its process may be alive
    assert run_batch(tasks, out, _options(vae_folder)).skipped == 2
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([JOURNAL_NAME, "v0.mp4", "v1.mp4", mine.name, elsewhere.name])


def test_kill_minus_9_at_random_moments_loses_nothing(tmp_path, vae_folder):
    """The batch is killed (SIGKILL) three times at random moments while a video is being written,
    then run to the end: every output exists once, matches its journal entry, and decodes to the
    right number of frames."""
    _latents(tmp_path / "in", 8, frames=6)
    command = framepipe_command("batch", tmp_path / "in", "-o", tmp_path / "out", "--vae", vae_folder,
                                "--preset", "ultrafast", "--quiet")  # fmt: skip
    rng = random.Random(7)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    journal = tmp_path / "out" / JOURNAL_NAME

    def done() -> int:
        return journal.read_text().count('"done"') if journal.exists() else 0

    def writing() -> bool:
        return (tmp_path / "out").is_dir() and any(".partial" in p.name for p in (tmp_path / "out").iterdir())

    for _ in range(3):  # each kill lands while a video is being written (the next one decoding)
        target = done() + rng.randint(0, 2)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while (done() < target or not writing()) and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert done() < 8, "every kill came after the batch had finished: the test proved nothing"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    journal = Journal(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([JOURNAL_NAME] + [f"v{i}.mp4" for i in range(8)])  # no partial file left
    for i in range(8):
        output = tmp_path / "out" / f"v{i}.mp4"
        entry = journal.entries[f"v{i}"]
        assert file_digest(output) == (entry["bytes"], entry["sha256"])
        assert _frames(output)[0] == 1 + 4 * (6 + i % 3 - 1)


@pytest.mark.ray
def test_ray_batch_survives_a_lost_node(tmp_path, vae_folder):
    """A node of the cluster goes away (its raylet and every process on it killed) while its actor
    writes a video: the other node's actor decodes what it held; all outputs once."""
    import threading

    import ray

    cluster_utils = pytest.importorskip("ray.cluster_utils")
    videos = 8  # enough that both actors hold one while the batch runs, also on a loaded 2-core machine
    tasks = plan_batch([str(_latents(tmp_path / "in", videos, frames=5))])
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]  # one actor on each
    removed: list[str] = []

    def remove_node_mid_batch() -> None:
        out = tmp_path / "out"
        for _ in range(1200):
            listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            running = listing.count("ray::RayDecoder.run")
            if running >= 2 and out.is_dir() and any(".partial" in p.name for p in out.iterdir()):
                driver = ray.get_runtime_context().get_node_id()  # its node, and the dispatcher's, stay
                victim = next(n for n in nodes if n.node_id != driver)
                cluster.remove_node(victim, allow_graceful=False)
                removed.append(victim.node_id)
                return
            time.sleep(0.05)

    threading.Thread(target=remove_node_mid_batch, daemon=True).start()
    try:
        summary = run_batch(tasks, tmp_path / "out", _options(vae_folder), ray_address=cluster.address, workers=2)
    finally:
        cluster.shutdown()
    assert removed, "the node was not removed mid-batch"
    assert (summary.done, summary.failed) == (videos, 0)
    # the lost node's actor may have outlived the batch by a moment: its partial video, if any, goes
    # with the next run into the folder (here one that finds every video done)
    assert run_batch(tasks, tmp_path / "out", _options(vae_folder)).skipped == videos
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [JOURNAL_NAME] + [f"v{i}.mp4" for i in range(videos)]
    )
    journal = Journal(tmp_path / "out")
    for i in range(videos):
        assert file_digest(tmp_path / "out" / f"v{i}.mp4") == (journal.entries[f"v{i}"]["bytes"],
                                                               journal.entries[f"v{i}"]["sha256"])  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint):
    """A real Ray cluster on loopback: a head node and a second node, one CPU each (started after
    the S3 server, so that its workers have the server's credentials, as a real cluster's nodes would)."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    yield cluster.address
    cluster.shutdown()


def _kill_a_decoding_actor(killed: list[int], out: Path) -> None:
    """Kill -9 a Ray actor running the batch (Ray titles it so) once a video is being written."""
    for _ in range(1200):
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        pids = [int(line.split()[0]) for line in listing.splitlines() if "ray::RayDecoder.run" in line]
        if pids and out.is_dir() and any(".partial" in p.name for p in out.iterdir()):
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.05)


@pytest.mark.ray
def test_ray_batch_survives_a_killed_worker(tmp_path, vae_folder, ray_cluster):
    import threading

    tasks = plan_batch([str(_latents(tmp_path / "in", 6, frames=5))])
    killed: list[int] = []
    threading.Thread(target=_kill_a_decoding_actor, args=(killed, tmp_path / "out"), daemon=True).start()
    summary = run_batch(tasks, tmp_path / "out", _options(vae_folder), ray_address=ray_cluster, workers=2)
    assert killed, "no actor was seen decoding"
    assert (summary.done, summary.failed) == (6, 0)
    journal = Journal(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [JOURNAL_NAME] + [f"v{i}.mp4" for i in range(6)]
    )
    for i in range(6):
        entry = journal.entries[f"v{i}"]
        assert file_digest(tmp_path / "out" / f"v{i}.mp4") == (entry["bytes"], entry["sha256"])
        assert _frames(tmp_path / "out" / f"v{i}.mp4")[0] == 1 + 4 * (5 + i % 3 - 1)


@pytest.mark.ray
def test_ray_cli_and_ray_data(tmp_path, vae_folder, ray_cluster, capsys):
    ray_data = pytest.importorskip("ray.data")
    from framepipe.batch import RayDecoder

    _latents(tmp_path / "in", 2)  # three workers on a cluster with room for two: the third waits, unused
    args = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--vae", str(vae_folder),
            "--preset", "ultrafast", "--ray", ray_cluster, "--workers", "3", "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 2 and all(name.startswith("ray-") for name in summary["per_worker"])
    for figures in summary["per_worker"].values():  # each actor's start-up, as local workers say it
        assert 0 < figures["loaded_after_s"] <= figures["first_video_after_s"] < summary["seconds"]
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--ray", "127.0.0.1:1"]) == 1
    assert "error: Cannot join the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    bad = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "y"), "--vae", str(tmp_path / "bad.safetensors"),
           "--ray", ray_cluster]  # fmt: skip
    assert main(bad) == 1  # the actors cannot load it: one line, no folder left
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "error: A Ray worker could not start: Cannot read VAE checkpoint" in err[0], err
    assert not (tmp_path / "y").exists()

    import ray

    ray.init(address=ray_cluster, logging_level="ERROR", log_to_driver=False)
    try:
        rows = [{"latents": str(tmp_path / "in" / f"v{i}.safetensors"), "name": f"d{i}"} for i in range(2)]
        results = (
            ray_data.from_items(rows)
            .map_batches(
                RayDecoder,
                fn_constructor_kwargs={"outdir": str(tmp_path / "data"), "options": _options(vae_folder)},
                batch_size=1,
                concurrency=1,
                num_cpus=1,
            )
            .take_all()
        )
    finally:
        ray.shutdown()
    assert sorted((r["name"], r["status"]) for r in results) == [("d0", "done"), ("d1", "done")]
    assert _frames(tmp_path / "data" / "d1.mp4")[0] == 9


def test_batch_from_and_to_an_object_store(tmp_path, vae_folder, s3_endpoint, capsys):
    """Latents listed and read from an s3:// prefix, videos uploaded whole to another, the journal as
    one object per video; a re-run skips what is there, a changed object is decoded again."""
    from framepipe.data._store import open_destination

    source = open_destination("s3://fp-batch-in/latents", endpoint_url=s3_endpoint)
    for path in sorted(_latents(tmp_path / "in", 3).iterdir()):
        source.upload(path, path.name)
    args = ["batch", "s3://fp-batch-in/latents", "-o", "s3://fp-batch-out/videos", "--vae", str(vae_folder),
            "--preset", "ultrafast", "--endpoint-url", s3_endpoint, "--json"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 3
    out = open_destination("s3://fp-batch-out/videos", endpoint_url=s3_endpoint)
    keys = sorted(info.key for info in out.list())
    assert keys == [f"framepipe-batch/v{i}.json" for i in range(3)] + [f"v{i}.mp4" for i in range(3)]
    entry = json.loads(out.read("framepipe-batch/v1.json"))
    out.download("v1.mp4", tmp_path / "v1.mp4")
    assert file_digest(tmp_path / "v1.mp4") == (entry["bytes"], entry["sha256"])
    assert out.metadata("v1.mp4")["sha256"] == entry["sha256"]
    assert _frames(tmp_path / "v1.mp4")[0] == 9
    assert entry["output"] == "s3://fp-batch-out/videos/v1.mp4"

    out.write("v2.mp4", b"not a video")  # another size: decoded again
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"]) == (1, 2)
    missing = ["batch", "s3://fp-batch-in/none", "-o", str(tmp_path / "x"), "--endpoint-url", s3_endpoint]
    assert main(missing) == 1
    assert "No latent objects" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_batch_from_and_to_an_object_store(tmp_path, vae_folder, ray_cluster, s3_endpoint, capsys):
    """The Ray actors read latents from an s3:// prefix and upload each video whole to another."""
    from framepipe.data._store import open_destination

    source = open_destination("s3://fp-ray-in/latents", endpoint_url=s3_endpoint)
    for path in sorted(_latents(tmp_path / "in", 3).iterdir()):
        source.upload(path, path.name)
    args = ["batch", "s3://fp-ray-in/latents", "-o", "s3://fp-ray-out/videos", "--vae", str(vae_folder),
            "--preset", "ultrafast", "--endpoint-url", s3_endpoint, "--ray", ray_cluster, "--workers", "2",
            "--json"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 3
    out = open_destination("s3://fp-ray-out/videos", endpoint_url=s3_endpoint)
    for i in range(3):
        entry = json.loads(out.read(f"framepipe-batch/v{i}.json"))
        out.download(f"v{i}.mp4", tmp_path / f"v{i}.mp4")
        assert file_digest(tmp_path / f"v{i}.mp4") == (entry["bytes"], entry["sha256"])
        assert _frames(tmp_path / f"v{i}.mp4")[0] == 1 + 4 * (2 + i % 3 - 1)


class _FakeRay:
    """Just enough of Ray for ``_ray._stream``, without Ray: an actor's call runs at once, where it is
    made, and ``wait`` hands back the oldest call first."""

    class RayActorError(Exception):
        pass

    class ActorUnavailableError(RayActorError):
        pass

    exceptions = types.SimpleNamespace(RayActorError=RayActorError, ActorUnavailableError=ActorUnavailableError,
                                       RayError=Exception)  # fmt: skip

    class Ref:  # a call's outcome
        def __init__(self, run):
            try:
                self.value, self.error = run(), None
            except _FakeRay.RayActorError as e:
                self.value, self.error = None, e

    class Remote:  # a local object's methods called as Ray calls an actor's
        def __init__(self, obj):
            self.obj = obj

        def __getattr__(self, name):
            return types.SimpleNamespace(remote=lambda *a: _FakeRay.Ref(lambda: getattr(self.obj, name)(*a)))

    class Actor:
        """Runs ``lives``' first entry at its first call, the next at its next, the last from then on:
        "decode" takes and reports videos until the queue is empty; "restarting" answers unavailable;
        "dies holding one" takes a video and dies."""

        def __init__(self, *lives: str):
            self.lives = list(lives)
            self.run = types.SimpleNamespace(remote=self.start)

        def start(self, worker, dispatcher):
            life = self.lives.pop(0) if len(self.lives) > 1 else self.lives[0]

            def run():
                if life == "restarting":
                    raise _FakeRay.ActorUnavailableError("The actor is temporarily unavailable: it is restarting")
                if life == "dies holding one":
                    dispatcher.obj.take(worker)
                    raise _FakeRay.ActorUnavailableError("The actor is temporarily unavailable: its node died")
                while (task := dispatcher.obj.take(worker)) is not None:
                    dispatcher.obj.report(worker, {"name": task.name, "latents": task.latents, "status": "done"})

            return _FakeRay.Ref(run)

    @staticmethod
    def get(ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    @staticmethod
    def wait(refs, num_returns, timeout):
        return refs[:1], refs[1:]

    @staticmethod
    def kill(actor):
        pass

    @classmethod
    def stream(cls, actors, videos: int) -> list[str]:
        """``_stream`` over ``videos`` videos: the names it finished."""
        from framepipe.batch import _ray
        from framepipe.batch._plan import BatchTask

        tasks = [BatchTask(f"v{i}.pt", f"v{i}") for i in range(videos)]
        finished = []
        _ray._stream(cls, actors, cls.Remote(_ray.Dispatcher(tasks)), tasks,
                     lambda entry: finished.append(entry["name"]) or True, lambda worker, at: None)  # fmt: skip
        return sorted(finished)


def test_an_actor_ray_is_restarting_is_waited_for_not_given_up():
    """Without Ray: an actor that answers "unavailable" more times in a row than a dead one may die
    (Ray restarting it while its model loads) is run again until it is back, and decodes the batch."""
    from framepipe.batch import _ray

    lives = ["restarting"] * (_ray.RETRIES + 1) + ["decode"]
    assert _FakeRay.stream([_FakeRay.Actor(*lives)], 3) == ["v0", "v1", "v2"]


def test_a_worker_that_found_the_queue_empty_takes_the_videos_a_dead_one_held(monkeypatch):
    """Without Ray: one actor's node dies while it holds a video, and Ray cannot restart it (no free
    CPU); the other had found the queue empty and ended before the driver put that video back. It
    is run again for it, rather than waiting for the dead one until it is given up."""
    from framepipe.batch import _ray

    monkeypatch.setattr(_ray, "UNAVAILABLE_S", 0.5)  # the old rule: given up a few seconds later, a video short
    actors = [_FakeRay.Actor("dies holding one", "restarting"), _FakeRay.Actor("decode")]
    assert _FakeRay.stream(actors, 4) == ["v0", "v1", "v2", "v3"]
