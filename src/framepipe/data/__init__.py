"""framepipe's data side: feed training GPUs from millions of small files.

Pack small files into tar shards with an index (``pack``), stream them from an object store or a
folder through a size-limited local cache (``ShardedDataset``), and hand batches to the GPU ahead
of the training step (``Loader``). ``snapshot``/``restore`` freeze a dataset version and bring it
up in another bucket or endpoint.
"""

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
