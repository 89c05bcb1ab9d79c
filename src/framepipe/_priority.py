"""Encoding at a lower CPU priority than decoding (opt-in; Linux's per-thread nice values).

When several encoders share the host's cores with the thread that launches the GPU's kernels,
that thread waits for a core and the GPU idles between kernels. Encoding threads at a higher nice
value still take every idle cycle, but give way to it. Priority changes only when work runs,
never which frames reach the encoder or with which settings.

A thread's nice value is inherited by the threads it creates, so an encoder opened on a lowered
thread runs all its own threads lowered too. An unprivileged process cannot raise a priority
again, so only threads that framepipe owns are ever lowered, never the caller's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_NICE = 19


def check_nice(nice: int) -> int:
    """``nice`` if it is a valid step (0 = unchanged, up to 19); a ``ValueError`` otherwise."""
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= MAX_NICE:
        raise ValueError(f"The encoders' nice value must be a whole number from 0 to {MAX_NICE}, got {nice!r}.")
    return nice


def lower_thread_priority(step: int) -> None:
    """Raise the calling thread's nice value by ``step`` (capped at 19). Linux only: elsewhere, or
    if the system refuses, nothing changes."""
    if step <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, thread) + step))


def call_at_lower_priority(fn: Callable[[], T], step: int) -> T:
    """``fn()`` on a short-lived thread ``step`` nice levels down, so that the threads it creates
    (an encoder's) inherit that priority; returns its result, or raises its exception, here."""
    if step <= 0:
        return fn()
    outcome: list = []

    def run() -> None:
        lower_thread_priority(step)
        try:
            outcome.append((True, fn()))
        except BaseException as e:
            outcome.append((False, e))

    helper = threading.Thread(target=run, name="framepipe-open", daemon=True)
    helper.start()
    helper.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
