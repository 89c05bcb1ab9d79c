"""One video of a batch, decoded: the options every video shares and the journal entry it gives."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._accounting import GpuMeter
from .._api import decode
from .._errors import FramepipeError
from ..sinks import VideoSettings
from ._destination import fetch_latents
from ._plan import BatchTask


@dataclass(frozen=True)
class BatchOptions:
    """What every video of a batch shares: the model, the video settings, the decode options."""

    vae: str | None = None
    arch: str | None = None
    seed: int = 0
    video: VideoSettings = field(default_factory=VideoSettings)
    dtype: str = "float32"
    decoder: str = "framepipe"
    latent_format: str = "pipeline"
    mode: str = "async"
    slots: int = 2
    endpoint_url: str | None = None  # for s3:// latents and outputs (default: boto3's, e.g. AWS_ENDPOINT_URL)


def decode_task(task: BatchTask, destination, options: BatchOptions, vae, work: Path) -> dict[str, Any]:
    """Decode one task with a loaded ``vae`` into ``destination`` (``work``: this worker's scratch
    folder); the journal entry for it (``done`` or ``failed``), with the decode's GPU accounting."""
    entry: dict[str, Any] = {"name": task.name, "latents": task.latents, "started_at": round(time.time(), 3)}
    latents = None
    meter = GpuMeter(next(vae.parameters()).device)
    try:
        video = replace(options.video, **task.settings)
        latents = fetch_latents(task.latents, work, endpoint_url=options.endpoint_url)
        target = destination.target(task.name, work)
        meter.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once by the driver, not once per video
            result = decode(str(latents), target, vae=vae, video=video, mode=options.mode, decoder=options.decoder,
                            latent_format=options.latent_format, slots=options.slots)  # fmt: skip
        account = meter.stop()
        where, size, sha = destination.publish(task.name, target)
    except FramepipeError as e:
        return {**entry, "finished_at": round(time.time(), 3), "status": "failed", "error": str(e)}
    finally:
        meter.close()  # its sampler stopped, whether the decode ended or not
        if latents is not None and latents.parent == work:
            latents.unlink(missing_ok=True)
    return {
        **entry,
        "finished_at": round(time.time(), 3),
        "status": "done",
        "output": where,
        "bytes": size,
        "sha256": sha,
        "seconds": round(result.seconds, 4),
        "frames": result.total_frames,
        "fps": video.fps,
        "device": result.device,
        "account": account.to_dict(),
    }
