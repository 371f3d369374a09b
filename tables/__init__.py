"""slimembed.tables: embedding tables with one protocol, a registry and memory accounting.

Every method module is imported here, in one block: importing a module registers its table class
(``@register``), so ``make_table(name, ...)`` and :func:`available_methods` see it. A new method
is one file in this folder plus one line below (``docs/architecture.md`` §3).

Example::

    >>> from slimembed.tables import Feature, make_table, memory_report
    >>> table = make_table("full", [Feature("C1", 1461, 16), Feature("C2", 584, 16)])
    >>> memory_report(table).param_bytes
    130880
"""

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, TableEmbeddingBag
from .feature import Feature, check_features, with_dim
from .memory import MemoryReport, memory_report
from .registry import available_methods, get_table_class, make_table, make_table_from_config, register
from .dropin import EmbeddingBag
from .gather import GatherTable

# The method modules (each registers its table class on import).
from .full import FullEmbeddingBag, FullTable
from .hash import HashEmbeddingBag, HashTable
from .double_hash import DoubleHashEmbeddingBag, DoubleHashTable
from .compositional import CompositionalEmbeddingBag, CompositionalTable
from .qr import QREmbeddingBag, QRTable
from .robe import RobeEmbeddingBag, RobeTable
from .tt import TTEmbeddingBag, TTTable
from .dhe import DHEEmbeddingBag, DHETable
from .mde import MDEmbeddingBag, MDETable
from .optembed import (
    CompactOptEmbedTable, OptEmbedDTable, OptEmbedEmbeddingBag, OptEmbedETable, OptEmbedTable, export_optembed,
)
from .unified import SharedRowRemap, UnifiedEmbeddingBag, UnifiedTable
from .multiplexed import MultiplexedEmbeddingBag, MultiplexedTable
from .int8 import Int8Table
from .alpt import ALPTTable
from .deeplight import DeepLightTable
from .adaptive import AdaptiveTable
from .dpq import DPQCodesTable, DPQTable, MGQETable
from .cafe import CafeTable
from .quantized import QuantizedTable, export
from .torchrec_full import TorchrecFullTable  # unregistered: the DMP runtime builds it from FullTable

__all__ = [
    "DEFAULT_INIT_SCALE", "EmbeddingTable", "TableEmbeddingBag", "Feature", "check_features", "with_dim",
    "MemoryReport", "memory_report", "available_methods", "get_table_class", "make_table",
    "make_table_from_config", "register", "GatherTable", "EmbeddingBag",
    "FullTable", "FullEmbeddingBag", "HashTable", "HashEmbeddingBag",
    "DoubleHashTable", "DoubleHashEmbeddingBag", "CompositionalTable", "CompositionalEmbeddingBag",
    "QRTable", "QREmbeddingBag", "RobeTable", "RobeEmbeddingBag", "TTTable", "TTEmbeddingBag",
    "DHETable", "DHEEmbeddingBag", "MDETable", "MDEmbeddingBag",
    "OptEmbedTable", "OptEmbedETable", "OptEmbedDTable", "OptEmbedEmbeddingBag", "CompactOptEmbedTable",
    "export_optembed", "UnifiedTable", "UnifiedEmbeddingBag", "SharedRowRemap",
    "MultiplexedTable", "MultiplexedEmbeddingBag", "QuantizedTable", "export", "TorchrecFullTable",
    "Int8Table", "ALPTTable", "DeepLightTable", "AdaptiveTable", "DPQTable", "MGQETable", "DPQCodesTable", "CafeTable",
]
