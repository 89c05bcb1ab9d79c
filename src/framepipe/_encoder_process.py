"""Encode in a worker process (opt-in): the encoder never competes for this interpreter's lock.

An encoder on a Python thread takes the interpreter lock for every frame it wraps and every
packet it muxes, and the thread that launches the GPU's kernels then waits for it. Here each video
(or segment) is encoded by a small worker process (``_encoder_child.py``: PyAV and NumPy, no
torch), and this side only copies frames into a ring of shared frame slots and sends slot
numbers. The encoder and its settings are the same as ``VideoFileSink``'s, so the file is the
same too. A worker that finished a video goes back to a pool (``SPARES``) and encodes the next
one, so a stream of videos or segments does not start a process each time.

Note [Process sinks clean up after themselves]: the worker encodes into a private folder beside
the output, and only ``close`` moves the finished file into place. If the worker fails or dies, or
``abort`` is called, the folder is removed here and the worker is ended; if this process dies,
the worker sees its commands end and removes the folder itself. The ring's name is unlinked as
soon as both sides have mapped it. So nothing is left half-written, and idle workers end with
this process.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ._errors import EncoderError, OutputError
from ._frames import frame_shape
from ._sinks import VideoFileSink, _check_frames, _check_parent, _sibling_folder

_CHILD = Path(__file__).with_name("_encoder_child.py")
_ERRORS = {"EncoderError": EncoderError, "OutputError": OutputError}


class _Worker:
    """One encoder process and its two pipes: commands go in, replies come out. ``nice`` is how
    far it has lowered itself, which it cannot undo."""

    def __init__(self) -> None:
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        try:
            # -P: the child's folder (framepipe's own) must not shadow modules on sys.path
            self.process = subprocess.Popen(
                [sys.executable, "-P", str(_CHILD), str(command_read), str(reply_write)],
                pass_fds=(command_read, reply_write), stdin=subprocess.DEVNULL, close_fds=True,
                env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},  # NumPy needs no pool here
            )  # fmt: skip
        except BaseException:
            for fd in (command_write, reply_read):
                os.close(fd)
            raise
        finally:
            os.close(command_read)
            os.close(reply_write)
        self.commands = Connection(command_write, readable=False)
        self.replies = Connection(reply_read, writable=False)
        self.nice = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        """End the worker: the end of its commands ends it (killed if it does not go)."""
        self.commands.close()
        self.replies.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Spares:
    """Idle encoder workers: ones that finished a video, and ones started ahead of need, so that a
    worker's start (Python and its imports, about 0.15 s of a core) happens once, not per video."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def take(self, nice: int = 0) -> _Worker:
        """An idle worker that can run at ``nice`` (one never lowered further), or a new one."""
        with self._lock:
            for worker in [w for w in self._idle if not w.alive()]:
                self._idle.remove(worker)
                worker.end()
            fits = [w for w in self._idle if w.nice == nice] or [w for w in self._idle if w.nice < nice]
            if fits:
                self._idle.remove(fits[-1])
                return fits[-1]
        return _Worker()

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def reserve(self, count: int) -> None:
        """Start workers until ``count`` are idle (for segments, which open several at once)."""
        with self._lock:
            while len(self._idle) < count:
                self._idle.append(_Worker())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.end()


SPARES = _Spares()


