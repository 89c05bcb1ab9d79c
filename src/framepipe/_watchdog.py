"""The last resort for Ctrl-C and SIGTERM during one long operation.

Python runs a signal's handler only between bytecodes, so an interrupt that arrives while the main
thread is inside one long native call (a convolution of a huge frame on the CPU takes minutes)
waits for that call. The C-level handler still writes the signal to a wakeup fd at once; a watcher
thread reads it, and if the process has not ended ``grace_s`` seconds later, removes this
process's work in progress beside the outputs, says so in one line, and exits with the signal's
status. When the normal path (KeyboardInterrupt, outputs aborted) finishes first, it exits first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ._paths import remove_own_work

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


_state: dict[str, object] = {"folders": [], "installed": False}


def install(output_folders: Sequence[Path], *, grace_s: float = 5.0) -> None:
    """From the main thread, before the work: watch for SIGINT/SIGTERM as described above (once per
    process; a later call only changes the folders)."""
    _state["folders"] = [Path(f) for f in output_folders]
    if _state["installed"]:
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _state.update(installed=True, sockets=(reader, writer))  # the fd lives as long as the process

    def watch() -> None:
        while (data := reader.recv(1)) and data[0] not in EXIT_CODES:
            pass
        if not data:
            return
        time.sleep(grace_s)  # the normal path ends the process first when it can
        for folder in _state["folders"]:
            remove_own_work(folder)
        how = "interrupted" if data[0] == signal.SIGINT else "terminated"
        print(f"framepipe: {how} inside a long operation; its partial output was removed, nothing was "
              "written to the output path.", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(EXIT_CODES[data[0]])

    threading.Thread(target=watch, name="framepipe-interrupt-watchdog", daemon=True).start()


def die_with_parent() -> None:
    """Linux: have the kernel kill this worker process when its parent dies (``kill -9`` included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
