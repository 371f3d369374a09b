"""slimembed.tables: embedding tables with one protocol, a registry and memory accounting.

Example::

    >>> from slimembed.tables import Feature, make_table, memory_report
    >>> table = make_table("full", [Feature("C1", 1461, 16), Feature("C2", 584, 16)])
    >>> memory_report(table).param_bytes
    131200
"""

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, TableEmbeddingBag
from .feature import Feature, check_features, with_dim
from .memory import MemoryReport, memory_report
from .registry import available_methods, get_table_class, make_table, make_table_from_config, register

# Importing a method's module registers it.
from .full import FullEmbeddingBag, FullTable  # noqa: E402

__all__ = [
    "DEFAULT_INIT_SCALE",
    "EmbeddingTable",
    "TableEmbeddingBag",
    "Feature",
    "check_features",
    "with_dim",
    "MemoryReport",
    "memory_report",
    "available_methods",
    "get_table_class",
    "make_table",
    "make_table_from_config",
    "register",
    "FullTable",
    "FullEmbeddingBag",
]
from .gather import GatherTable  # noqa: E402
from .hash import HashEmbeddingBag, HashTable  # noqa: E402

__all__ += ["GatherTable", "HashTable", "HashEmbeddingBag"]
from .tt import TTEmbeddingBag, TTTable  # noqa: E402
from .dhe import DHEEmbeddingBag, DHETable  # noqa: E402
from .mde import MDEmbeddingBag, MDETable  # noqa: E402

__all__ += ["TTTable", "TTEmbeddingBag", "DHETable", "DHEEmbeddingBag", "MDETable", "MDEmbeddingBag"]
from .double_hash import DoubleHashEmbeddingBag, DoubleHashTable  # noqa: E402
from .compositional import CompositionalEmbeddingBag, CompositionalTable  # noqa: E402
from .qr import QREmbeddingBag, QRTable  # noqa: E402
from .robe import RobeEmbeddingBag, RobeTable  # noqa: E402

__all__ += [
    "DoubleHashTable", "DoubleHashEmbeddingBag", "CompositionalTable", "CompositionalEmbeddingBag",
    "QRTable", "QREmbeddingBag", "RobeTable", "RobeEmbeddingBag",
]
from .quantized import QuantizedTable, export  # noqa: E402

__all__ += ["QuantizedTable", "export"]
from .optembed import (  # noqa: E402
    CompactOptEmbedTable, OptEmbedDTable, OptEmbedEmbeddingBag, OptEmbedETable, OptEmbedTable, export_optembed,
)

__all__ += ["OptEmbedTable", "OptEmbedETable", "OptEmbedDTable", "OptEmbedEmbeddingBag", "CompactOptEmbedTable",
            "export_optembed"]
from .unified import SharedRowRemap, UnifiedEmbeddingBag, UnifiedTable  # noqa: E402
from .multiplexed import MultiplexedEmbeddingBag, MultiplexedTable  # noqa: E402

__all__ += ["UnifiedTable", "UnifiedEmbeddingBag", "SharedRowRemap", "MultiplexedTable", "MultiplexedEmbeddingBag"]
from .torchrec_full import TorchrecFullTable  # noqa: E402,F401  (unregistered: the DMP runtime builds it from FullTable)