def _ring_folder() -> str | None:
    """Shared memory where Linux has it, so the ring never reaches a disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class ProcessVideoSink:
    """``VideoFileSink`` run in a worker process; same arguments, same file (opt-in; POSIX systems).

    Args:
        path, fps, codec, crf, preset, pix_fmt, options, frame_format, nice: as for ``VideoFileSink``
            (with ``nice``, the whole worker process runs that many levels lower).
        slots: frames the shared ring holds; ``write`` waits for a free slot when the encoder is
            behind, which bounds host memory and passes back-pressure to the pipeline.
    """

    def __init__(self, path: str | os.PathLike[str], *, slots: int = 8, **video_options) -> None:
        self.path = Path(path)
        probe = VideoFileSink(self.path, **video_options)  # bad settings fail here, as they do there
        self.frame_format, self.nice = probe.frame_format, probe.nice
        self.video_options = {k: v for k, v in video_options.items() if k != "nice"}  # the worker is lowered
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}.")
        self.slots = slots
        self._worker: _Worker | None = None
        self._dir: Path | None = None
        self._ring: mmap.mmap | None = None
        self._ring_path: str | None = None
        self._slot_views: list[np.ndarray] = []
        self._free: list[int] = []
        self._closed = False

    def open(self, *, frames: int, height: int, width: int) -> None:
        _check_parent(self.path)
        self._height, self._width = height, width
        shape = frame_shape(self.frame_format, height, width)
        slot_bytes = int(np.prod(shape))
        self._dir = _sibling_folder(self.path, ".encoding")
        try:
            fd, self._ring_path = tempfile.mkstemp(prefix="framepipe-ring-", dir=_ring_folder())
            with os.fdopen(fd, "r+b") as f:
                f.truncate(self.slots * slot_bytes)
                self._ring = mmap.mmap(f.fileno(), self.slots * slot_bytes)
            self._slot_views = [
                np.ndarray(shape, np.uint8, buffer=self._ring, offset=i * slot_bytes) for i in range(self.slots)
            ]
            self._free = list(range(self.slots))
            self._worker = SPARES.take(self.nice)
            self._worker.nice = self.nice
            settings = {"path": str(self._dir / f"out{self.path.suffix}"), "options": self.video_options,
                        "nice": self.nice, "ring": self._ring_path, "slots": self.slots, "slot_bytes": slot_bytes,
                        "frame_shape": shape, "frames": frames, "height": height, "width": width}  # fmt: skip
            self._send(("open", settings))  # the answer is read with the first write: opening overlaps the decode
        except BaseException:
            self.abort()
            raise

    def _send(self, message: tuple) -> None:
        try:
            self._worker.commands.send(message)
        except OSError:  # the worker is gone; its last words say why
            self._receive(block=True)
            raise EncoderError(f"The encoder process for {self.path} ended unexpectedly.") from None

    def _receive(self, *, block: bool) -> tuple | None:
        """One reply (waiting for it if ``block``); an error reply is raised as ours."""
        if not block and not self._worker.replies.poll():
            return None
        try:
            reply = self._worker.replies.recv()
        except (EOFError, OSError):
            code = self._worker.process.wait()
            raise EncoderError(f"The encoder process for {self.path} ended unexpectedly (exit code {code}).") from None
        if reply[0] == "error":
            raise _ERRORS.get(reply[1], EncoderError)(reply[2])
        if reply[0] == "opened":  # the worker has mapped the ring: its name is no longer needed
            self._unlink_ring()
        elif reply[0] == "free":
            self._free.extend(reply[1])
        return reply

    def _checked(self, fn, *args):
        try:
            return fn(*args)
        except BaseException:
            self.abort()
            raise

    def write(self, frames: np.ndarray) -> None:
        if self._worker is None or self._closed:
            raise RuntimeError("This sink is not open; call open() first.")
        _check_frames(frames, self._height, self._width, self.frame_format)
        self._checked(self._write, frames)

    def _write(self, frames: np.ndarray) -> None:
        while self._receive(block=False) is not None:  # collect freed slots, and errors early
            pass
        start = 0
        while start < len(frames):
            while not self._free:
                self._receive(block=True)
            batch = self._free[: len(frames) - start]
            del self._free[: len(batch)]
            for slot, frame in zip(batch, frames[start : start + len(batch)], strict=True):
                np.copyto(self._slot_views[slot], frame)  # see Note [Sinks do not keep frames]
            self._send(("write", batch))
            start += len(batch)

    def close(self) -> None:
        if self._closed or self._worker is None:
            return
        self._checked(self._close)

    def _close(self) -> None:
        self._send(("close",))
        while self._receive(block=True)[0] != "closed":
            pass
        os.replace(self._dir / f"out{self.path.suffix}", self.path)  # the same file system: atomic
        worker, self._worker = self._worker, None
        SPARES.give_back(worker)
        self._release()
        self._closed = True

    def abort(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            if worker.alive():
                with contextlib.suppress(OSError):
                    worker.commands.send(("abort",))  # it drops its partial file, then sees its commands end
            worker.end()
        self._release()
        self._closed = True

    def _release(self) -> None:
        self._slot_views = []
        if self._ring is not None:
            with contextlib.suppress(BufferError):
                self._ring.close()
            self._ring = None
        self._unlink_ring()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _unlink_ring(self) -> None:
        if self._ring_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._ring_path)
            self._ring_path = None
