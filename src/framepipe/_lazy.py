"""A package's public names imported at first use (PEP 562): ``framepipe`` and ``framepipe.data`` give
theirs so, and so the command line's help, the data commands and their worker processes start
without importing torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def public_names(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """``package``'s ``__getattr__`` and ``__dir__``: ``modules`` maps each module (relative to the
    package) to the public names it owns; a name's module is imported when the name is first asked for."""
    owners = {name: module for module, names in modules.items() for name in names}
    namespace = sys.modules[package].__dict__

    def get(name: str) -> object:
        if name not in owners:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(owners[name], package), name)
        namespace[name] = value  # found directly from now on
        return value

    def names() -> list[str]:
        return sorted({*namespace, *owners})

    return get, names
