"""Which tables torchrec's ``DistributedModelParallel`` can shard, and why not.

The answer belongs to the table classes (``docs/architecture.md`` §3): an instance says
``table.why_not_shardable()`` (``None``: shardable) and a class says
``get_table_class(method).why_not_shardable_config(cfg)`` before any data is read. DMP itself
only shards plain ``EmbeddingBagCollection`` modules: it dispatches sharders by the exact module
type (``torchrec/distributed/model_parallel.py``, ``self._sharder_map[type(module)]``).

Example::

    >>> from slimembed.tables import Feature, make_table
    >>> why_not_shardable(make_table("full", [Feature("C0", 10, 8)])) is None
    True
    >>> check_method_shardable("full")
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import nn

from .comm import unwrap_model

WHY_DIM4 = ("fbgemm's fused TBE kernel needs dims divisible by 4 "
            "(torchrec/distributed/batched_embedding_kernel.py: _assert_local_cols_divisible_by_4), and "
            "table/column-wise sharding on CPU offers only that kernel "
            "(EmbeddingBagCollectionSharder.compute_kernels: DENSE only for data_parallel)")


def plain_ebcs(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``[(path, ebc)]``: the plain torchrec ``EmbeddingBagCollection`` modules DMP can shard."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    return [(n, m) for n, m in module.named_modules() if type(m) is EmbeddingBagCollection]


def outer_tables(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``[(path, table)]`` for every outermost :class:`~slimembed.tables.EmbeddingTable` of ``model``."""
    from slimembed.tables import EmbeddingTable

    out: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, EmbeddingTable) and not any(name.startswith(o + ".") for o, _ in out):
            out.append((name, m))
    return out


def why_not_shardable(table: nn.Module) -> Optional[str]:
    """``None`` when DMP can shard ``table``, else the reason, in words (the table's own answer)."""
    own = getattr(table, "why_not_shardable", None)
    if callable(own):
        return own()
    if plain_ebcs(table):  # any module holding a plain torchrec collection
        return None
    return (f"{type(table).__name__} holds its rows in custom modules, not in a plain torchrec "
            "EmbeddingBagCollection")


def sharding_candidates(model: nn.Module) -> Dict[str, Optional[str]]:
    """``{table path: None (shardable) | reason}`` for every outermost table of ``model``."""
    return {name: why_not_shardable(t) for name, t in outer_tables(unwrap_model(model))}


def check_method_shardable(method: str, table_cfg: Optional[Mapping[str, Any]] = None) -> None:
    """Fail early (before any data is read) when ``method`` with ``table_cfg`` cannot be sharded by DMP.

    Raises ``ValueError`` naming the method and the class's reason.
    """
    from slimembed.tables import get_table_class

    cfg = dict(table_cfg or {})
    cls = get_table_class(method)
    why = cls.why_not_shardable_config(cfg)
    if why is None:
        return
    raise ValueError(
        f"table method {method!r} cannot be sharded by torchrec DistributedModelParallel: {why}. "
        "DMP only shards plain EmbeddingBagCollection modules (it dispatches sharders by exact module "
        "type). Compressed tables are small by design: train them replicated with "
        "distributed.sharding: none (DDP), or use full / unified / multiplexed with backend: torchrec "
        "(table.backend: torchrec)")


def sharding_summary(model: nn.Module) -> Dict[str, Any]:
    """What is sharded where: ``{"plan": str | None, "not_sharded": {table: reason}}`` (empty for DDP)."""
    plan = getattr(model, "_slimembed_plan", None)
    return {"plan": None if plan is None else str(plan),
            "not_sharded": dict(getattr(model, "_slimembed_skipped", {}) or {})}


__all__ = ["WHY_DIM4", "sharding_summary", "plain_ebcs", "outer_tables", "why_not_shardable", "sharding_candidates",
           "check_method_shardable"]
