"""What a batch decodes: latent files from paths, folders, globs and manifests, one task each."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._errors import SettingsError
from ..sinks import VideoSettings

LATENT_SUFFIXES = (".safetensors", ".pt", ".npy")
MANIFEST_SUFFIXES = (".jsonl",)
#: What a manifest line may set besides ``latents`` and ``name``: video settings of that video.
PER_VIDEO_SETTINGS = ("fps", "crf", "preset")


@dataclass(frozen=True)
class BatchTask:
    """One video of a batch: its latent file, the output's name (``<name>.mp4`` in the output folder)
    and the video settings it changes (``fps``, ``crf``, ``preset``)."""

    latents: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"latents": self.latents, "name": self.name, **self.settings}


def plan_batch(inputs: Sequence[str], *, endpoint_url: str | None = None) -> list[BatchTask]:
    """The tasks for ``inputs``: latent files, folders (their latent files, recursively, sorted),
    glob patterns, ``.jsonl`` manifests (one JSON object per line: ``latents``, optional ``name``,
    ``fps``, ``crf``, ``preset``; relative paths are relative to the manifest), and ``s3://``
    latent objects or prefixes (their latent objects, sorted).

    ``SettingsError`` names what is wrong: an input that matches nothing, a manifest line that is
    not valid, two videos that would write the same output.
    """
    tasks: list[BatchTask] = []
    for text in inputs:
        path = Path(text)
        if text.startswith("s3://"):
            tasks += _object_tasks(text, endpoint_url)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in LATENT_SUFFIXES and p.is_file())
            if not found:
                raise SettingsError(f"No latent files ({', '.join(LATENT_SUFFIXES)}) in folder {text}.")
            tasks += [BatchTask(str(p), p.stem) for p in found]
        elif path.is_file() and path.suffix in MANIFEST_SUFFIXES:
            tasks += read_manifest(path)
        elif path.is_file():
            if path.suffix not in LATENT_SUFFIXES:
                raise SettingsError(
                    f"{text} is neither a latent file ({', '.join(LATENT_SUFFIXES)}) nor a manifest (.jsonl)."
                )
            tasks.append(BatchTask(str(path), path.stem))
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix in LATENT_SUFFIXES)
            if not found:
                raise SettingsError(f"No latent files match {text!r}.")
            tasks += [BatchTask(str(p), p.stem) for p in found]
        else:
            raise SettingsError(f"Input not found: {text}.")
    if not tasks:
        raise SettingsError("Nothing to decode: give latent files, folders, globs or a .jsonl manifest.")
    seen: dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise SettingsError(
                f"{seen[task.name]} and {task.latents} would both write {task.name}.mp4; "
                "rename one, or give names in a manifest."
            )
        seen[task.name] = task.latents
    return tasks


def read_manifest(path: Path) -> list[BatchTask]:
    """The tasks of a ``.jsonl`` manifest; ``SettingsError`` names the file and line of a bad entry."""
    tasks = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"Cannot read manifest {path}: {e}") from e
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise SettingsError(f"{where}: not a JSON object ({e.msg}).") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("latents"), str):
            raise SettingsError(f'{where}: expected an object with "latents": "path/to/latents.safetensors".')
        unknown = set(entry) - {"latents", "name", *PER_VIDEO_SETTINGS}
        if unknown:
            known = ", ".join(("latents", "name", *PER_VIDEO_SETTINGS))
            raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {known}.")
        latents = Path(entry["latents"])
        if entry["latents"].startswith("s3://"):
            latents = entry["latents"]  # a URL, as it is
        elif not latents.is_absolute():
            latents = path.parent / latents
        if Path(latents).suffix not in LATENT_SUFFIXES:
            raise SettingsError(f"{where}: {latents} is not a latent file ({', '.join(LATENT_SUFFIXES)}).")
        name = entry.get("name", Path(latents).stem)
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise SettingsError(f"{where}: name must be a plain file name without folders, got {name!r}.")
        settings = {k: entry[k] for k in PER_VIDEO_SETTINGS if k in entry}
        try:  # checked here, before any work, as VideoSettings checks them
            replace(VideoSettings(), **settings)
        except SettingsError as e:
            raise SettingsError(f"{where}: {e}") from e
        tasks.append(BatchTask(str(latents), name, settings))
    if not tasks:
        raise SettingsError(f"Manifest {path} lists no videos.")
    return tasks


def _object_tasks(url: str, endpoint_url: str | None) -> list[BatchTask]:
    """Tasks for an ``s3://`` latent object, or for every latent object under a prefix."""
    from ..data._store import open_store

    if Path(url).suffix in LATENT_SUFFIXES:
        return [BatchTask(url, Path(url).stem)]
    store = open_store(url, endpoint_url=endpoint_url)
    found = sorted(info.key for info in store.list() if Path(info.key).suffix in LATENT_SUFFIXES)
    if not found:
        raise SettingsError(f"No latent objects ({', '.join(LATENT_SUFFIXES)}) under {url}.")
    return [BatchTask(f"{store.url}/{key}", Path(key).stem) for key in found]
