"""``framepipe serve``: a decode service. Latents in over HTTP, MP4 out, one pipeline per GPU
taking jobs from a bounded queue, every job journaled and its GPU use accounted (NVML)."""

from __future__ import annotations

from pathlib import Path

from .._accounting import GpuMeter, JobAccount
from .._optional import require
from ._app import create_app
from ._jobs import Job, JobStore, QueueFull, ServiceOptions


def serve(options: ServiceOptions, state_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None) -> None:  # fmt: skip
    """Start the workers (the VAE loaded on every device first), then serve until interrupted."""
    uvicorn = require("uvicorn", "serve")
    store = JobStore(Path(state_dir), options)
    store.start_workers()
    try:
        uvicorn.run(create_app(store, token=token), host=host, port=port, log_level="warning")
    finally:
        store.stop_workers()


__all__ = ["GpuMeter", "Job", "JobAccount", "JobStore", "QueueFull", "ServiceOptions", "create_app", "serve"]
