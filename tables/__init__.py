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
