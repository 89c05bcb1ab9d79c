"""The encoder process behind ``ProcessVideoSink``: run as a script, never imported by framepipe.

It loads ``framepipe._sinks`` without the package's ``__init__`` (which imports torch), so it
starts in a fraction of a second with PyAV and NumPy alone. Commands come on one pipe, replies go
on another (``multiprocessing.connection`` framing); frames arrive in a shared ring of frame
slots (a memory-mapped file), and each ``write`` command names the slots that hold them.

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


def _load_sinks():
    package = types.ModuleType("framepipe")
    package.__path__ = [str(Path(__file__).parent)]
    sys.modules.setdefault("framepipe", package)
    from framepipe._sinks import VideoFileSink

    return VideoFileSink


def serve(commands: Connection, replies: Connection) -> None:
    """Open, encode and close one video as told; any failure is sent back as ("error", type, message)."""
    sink = ring = settings = None
    try:
        _, settings = commands.recv()  # ("open", settings)
        if settings["nice"] and hasattr(os, "setpriority"):  # before any thread starts: they inherit it
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + settings["nice"]))
        import numpy as np

        with open(settings["ring"], "r+b") as f:
            ring = mmap.mmap(f.fileno(), settings["slots"] * settings["slot_bytes"])
        os.unlink(settings["ring"])  # mapped on both sides now: nothing is left to clean up if either dies
        shape = tuple(settings["frame_shape"])
        size = settings["slot_bytes"]
        slots = [np.ndarray(shape, np.uint8, buffer=ring, offset=i * size) for i in range(settings["slots"])]
        sink = _load_sinks()(settings["path"], **settings["options"])
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
                return
            else:  # "abort"
                sink.abort()
                return
    except EOFError:  # the parent went away without a word: drop the output and its private folder
        if sink is not None:
            sink.abort()
        if settings is not None:
            shutil.rmtree(Path(settings["path"]).parent, ignore_errors=True)
    except BaseException as e:
        if sink is not None:
            sink.abort()
        with contextlib.suppress(OSError):  # the parent may be gone too
            replies.send(("error", type(e).__name__, str(e)))


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it aborts us, or we see EOF
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
