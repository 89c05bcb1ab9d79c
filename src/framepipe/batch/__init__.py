"""``framepipe batch``: decode many latent videos into one folder, losing nothing.

A journal in the output folder records each finished video (size, SHA-256) once it is in place, so
a re-run after any failure or ``kill -9`` skips what is done and decodes the rest; one worker
process per GPU asks the driver for one video at a time.
"""

from ._journal import JOURNAL_NAME, Journal, file_digest
from ._plan import BatchTask, plan_batch, read_manifest
from ._ray import RayDecoder
from ._run import BatchSummary, run_batch
from ._task import BatchOptions, decode_task

__all__ = [
    "JOURNAL_NAME",
    "BatchOptions",
    "BatchSummary",
    "BatchTask",
    "Journal",
    "RayDecoder",
    "decode_task",
    "file_digest",
    "plan_batch",
    "read_manifest",
    "run_batch",
]
