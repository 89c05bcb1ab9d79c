"""framepipe's data side: feed training GPUs from millions of small files.

Pack small files into tar shards with an index (``pack``), stream them from an object store or a
folder through a size-limited local cache (``ShardedDataset``), and hand batches to the GPU ahead
of the training step (``Loader``). ``snapshot``/``restore`` freeze a dataset version and bring it
up in another bucket or endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import public_names

# The public API, by the module that owns each name: imported at first use, so that ``framepipe pack``
# and its worker processes start without torch (only the dataset and the loader need it).
_MODULES = {
    "._cache": ("ShardCache",),
    "._dataset": ("ShardedDataset",),
    "._loader": ("Loader",),
    "._pack": ("PackResult", "pack"),
    "._shards": ("DatasetIndex", "ShardInfo"),
    "._snapshot": ("TransferResult", "restore", "snapshot"),
    "._store": ("open_store",),
}
__getattr__, __dir__ = public_names(__name__, _MODULES)

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._cache import ShardCache
    from ._dataset import ShardedDataset
    from ._loader import Loader
    from ._pack import PackResult, pack
    from ._shards import DatasetIndex, ShardInfo
    from ._snapshot import TransferResult, restore, snapshot
    from ._store import open_store

__all__ = [
    "DatasetIndex",
    "Loader",
    "PackResult",
    "ShardCache",
    "ShardInfo",
    "ShardedDataset",
    "TransferResult",
    "open_store",
    "pack",
    "restore",
    "snapshot",
]
