"""Optional dependencies: the decoder's (``framepipe[video]``) and the bench's (``framepipe[bench]``).

``framepipe.data`` needs neither, so they are imported where they are used, through ``require``,
which names the install command when one is missing.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

from ._errors import MissingDependencyError

#: The distribution that provides each top-level module, where the names differ.
_DISTRIBUTIONS = {"av": "av (PyAV)", "PIL": "pillow"}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (dotted names too), or raise ``MissingDependencyError`` naming
    ``pip install 'framepipe[extra]'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise  # the module is there but something it imports is broken: not ours to hide
        name = _DISTRIBUTIONS.get(top, top)
        raise MissingDependencyError(
            f"{name} is not installed; this needs framepipe's {extra!r} extra: "
            f"pip install 'framepipe[{extra}]' (from a clone: pip install -e '.[{extra}]')."
        ) from e


@functools.cache
def exact_kernel(name: str) -> Callable | None:
    """The function ``name`` of ``_exact_kernels`` (Triton kernels, for CUDA tensors), None where Triton
    is not installed: the callers then run PyTorch's ops, the same bits. Looked up once a name."""
    try:
        kernels = importlib.import_module("._exact_kernels", __package__)
    except ImportError:
        return None
    return getattr(kernels, name)
