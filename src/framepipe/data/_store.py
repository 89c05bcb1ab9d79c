"""Where shards live: a local (or NFS) folder, or a bucket prefix on an S3-compatible object store.

Both stores speak in keys relative to the dataset's root. S3 goes through boto3; the endpoint
comes from ``endpoint_url``, else boto3's own ``AWS_ENDPOINT_URL`` and credential chain.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._errors import DataError, TooLargeError
from .._paths import is_work_in_progress, remove_path, temporary_sibling


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store(Protocol):
    """The few operations the data side needs from storage."""

    url: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def read(self, key: str) -> bytes: ...

    def download(self, key: str, path: Path, *, max_bytes: int | None = None) -> int: ...

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None: ...

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None) -> None: ...

    def exists(self, key: str) -> bool: ...

    def metadata(self, key: str) -> dict[str, str] | None: ...


def open_store(url: str | os.PathLike, *, endpoint_url: str | None = None) -> Store:
    """A store for ``s3://bucket/prefix`` or a local path."""
    text = os.fspath(url)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise DataError(f"{text}: no bucket name; write s3://BUCKET/PREFIX")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", bucket):
            raise DataError(f"{text}: {bucket!r} is not a valid bucket name (letters, digits, '.', '-', '_')")
        return S3Store(bucket, prefix.strip("/"), endpoint_url=endpoint_url)
    if "://" in text:
        raise DataError(f"{text}: unsupported URL scheme; use s3://BUCKET/PREFIX or a local path")
    return LocalStore(Path(text))


def open_destination(url: str | os.PathLike, *, endpoint_url: str | None = None) -> Store:
    """A store to write into: a folder, created if needed, or a bucket, created if it does not exist."""
    store = open_store(url, endpoint_url=endpoint_url)
    if isinstance(store, S3Store):
        store.ensure_bucket()
        return store
    root = store.root
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a folder; give a folder (or s3:// prefix) as the destination")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the destination folder ({e.strerror or e})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise DataError(f"{root}: no permission to write in the destination folder")
    return store


def download_url(url: str, path: Path, *, endpoint_url: str | None = None, max_bytes: int | None = None) -> int:
    """Get the object ``s3://bucket/key`` (or a file) into ``path``; its size. ``TooLargeError``
    (``path`` removed) for an object over ``max_bytes``."""
    parent, _, key = url.rpartition("/")
    return open_store(parent, endpoint_url=endpoint_url).download(key, path, max_bytes=max_bytes)


def check_size(url: str, size: int, max_bytes: int | None) -> None:
    """``TooLargeError`` when an object of ``size`` bytes is over ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise TooLargeError(f"{url} is {size} bytes, over the {max_bytes} allowed")


def upload_url(path: Path, url: str, *, endpoint_url: str | None = None) -> None:
    """Put the file at ``path`` to ``s3://bucket/key`` (the bucket created if missing)."""
    parent, _, key = url.rpartition("/")
    open_destination(parent, endpoint_url=endpoint_url).upload(path, key)


class LocalStore:
    """A folder; keys are relative POSIX paths. Writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        """``key``'s file, which must lie inside the store's folder (no absolute key, no ``..``)."""
        if not key:
            return self.root
        if key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/"):
            raise DataError(f"{key!r}: a key must name a file inside {self.root}; refused")
        return self.root / key

    def list(self, prefix: str = "", *, left_out: list[str] | None = None) -> Iterator[ObjectInfo]:
        """Every file under ``prefix``, hidden ones too, in a stable order; files that are writes
        in progress (``temporary_sibling``) are left out and, with ``left_out``, named there."""
        base = self._path(prefix)
        if base.is_file():
            yield ObjectInfo(prefix, base.stat().st_size)
            return
        if not base.is_dir():
            raise DataError(f"{base}: no such folder")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if is_work_in_progress(name) or not path.is_file():  # a write in progress; a dangling link
                    if left_out is not None:
                        left_out.append(key)
                    continue
                yield ObjectInfo(key, path.stat().st_size)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise DataError(f"{self._path(key)}: not found") from None

    def download(self, key: str, path: Path, *, max_bytes: int | None = None) -> int:
        source = self._path(key)
        try:
            check_size(str(source), source.stat().st_size, max_bytes)
            shutil.copyfile(source, path)
        except FileNotFoundError:
            raise DataError(f"{source}: not found") from None
        return path.stat().st_size

    @contextlib.contextmanager
    def _replacing(self, key: str) -> Iterator[Path]:
        """A temporary path beside ``key``'s file, renamed onto it if the block succeeds."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(target)
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            remove_path(tmp)

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        with self._replacing(key) as tmp:
            tmp.write_bytes(data)

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None) -> None:
        with self._replacing(key) as tmp:
            shutil.copyfile(path, tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def metadata(self, key: str) -> dict[str, str] | None:
        return {} if self._path(key).exists() else None


def s3_process_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for many small S3 requests (boto3 spends each mostly under the interpreter lock),
    started from a fresh single-threaded server: a child forked from a process with other threads
    (a progress bar's, Ray's) can inherit a lock one of them held and wait for it forever (seen in the
    test suite, 2026-11-30). The server imports the packing code and boto3 once, so that its children
    start with them (0.5-1 s of CPU a worker otherwise; 3.5 s when the package imported torch)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "framepipe.data._pack", "boto3"])  # no effect once it runs
    return ProcessPoolExecutor(workers, mp_context=context)


