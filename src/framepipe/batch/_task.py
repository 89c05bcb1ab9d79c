"""One video of a batch, decoded: the options every video shares and the journal entry it gives."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._api import decode
from .._errors import FramepipeError
from ..sinks import VideoSettings
from ._journal import file_digest
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


def output_path(outdir: Path, task: BatchTask) -> Path:
    return outdir / f"{task.name}.mp4"


def decode_task(task: BatchTask, outdir: Path, options: BatchOptions, vae) -> dict[str, Any]:
    """Decode one task with a loaded ``vae``; the journal entry for it (``done`` or ``failed``)."""
    output = output_path(outdir, task)
    entry: dict[str, Any] = {"name": task.name, "latents": task.latents}
    try:
        video = replace(options.video, **task.settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once by the driver, not once per video
            result = decode(task.latents, output, vae=vae, video=video, mode=options.mode, decoder=options.decoder,
                            latent_format=options.latent_format)  # fmt: skip
    except FramepipeError as e:
        return {**entry, "status": "failed", "error": str(e)}
    size, sha = file_digest(output)
    return {
        **entry,
        "status": "done",
        "output": str(output),
        "bytes": size,
        "sha256": sha,
        "seconds": round(result.seconds, 4),
        "frames": result.total_frames,
        "fps": video.fps,
        "device": result.device,
    }
