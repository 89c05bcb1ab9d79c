"""The encoder process behind ``ProcessVideoSink``: run as a script, never imported by framepipe.

It loads ``framepipe._sinks`` without the package's ``__init__`` (which imports torch), so it
starts in a fraction of a second with PyAV and NumPy alone. Commands come on one pipe, replies go
on another (``multiprocessing.connection`` framing); frames arrive in a shared ring of frame
slots (a memory-mapped file), and each ``write`` command names the slots that hold them. A worker
encodes one video after another until its commands end.

    python _encoder_child.py COMMAND_FD REPLY_FD
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import sys
import types
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np


def _load_sinks():
    package = types.ModuleType("framepipe")
    package.__path__ = [str(Path(__file__).parent)]
    sys.modules.setdefault("framepipe", package)
    from framepipe._sinks import VideoFileSink

    return VideoFileSink


def serve(commands: Connection, replies: Connection) -> None:
    """Encode videos as told until the commands end or one fails.

    The imports come first, so that a worker started ahead of need is ready the moment it is told
    to open a video."""
    import av  # noqa: F401  (now rather than at the first open)

    video_file_sink = _load_sinks()
    base = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
    while _one_video(commands, replies, video_file_sink, base):
        pass


def _one_video(commands: Connection, replies: Connection, video_file_sink, base: int) -> bool:
    """Open, encode and close one video; True if this worker can take another. Any failure is sent
    back as ("error", type, message) and ends the worker."""
    sink = ring = settings = None
    slots: list = []
    try:
        _, settings = commands.recv()  # ("open", settings)
        if hasattr(os, "setpriority"):  # before the encoder starts its threads: they inherit it
            target = min(19, base + settings["nice"])
            if target != os.getpriority(os.PRIO_PROCESS, 0):
                os.setpriority(os.PRIO_PROCESS, 0, target)
        with open(settings["ring"], "r+b") as f:
            ring = mmap.mmap(f.fileno(), settings["slots"] * settings["slot_bytes"])
        os.unlink(settings["ring"])  # mapped on both sides now: nothing is left to clean up if either dies
        shape, size = tuple(settings["frame_shape"]), settings["slot_bytes"]
        slots = [np.ndarray(shape, np.uint8, buffer=ring, offset=i * size) for i in range(settings["slots"])]
        sink = video_file_sink(settings["path"], **settings["options"])
        sink.open(frames=settings["frames"], height=settings["height"], width=settings["width"])
        replies.send(("opened",))
        while True:
            kind, *args = commands.recv()
            if kind == "write":
                for slot in args[0]:
                    sink.write(slots[slot][None])
                replies.send(("free", args[0]))
            elif kind == "close":
                sink.close()
                replies.send(("closed",))
                return True
            else:  # "abort"
                sink.abort()
                return True
    except EOFError:  # no more work; mid-video, the parent went away: drop the output and its folder
        if sink is not None:
            sink.abort()
        if settings is not None:
            shutil.rmtree(Path(settings["path"]).parent, ignore_errors=True)
        return False
    except BaseException as e:
        if sink is not None:
            sink.abort()
        with contextlib.suppress(OSError):  # the parent may be gone too
            replies.send(("error", type(e).__name__, str(e)))
        return False
    finally:
        slots.clear()  # the views go before the map they look into
        if ring is not None:
            with contextlib.suppress(BufferError):
                ring.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it aborts us, or we see EOF
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
