"""framepipe serve, tested as a client would: a real server on loopback, a real HTTP client."""

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time

import av
import pytest
import torch
from safetensors.torch import save, save_file

from conftest import small_latents, small_vae
from helpers import framepipe_command

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from framepipe.serve import JobStore, ServiceOptions, create_app  # noqa: E402
from framepipe.sinks import VideoSettings  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(frames=3, **kwargs) -> bytes:
    return save({"latents": small_latents("wan2.1", frames=frames, **kwargs)})


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    small_vae("wan2.1").save_pretrained(folder)
    return folder


class Server:
    """The service in this process: JobStore + workers + uvicorn on a free loopback port."""

    def __init__(self, state_dir, options, token=None):
        self.store = JobStore(state_dir, options)
        self.store.start_workers()
        self.port = _free_port()
        config = uvicorn.Config(create_app(self.store, token=token), host="127.0.0.1", port=self.port,
                                log_level="warning")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join()
        self.store.stop_workers()


@pytest.fixture
def server(tmp_path, vae_folder):
    options = ServiceOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast"), max_queue=2,
                             max_body_bytes=64 * 1024, max_latent_frames=8)  # fmt: skip
    s = Server(tmp_path / "state", options)
    yield s
    s.stop()


def _wait(client, job_id, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _frames(data: bytes):
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


def test_submit_poll_fetch_and_metrics(server):
    with httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/jobs", params={"fps": 24}, content=_body())
        assert answer.status_code == 202, answer.text
        job = _wait(client, answer.json()["id"])
        assert job["state"] == "done" and job["frames"] == 9 and job["fps"] == 24
        assert job["account"] == {"gpu_seconds": None, "sm_utilization_mean": None, "sm_utilization_peak": None,
                                  "peak_memory_bytes": None, "energy_joules": None}  # CPU: not measured  # fmt: skip
        assert "joules_per_video_second" not in job
        video = client.get(answer.json()["video"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert _frames(video.content) == (9, 24.0)
        metrics = client.get("/metrics").text
        assert 'framepipe_jobs{state="done"} 1.0' in metrics
        assert "framepipe_queue_depth 0.0" in metrics
        assert "framepipe_joules_per_video_second NaN" in metrics  # not measured, never zero
        assert client.get("/healthz").json() == {"ok": True}


@pytest.mark.parametrize(
    "body, params, code, words",
    [
        (b"", {}, 422, "empty"),
        (b"garbage" * 10, {}, 422, "not a valid safetensors file"),
        (save({"latents": torch.zeros(4, 3, 4, 6)}), {}, 422, "expects 16"),
        (save({"latents": small_latents("wan2.1", frames=12)}), {}, 422, "at most 8 latent frames"),
        (save({"latents": torch.full((16, 2, 4, 6), float("nan"))}), {}, 422, "NaN"),
        (None, {"fps": "inf"}, 422, "fps"),
        (None, {"latent_format": "odd"}, 422, "latent_format"),
        (b"x" * (65 * 1024), {}, 413, "at most"),
    ],
)
def test_bad_requests_get_clear_4xx_and_leave_nothing(server, body, params, code, words):
    with httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/jobs", params=params, content=_body() if body is None else body)
        assert answer.status_code == code, answer.text
        assert words in answer.json()["detail"]
        assert client.get("/v1/jobs/nope").status_code == 404
    assert list((server.store.dir / "latents").iterdir()) == []  # nothing half-written
    assert server.store.jobs == {}


def test_a_full_queue_answers_429(tmp_path, vae_folder):
    options = ServiceOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast"), max_queue=1)
    s = Server(tmp_path / "state", options)
    try:
        with httpx.Client(base_url=s.url) as client:
            codes = [
                client.post("/v1/jobs", content=_body(frames=8, height=12, width=16)).status_code for _ in range(4)
            ]
            assert codes[0] == 202 and 429 in codes  # one running, one waiting, the rest refused
            refused = client.post("/v1/jobs", content=_body())
            if refused.status_code == 429:
                assert refused.headers["retry-after"] == "5"
            for job_id in list(s.store.jobs):
                assert _wait(client, job_id)["state"] == "done"
    finally:
        s.stop()


def test_a_journal_that_cannot_be_written_answers_503_and_keeps_nothing(tmp_path, vae_folder):
    s = Server(tmp_path / "state", ServiceOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast")))
    try:
        s.store.journal.unlink(missing_ok=True)
        s.store.journal.mkdir()  # appending to it fails as a full or read-only disk would
        with httpx.Client(base_url=s.url) as client:
            answer = client.post("/v1/jobs", content=_body())
            assert answer.status_code == 503 and "Cannot journal the job" in answer.json()["detail"]
            assert list((s.store.dir / "latents").iterdir()) == [] and s.store.jobs == {}
            s.store.journal.rmdir()
            job = client.post("/v1/jobs", content=_body()).json()
            assert _wait(client, job["id"])["state"] == "done"
    finally:
        s.stop()


def test_healthz_says_when_a_device_worker_has_stopped(tmp_path, vae_folder, monkeypatch):
    from framepipe.serve import _jobs

    class Broken(_jobs.DeviceWorker):
        def run(self):
            raise RuntimeError("a bug in the worker (a test)")

    s = Server(tmp_path / "state", ServiceOptions(vae=str(vae_folder)))
    try:
        assert httpx.get(f"{s.url}/healthz").json() == {"ok": True}
    finally:
        s.stop()
    monkeypatch.setattr(_jobs, "DeviceWorker", Broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # quiet: a real one prints its traceback
    s = Server(tmp_path / "state2", ServiceOptions(vae=str(vae_folder)))
    try:
        for thread in s.store.workers.values():
            thread.join(timeout=30)
        with httpx.Client(base_url=s.url) as client:
            answer = client.get("/healthz")
            assert answer.status_code == 503 and answer.json() == {"ok": False, "dead_workers": ["cpu"]}
    finally:
        s.stop()


def test_bearer_token(tmp_path, vae_folder):
    s = Server(tmp_path / "state", ServiceOptions(vae=str(vae_folder)), token="s3cret")
    try:
        with httpx.Client(base_url=s.url) as client:
            assert client.post("/v1/jobs", content=_body()).status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = client.post("/v1/jobs", content=_body(), headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 202
            assert client.get("/healthz").status_code == 200  # health needs no token
    finally:
        s.stop()


def test_a_restarted_service_finishes_every_accepted_job(tmp_path, vae_folder):
    """The service is killed (SIGKILL) with jobs queued and running, then started again."""
    port = _free_port()
    command = framepipe_command("serve", "--vae", vae_folder, "--port", port, "--state-dir", tmp_path / "state",
                                "--preset", "ultrafast", "--device", "cpu")  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    url = f"http://127.0.0.1:{port}"

    def start():
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    return process
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("the service did not start")

    process = start()
    ids = [httpx.post(f"{url}/v1/jobs", content=_body(frames=6, seed=i)).json()["id"] for i in range(3)]
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    journal = [json.loads(line) for line in (tmp_path / "state" / "jobs.jsonl").read_text().splitlines()]
    assert {e["id"] for e in journal} == set(ids)
    process = start()
    try:
        with httpx.Client(base_url=url) as client:
            for job_id in ids:
                assert _wait(client, job_id)["state"] == "done"
                assert _frames(client.get(f"/v1/jobs/{job_id}/video").content)[0] == 21
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_save_file_bodies_from_disk_too(server, tmp_path):
    save_file({"latents": small_latents("wan2.1")}, tmp_path / "z.safetensors")
    with httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/jobs", content=(tmp_path / "z.safetensors").read_bytes())
        assert _wait(client, answer.json()["id"])["state"] == "done"


def test_serve_command_line_refusals(capsys, monkeypatch, tmp_path):
    from framepipe.cli import main

    (tmp_path / "a-file").write_text("")
    assert main(["serve", "--state-dir", str(tmp_path / "a-file")]) == 1  # was a NotADirectoryError traceback
    assert "Cannot keep the service's state in" in capsys.readouterr().err
    assert main(["serve", "--input-root", str(tmp_path / "nothing-here"), "--state-dir", str(tmp_path / "s")]) == 1
    assert "nothing-here: no such folder" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    assert main(["serve", "--token-env", "NO_SUCH_TOKEN"]) == 1
    assert "error: --token-env NO_SUCH_TOKEN: that environment variable is empty or not set." in capsys.readouterr().err
    assert main(["serve", "--gpus", "all"]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err


def test_latents_by_path_and_s3_with_an_s3_output(tmp_path, vae_folder, s3_endpoint):
    from framepipe.data._store import open_destination

    (tmp_path / "inputs").mkdir()
    save_file({"latents": small_latents("wan2.1")}, tmp_path / "inputs" / "z.safetensors")
    save_file({"latents": small_latents("wan2.1")}, tmp_path / "outside.safetensors")
    bucket = open_destination("s3://fp-serve/in", endpoint_url=s3_endpoint)
    bucket.upload(tmp_path / "inputs" / "z.safetensors", "z.safetensors")
    options = ServiceOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast"),
                             input_root=str(tmp_path / "inputs"), endpoint_url=s3_endpoint)  # fmt: skip
    s = Server(tmp_path / "state", options)
    try:
        with httpx.Client(base_url=s.url) as client:
            by_path = client.post("/v1/jobs", json={"latents": str(tmp_path / "inputs" / "z.safetensors")})
            assert by_path.status_code == 202, by_path.text
            by_url = client.post("/v1/jobs", json={"latents": "s3://fp-serve/in/z.safetensors",
                                                   "output": "s3://fp-serve/out/z.mp4"})  # fmt: skip
            assert by_url.status_code == 202, by_url.text
            for answer in (by_path, by_url):
                assert _wait(client, answer.json()["id"])["state"] == "done"
            uploaded = open_destination("s3://fp-serve/out", endpoint_url=s3_endpoint).read("z.mp4")
            assert uploaded == client.get(by_url.json()["video"]).content and _frames(uploaded)[0] == 9
            outside = client.post("/v1/jobs", json={"latents": str(tmp_path / "outside.safetensors")})
            assert outside.status_code == 403
            missing = client.post("/v1/jobs", json={"latents": "s3://fp-serve/in/none.safetensors"})
            assert missing.status_code == 422 and "not found" in missing.json()["detail"]
            bad = client.post("/v1/jobs", json={"latents": "x", "output": "/tmp/x.mp4"})
            assert bad.status_code == 422 and "s3://" in bad.json()["detail"]
    finally:
        s.stop()
    assert [p.name for p in (tmp_path / "state" / "latents").iterdir()] == []


def _store_with_jobs(tmp_path, vae_folder, shapes, **options):
    """A store (workers not started yet) holding one queued job per (frames, height, width)."""
    store = JobStore(tmp_path / "state", ServiceOptions(vae=str(vae_folder), video=VideoSettings(preset="ultrafast"),
                                                        **options))  # fmt: skip
    ids = []
    for i, (frames, height, width) in enumerate(shapes):
        save_file({"latents": small_latents("wan2.1", frames=frames, height=height, width=width, seed=i)},
                  tmp_path / "in.safetensors")  # fmt: skip
        ids.append(store.submit(tmp_path / "in.safetensors", {}, "pipeline").id)
    return store, ids


def _finish(store, ids, timeout=120):
    end = time.time() + timeout
    while any(store.jobs[i].state in ("queued", "running") for i in ids):
        assert time.time() < end, "the jobs did not finish"
        time.sleep(0.05)
    return [store.jobs[i] for i in ids]


def test_consecutive_jobs_of_one_size_flow_through_one_stream(tmp_path, vae_folder, monkeypatch):
    from framepipe import _device_worker as _stream

    streams, run_async = [], _stream.run_async

    def counting(jobs, **kwargs):
        streams.append(kwargs["geometry"].height)
        return run_async(jobs, **kwargs)

    monkeypatch.setattr(_stream, "run_async", counting)
    store, ids = _store_with_jobs(tmp_path, vae_folder, [(3, 4, 6), (2, 4, 6), (3, 6, 6), (4, 4, 6), (3, 4, 6)])
    store.start_workers()
    try:
        jobs = _finish(store, ids)
    finally:
        store.stop_workers()
    assert [j.state for j in jobs] == ["done"] * 5
    assert [j.frames for j in jobs] == [9, 5, 9, 13, 9]
    assert streams == [32, 48, 32]  # a job of another size starts a new stream; the rest share theirs
    for job in jobs:
        with av.open(str(store.video_path(job.id))) as container:
            assert sum(1 for _ in container.decode(video=0)) == job.frames


def test_a_job_that_breaks_its_stream_fails_alone(tmp_path, vae_folder, monkeypatch):
    """A job fails midway through its decode: the stream's other jobs are run again and succeed."""
    from framepipe import _device_worker as _stream
    from framepipe._errors import CheckpointError

    decode_chunks = _stream.decode_chunks

    def failing_on_two_frames(vae, latents, **kwargs):
        for index, chunk in enumerate(decode_chunks(vae, latents, **kwargs)):
            if latents.shape[2:] == (2, 4, 6) and latents.any() and index == 1:  # a job's, not a warm-up (zeros)
                raise CheckpointError("The VAE decoded NaN (a test).")
            yield chunk

    monkeypatch.setattr(_stream, "decode_chunks", failing_on_two_frames)
    store, ids = _store_with_jobs(tmp_path, vae_folder, [(3, 4, 6), (2, 4, 6), (3, 4, 6)])
    store.start_workers()
    try:
        jobs = _finish(store, ids)
    finally:
        store.stop_workers()
    assert [j.state for j in jobs] == ["done", "failed", "done"]
    assert jobs[1].error == "The VAE decoded NaN (a test)."
    assert not store.video_path(ids[1]).exists() and store.video_path(ids[2]).exists()
    videos = sorted(p.name for p in store.video_path(ids[0]).parent.iterdir())
    assert videos == sorted([f"{ids[0]}.mp4", f"{ids[2]}.mp4"])  # nothing half-written


def test_finished_jobs_expire_with_their_videos(tmp_path, vae_folder):
    store, ids = _store_with_jobs(tmp_path, vae_folder, [(3, 4, 6), (3, 4, 6)], keep_seconds=3600)
    store.start_workers()
    try:
        _finish(store, ids)
        assert store.expire() == 0
        store.jobs[ids[0]].finished -= 3601  # as if it had ended an hour ago
        assert store.expire() == 1
    finally:
        store.stop_workers()
    assert not store.video_path(ids[0]).exists() and store.video_path(ids[1]).exists()
    assert set(JobStore(tmp_path / "state", store.options).jobs) == {ids[1]}  # a restart remembers
    with pytest.raises(SystemExit):
        from framepipe.cli import main

        main(["serve", "--keep-hours", "-1"])


def test_named_latents_over_the_size_limit_get_413(tmp_path, vae_folder, s3_endpoint):
    from framepipe.data._store import open_destination

    (tmp_path / "inputs").mkdir()
    save_file({"latents": small_latents("wan2.1", frames=8)}, tmp_path / "inputs" / "big.safetensors")
    open_destination("s3://fp-big/in", endpoint_url=s3_endpoint).upload(tmp_path / "inputs" / "big.safetensors", "b")
    options = ServiceOptions(vae=str(vae_folder), input_root=str(tmp_path / "inputs"), endpoint_url=s3_endpoint,
                             max_body_bytes=4096)  # fmt: skip
    s = Server(tmp_path / "state", options)
    try:
        with httpx.Client(base_url=s.url) as client:
            for name in (str(tmp_path / "inputs" / "big.safetensors"), "s3://fp-big/in/b"):
                answer = client.post("/v1/jobs", json={"latents": name})
                assert answer.status_code == 413 and "over the 4096 allowed" in answer.json()["detail"], answer.text
            two = client.post("/v1/jobs", content=save({"latents": small_latents("wan2.1", batch=2, frames=1)}))
            assert two.status_code == 422 and "one video" in two.json()["detail"]
    finally:
        s.stop()
    assert list((tmp_path / "state" / "latents").iterdir()) == [] and s.store.jobs == {}