class S3Store:
    """A bucket prefix on S3 or any S3-compatible server (SeaweedFS, MinIO, ...)."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix, endpoint_url
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._client, self._pid = None, 0

    def __getstate__(self) -> dict:  # boto3 clients do not pickle; each process makes its own
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():  # a forked worker needs its own connections
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise DataError("s3:// needs boto3: pip install 'framepipe[data]'") from None
            # CRC checksums only where the API requires them: boto3's default (since 1.36) is not
            # implemented alike by every S3-compatible server; shard integrity is checked by SHA-256.
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=64,
                            request_checksum_calculation="when_required",
                            response_checksum_validation="when_required")  # fmt: skip
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
            self._pid = os.getpid()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise DataError(f"{self.url}/{what}: not found") from None
            if code == "NoSuchBucket":
                raise DataError(f"s3://{self.bucket}: no such bucket") from None
            message = e.response.get("Error", {}).get("Message", "")
            detail = f"{code} ({message.rstrip('.')})" if code and message else code or str(e)
            raise DataError(f"{self.url}/{what}: {detail}") from None
        except NoCredentialsError:
            raise DataError(
                f"{self.url}/{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"
            ) from None
        except BotoCoreError as e:
            raise DataError(f"{self.url}/{what}: {e}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]))

    def read(self, key: str) -> bytes:
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call(key, response["Body"].read)

    def download(self, key: str, path: Path, *, max_bytes: int | None = None) -> int:
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        url = f"s3://{self.bucket}/{self._key(key)}"
        size = 0
        try:
            check_size(url, int(response.get("ContentLength", 0)), max_bytes)
            with open(path, "wb") as f:
                for block in response["Body"].iter_chunks(1 << 20):
                    size += len(block)
                    check_size(url, size, max_bytes)  # a server that did not say, or said too little
                    f.write(block)
        except TooLargeError:
            response["Body"].close()
            path.unlink(missing_ok=True)
            raise
        return size

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                   Metadata=metadata or {})  # fmt: skip

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None) -> None:
        extra = {"Metadata": metadata} if metadata else None
        self._call(key, self.client.upload_file, str(path), self.bucket, self._key(key), ExtraArgs=extra)

    def exists(self, key: str) -> bool:
        return self.metadata(key) is not None

    def metadata(self, key: str) -> dict[str, str] | None:
        try:
            head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except DataError as e:
            if str(e).endswith("not found"):
                return None
            raise
        return dict(head.get("Metadata", {}))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (restore into a fresh bucket)."""
        try:
            self._call("", self.client.head_bucket, Bucket=self.bucket)
        except DataError as e:
            if not str(e).endswith(("not found", "no such bucket")):
                raise  # unreachable, no credentials, forbidden: say so rather than try to create it
            self._call("", self.client.create_bucket, Bucket=self.bucket)
