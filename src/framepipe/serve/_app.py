"""The HTTP API (FastAPI): submit latents, poll a job, fetch its MP4, scrape metrics.

POST /v1/jobs?fps=&crf=&preset=&latent_format=   body: a safetensors file of latents
     -> 202 {"id", "state", "status", "video"}; 413 too large, 422 not decodable, 429 queue full
GET  /v1/jobs/{id}        -> the job: state, times, frames, GPU accounting
GET  /v1/jobs/{id}/video  -> the MP4 once done (409 before, 404 unknown)
GET  /metrics             -> Prometheus text
GET  /healthz             -> {"ok": true}; 503 {"ok": false, "dead_workers": [...]} if a device's worker stopped
"""

import hmac  # no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._errors import FramepipeError, LatentsError, OutputError, SettingsError, TooLargeError
from .._latents import LATENT_FORMATS, check_latents, load_latents
from .._optional import require
from ..data._store import check_size, download_url
from ._jobs import STATES, Job, JobStore, QueueFull


def _metrics(store: JobStore):
    """A registry with the service's metrics, kept current by the store's listeners."""
    prom = require("prometheus_client", "serve")
    registry = prom.CollectorRegistry()
    jobs = prom.Gauge("framepipe_jobs", "Jobs by state", ["state"], registry=registry)
    finished = prom.Counter("framepipe_jobs_finished", "Jobs finished, by outcome", ["state"], registry=registry)
    prom.Gauge("framepipe_queue_depth", "Jobs waiting for a worker", registry=registry).set_function(store.queued)
    prom.Gauge("framepipe_frames_per_second", "Frames decoded per second of uptime", registry=registry).set_function(
        lambda: store.frames_done / max(time.time() - store.started_at, 1e-9)
    )
    prom.Gauge(
        "framepipe_gpu_busy_share", "Share of uptime the workers spent decoding, per device", registry=registry
    ).set_function(lambda: store.busy_seconds / max(time.time() - store.started_at, 1e-9) / len(store.options.devices))
    energy = {"joules": 0.0, "video_seconds": 0.0}

    def joules_per_video_second() -> float:
        return energy["joules"] / energy["video_seconds"] if energy["video_seconds"] else math.nan

    prom.Gauge(
        "framepipe_joules_per_video_second", "GPU energy per second of video (NaN: not measured)", registry=registry
    ).set_function(joules_per_video_second)

    def refresh() -> None:
        counts = {state: 0 for state in STATES}
        for j in list(store.jobs.values()):
            counts[j.state] += 1
        for state, n in counts.items():
            jobs.labels(state).set(n)

    def on_change(job: Job) -> None:
        refresh()
        if job.state in ("done", "failed"):
            finished.labels(job.state).inc()
        joules = (job.account or {}).get("energy_joules")
        if job.state == "done" and joules is not None and job.frames and job.fps:
            energy["joules"] += joules
            energy["video_seconds"] += job.frames / job.fps

    store.listeners.append(on_change)
    refresh()
    return prom, registry


