"""The shard format: a plain tar of ``key.ext`` members (WebDataset's layout) plus a JSON index.

The index holds, per shard, its name, size and SHA-256, and per sample its key and, for each
member, the extension, byte offset, size and a BLAKE2b content hash. So a reader finds any
sample without scanning, a cache can verify a whole shard, and any tar tool (or WebDataset)
still reads the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import DataError, ShardError

INDEX_NAME = "index.json"
FORMAT = "framepipe-shards/1"


def split_key(path: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name (a leading dot,
    as in ``.config.json``, belongs to the key, so a hidden file never has an empty key)."""
    folder, _, name = path.rpartition("/")
    hidden = "." if name.startswith(".") else ""
    stem, dot, ext = name[len(hidden) :].partition(".")
    stem = hidden + stem
    key = f"{folder}/{stem}" if folder else stem
    return key, ext if dot else ""


def content_hash(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass
class ShardInfo:
    """One shard: its file, and for each sample ``[key, [[ext, offset, size, hash], ...]]``."""

    name: str
    size: int
    sha256: str
    samples: list[list] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "samples": self.samples}

    @classmethod
    def from_json(cls, d: object, where: str) -> ShardInfo:
        """A shard entry of the index at ``where``, checked: a plain file name, sizes and offsets
        that are whole numbers inside the shard. ``DataError`` naming the file otherwise."""
        if not isinstance(d, dict) or not {"name", "size", "sha256", "samples"} <= d.keys():
            raise DataError(f"{where}: a shard entry lacks name, size, sha256 or samples: {str(d)[:120]}")
        name, size, sha256, samples = d["name"], d["size"], d["sha256"], d["samples"]
        if not isinstance(name, str) or not is_plain_name(name):
            raise DataError(f"{where}: shard name {name!r} is not a plain file name inside the dataset")
        if not _whole(size) or not isinstance(sha256, str) or not isinstance(samples, list):
            raise DataError(f"{where}: shard {name} has a malformed size, sha256 or samples")
        for sample in samples:
            if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[0], str)
                    and isinstance(sample[1], list)):  # fmt: skip
                raise DataError(f"{where}: shard {name} has a malformed sample entry: {str(sample)[:120]}")
            for member in sample[1]:
                ok = isinstance(member, list) and len(member) == 4 and isinstance(member[0], str)
                if not (ok and _whole(member[1]) and _whole(member[2]) and isinstance(member[3], str)):
                    raise DataError(f"{where}: shard {name}, sample {sample[0]}: malformed member {str(member)[:120]}")
                if member[1] + member[2] > size:
                    raise DataError(
                        f"{where}: shard {name}, sample {sample[0]}.{member[0]}: bytes {member[1]}-"
                        f"{member[1] + member[2]} lie outside the shard's {size} bytes"
                    )
        return cls(name, size, sha256, samples)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_plain_name(name: str) -> bool:
    """True for a file name with no folder part that stays inside its folder (no ``..``, no ``/``)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


@dataclass
class DatasetIndex:
    shards: list[ShardInfo]
    source: str = ""

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    def dumps(self) -> bytes:
        body = {"format": FORMAT, "source": self.source, "samples": self.num_samples,
                "shards": [s.to_json() for s in self.shards]}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> DatasetIndex:
        try:
            body = json.loads(data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            body = None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise DataError(f"{where}: not a framepipe index (expected JSON with format {FORMAT!r})")
        if not isinstance(body.get("shards"), list):
            raise DataError(f"{where}: the index has no list of shards")
        shards = [ShardInfo.from_json(s, where) for s in body["shards"]]
        names, keys = set(), set()
        for shard in shards:
            if shard.name in names:
                raise DataError(f"{where}: shard {shard.name} is listed twice")
            names.add(shard.name)
            for key, _ in shard.samples:
                if key in keys:
                    raise DataError(f"{where}: sample {key} is listed twice (in {shard.name})")
                keys.add(key)
        return cls(shards, str(body.get("source", "")))


def write_shard(path: Path, name: str, samples: Iterable[tuple[str, list[tuple[str, bytes]]]]) -> ShardInfo:
    """Write ``(key, [(ext, data), ...])`` samples to a tar at ``path``; return its index entry."""
    info = ShardInfo(name, 0, "")
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            entry = []
            for ext, data in members:
                member = tarfile.TarInfo(f"{key}.{ext}" if ext else key)
                member.size, member.mtime, member.mode = len(data), 0, 0o644
                header = member.tobuf(tar.format, tar.encoding, tar.errors)
                entry.append([ext, tar.offset + len(header), len(data), content_hash(data)])
                tar.addfile(member, io.BytesIO(data))
            info.samples.append([key, entry])
    info.size, info.sha256 = path.stat().st_size, file_sha256(path)
    return info


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def read_samples(path: Path, shard: ShardInfo, *, start: int = 0, verify: bool = False) -> Iterator[dict]:
    """Yield the shard's samples from ``start`` on as dicts ``{"__key__": key, ext: bytes, ...}``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors get the shard's name)
    except OSError as e:
        raise ShardError(shard.name, f"cannot open ({e.strerror})") from None
    with f:
        size = f.seek(0, 2)
        if size != shard.size:
            raise ShardError(shard.name, f"size {size} bytes, index says {shard.size}")
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for key, members in shard.samples[start:]:
                sample = {"__key__": key, "__shard__": shard.name}
                for ext, offset, length, digest in members:
                    blob = data[offset : offset + length]
                    if verify and content_hash(blob) != digest:
                        raise ShardError(shard.name, f"sample {key}.{ext} does not match its hash")
                    sample[ext] = blob
                yield sample


def read_tar_members(data: bytes, where: str) -> Iterator[tuple[str, bytes]]:
    """The regular files of a tar (a WebDataset shard, say), in order, as ``(path, bytes)``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise ShardError(where, f"not a readable tar ({e})") from None
