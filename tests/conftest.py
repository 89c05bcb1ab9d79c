import contextlib
import faulthandler
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from framepipe import random_vae

# Small Wan VAEs with the real structure (causal cache, 4x temporal; 8x / 16x patched spatial).
SMALL = {
    "wan2.1": dict(base_dim=8, z_dim=16),
    "wan2.2": dict(
        base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_spatial=16,
    ),
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    # Tests that use Ray in this process run last: a process forked after Ray's gRPC threads ran here
    # (a DataLoader worker, a process pool's) can hang; two such hangs were seen in the data tests.
    items.sort(key=lambda item: "ray" in item.keywords)  # a stable sort: the order is kept otherwise
    if torch.cuda.is_available() or os.environ.get("FAIL_WITHOUT_CUDA"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (set FAIL_WITHOUT_CUDA=1 to fail instead)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


# the slowest test takes about 20 s on CI's two cores; a slower machine may raise the limit
TEST_TIME_LIMIT_S = float(os.environ.get("FRAMEPIPE_TEST_TIME_LIMIT_S", "300"))


_TERMINAL: dict[str, int] = {}


_RUNNING_SINCE: list[float] = []  # when the current test started (time.monotonic), while one runs


def pytest_configure(config):
    _TERMINAL["stderr"] = os.dup(2)  # the real stderr (output capture is suspended here), for hang_guard
    # Inherited by every process forked from this one (a DataLoader worker): on SIGUSR1 it prints its
    # threads' stacks too, so a hang that waits on a child shows where the child is.
    faulthandler.register(signal.SIGUSR1, file=_TERMINAL["stderr"], all_threads=True)
    threading.Thread(target=_children_stacks_before_the_limit, name="hang-guard", daemon=True).start()


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux's /proc), children first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *_descendants(child)]
    return found


def _children_stacks_before_the_limit() -> None:
    """Five seconds before a test's time limit, ask its child processes for their stacks (SIGUSR1), then
    end them (the session's S3 server too): the hung test then fails, or the run ends at the limit,
    and no child is left behind holding CI's output open."""
    while True:
        time.sleep(1)
        if _RUNNING_SINCE and time.monotonic() - _RUNNING_SINCE[0] > TEST_TIME_LIMIT_S - 5:
            _RUNNING_SINCE.clear()
            children = _descendants(os.getpid())
            for sent in (signal.SIGUSR1, signal.SIGKILL):
                for child in children:
                    with contextlib.suppress(OSError):
                        os.kill(child, sent)
                time.sleep(2)


@pytest.fixture(autouse=True)
def hang_guard():
    """A test that hangs prints every thread's stack, its child processes' too, and ends the run,
    instead of holding CI until its time limit with nothing to show for it."""
    faulthandler.dump_traceback_later(TEST_TIME_LIMIT_S, exit=True, file=_TERMINAL.get("stderr", 2))
    _RUNNING_SINCE[:] = [time.monotonic()]
    yield
    _RUNNING_SINCE.clear()
    faulthandler.cancel_dump_traceback_later()


def small_vae(version: str, seed: int = 0, **config):
    """A small AutoencoderKLWan of ``version`` with seeded weights and Wan's latent statistics
    (``config``: its sizes changed, e.g. ``base_dim``)."""
    from diffusers import AutoencoderKLWan

    from framepipe._models import ARCHITECTURES

    stats = {k: ARCHITECTURES[version][k] for k in ("latents_mean", "latents_std") if k in ARCHITECTURES[version]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(**(SMALL[version] | config), **stats).eval().requires_grad_(False)


def small_latents(version: str, *, batch=1, frames=3, height=4, width=6, seed=1) -> torch.Tensor:
    z = 16 if version == "wan2.1" else 48
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, z, frames, height, width, generator=g)


@pytest.fixture(params=["wan2.1", "wan2.2"])
def version(request):
    return request.param


@pytest.fixture
def no_thread_leak():
    """No thread the test started still runs a few seconds after it: threads that end on their own a
    moment later (multiprocessing's queue feeders, after a DataLoader closes its queues) are no leak."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    for thread in [t for t in threading.enumerate() if t.ident not in before]:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


__all__ = ["SMALL", "random_vae", "small_latents", "small_vae"]


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only file system (a tmpfs mounted ro) at ``tmp_path/ro``; skipped where mounting needs root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a read-only file system needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server (SeaweedFS) on loopback for the whole test session."""
    from framepipe.data._seaweed import LocalS3, use_local_credentials

    use_local_credentials()
    with LocalS3() as endpoint:
        yield endpoint
