"""Append-only JSON-lines journals that survive a kill (the batch's and the service's).

Each appended line is flushed and fsynced before the call returns. A process killed during an
append leaves a torn last line; reading cuts it off the file, so later appends start on a line
of their own, and skips any line that is not a JSON object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, in order ([] if it does not exist); cuts a torn last line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        os.truncate(path, len(data))
    entries = []
    for line in data.decode().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def append_jsonl(path: Path, entry: dict[str, Any], *, durable: bool = True) -> None:
    """Append ``entry`` as one line and make it durable (OSError if it cannot be written); with
    ``durable=False`` it is only handed to the OS, for a line whose loss a restart does not mind."""
    with open(path, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        if durable:
            os.fsync(f.fileno())