def _fetch_named_latents(store: JobStore, incoming: Path) -> str | None:
    """A JSON body ``{"latents": PATH or s3://..., "output": s3://... (optional)}``: bring the named
    latents into ``incoming`` (replacing the JSON); the output URL, if any. HTTPException 422/403."""
    fastapi = require("fastapi", "serve")
    try:
        body = json.loads(incoming.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fastapi.HTTPException(422, f"The JSON body is not valid JSON ({e}).") from e
    if not isinstance(body, dict) or not isinstance(body.get("latents"), str) or set(body) - {"latents", "output"}:
        raise fastapi.HTTPException(422, 'Expected {"latents": PATH or s3://URL, "output": s3://URL (optional)}.')
    source, output = body["latents"], body.get("output")
    if output is not None and (not isinstance(output, str) or not output.startswith("s3://") or "/" not in output[5:]):
        raise fastapi.HTTPException(422, f"output must be an s3://BUCKET/KEY.mp4 URL, got {output!r}.")
    options = store.options
    try:
        if source.startswith("s3://"):
            download_url(source, incoming, endpoint_url=options.endpoint_url, max_bytes=options.max_body_bytes)
        else:
            root = Path(options.input_root).resolve() if options.input_root else None
            path = Path(source).resolve()
            if root is None or not path.is_relative_to(root):
                raise fastapi.HTTPException(403, "This service reads latents by path only under its --input-root.")
            check_size(source, path.stat().st_size, options.max_body_bytes)
            shutil.copyfile(path, incoming)
    except TooLargeError as e:
        raise fastapi.HTTPException(413, f"The latents are too large: {e}.") from e
    except FramepipeError as e:
        raise fastapi.HTTPException(422, f"Cannot read the latents: {e}") from e
    except OSError as e:
        raise fastapi.HTTPException(422, f"Cannot read the latents: {e.strerror or e}") from e
    return output


def create_app(store: JobStore, *, token: str | None = None):
    """The ASGI app over ``store`` (whose workers are started); ``token``: required as a bearer token."""
    fastapi = require("fastapi", "serve")
    responses = require("fastapi.responses", "serve")
    run_in_threadpool = require("starlette.concurrency", "serve").run_in_threadpool
    HTTPException, Request = fastapi.HTTPException, fastapi.Request
    prom, registry = _metrics(store)
    app = fastapi.FastAPI(title="framepipe", summary="Wan latents in, MP4 out, the GPU accounted per job")

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "A valid bearer token is needed (Authorization: Bearer ...).")

    def job_or_404(job_id: str) -> Job:
        job = store.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id!r}.")
        return job

    @app.post("/v1/jobs", status_code=202)
    async def submit(
        request: Request,
        fps: float | None = None,
        crf: int | None = None,
        preset: str | None = None,
        latent_format: str = "pipeline",
    ) -> dict[str, Any]:
        authorize(request)
        limit = store.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"The body is {int(declared)} bytes; this service takes at most {limit}.")
        settings = {k: v for k, v in {"fps": fps, "crf": crf, "preset": preset}.items() if v is not None}
        try:
            replace(store.options.video, **settings)
            if latent_format not in LATENT_FORMATS:
                raise SettingsError(f"latent_format must be one of {', '.join(LATENT_FORMATS)}, got {latent_format!r}.")
        except SettingsError as e:
            raise HTTPException(422, str(e)) from e
        incoming = store.incoming_path()
        output_url = None
        try:
            size = 0
            with open(incoming, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"The body is over {limit} bytes, the most this service takes.")
                    f.write(chunk)
            if size == 0:
                raise HTTPException(422, "The body is empty; send the latents as a safetensors file.")
            if request.headers.get("content-type", "").startswith("application/json"):
                output_url = await run_in_threadpool(_fetch_named_latents, store, incoming)
            try:
                latents = check_latents(load_latents(incoming), z_dim=store.z_dim)
            except LatentsError as e:
                raise HTTPException(422, str(e).replace(str(incoming), "the body")) from e
            b, _, t, h, w = latents.shape
            if b != 1:
                raise HTTPException(422, f"A job decodes one video; these latents hold {b}. Send one job per video.")
            if t > store.options.max_latent_frames or h * w > store.options.max_latent_pixels:
                raise HTTPException(
                    422,
                    f"Latents of shape {tuple(latents.shape)} are larger than this service takes "
                    f"(at most {store.options.max_latent_frames} latent frames and "
                    f"{store.options.max_latent_pixels} latent pixels per frame).",
                )
            job = store.submit(incoming, settings, latent_format, output_url)
        except QueueFull:
            raise HTTPException(429, "The queue is full; try again later.", headers={"Retry-After": "5"}) from None
        except OutputError as e:  # the state folder cannot take the job (disk full, permissions)
            raise HTTPException(503, f"The service cannot store the job: {e}") from e
        finally:
            incoming.unlink(missing_ok=True)
        return {"id": job.id, "state": job.state, "status": f"/v1/jobs/{job.id}", "video": f"/v1/jobs/{job.id}/video"}

    @app.get("/v1/jobs/{job_id}")
    def status(job_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return job_or_404(job_id).to_dict()

    @app.get("/v1/jobs/{job_id}/video")
    def video(job_id: str, request: Request):
        authorize(request)
        job = job_or_404(job_id)
        if job.state == "failed":
            raise HTTPException(409, f"Job {job_id} failed: {job.error}")
        if job.state != "done":
            raise HTTPException(409, f"Job {job_id} is {job.state}; poll /v1/jobs/{job_id} until it is done.")
        return responses.FileResponse(Path(store.video_path(job_id)), media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.get("/metrics")
    def metrics(request: Request):
        authorize(request)
        return responses.Response(prom.generate_latest(registry), media_type=prom.CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Any:
        if dead := store.dead_workers():  # its jobs would wait forever: take this instance out of rotation
            return responses.JSONResponse({"ok": False, "dead_workers": dead}, status_code=503)
        return {"ok": True}

    return app
