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


# ---------------------------------------------------------------------------------- FALLBACK
# TRANSITIONAL: the reasons below move onto the table classes (``not_shardable_reason``,
# ``why_not_shardable``, ``why_not_shardable_config``). This one function answers for classes that
# do not have those methods yet; delete it (and its two call sites) once every class has them.
def _fallback_reason(method: str, backend: Optional[str], type_name: str, has_ebc: bool = False) -> Optional[str]:
    """Today's name list: ``None`` when ``method`` (with ``backend``) is DMP-shardable, else why not."""
    if has_ebc or method == "full":
        return None
    if method in ("unified", "multiplexed"):
        if backend == "torchrec":
            return None
        return ("backend='gather' keeps the shared rows in one fused parameter read by slimembed's "
                "gather engine; build it with backend='torchrec' (a child EmbeddingBagCollection "
                "that DMP shards)")
    reasons = {
        "hash": "its rows are one fused parameter read through slimembed's gather engine (hashed ids), "
                "not a torchrec EmbeddingBagCollection",
        "double_hash": "two hashed lookups into one fused parameter are summed per id by slimembed's "
                       "gather engine; there is no torchrec EmbeddingBagCollection",
        "compositional": "k complementary partitions are gathered from one fused parameter and combined "
                         "per id (mult/add/concat) before pooling; a pooled torchrec lookup cannot express that",
        "qr": "the quotient and remainder rows are combined per id (mult by default) before pooling; "
              "torchrec pools each table separately, so no EmbeddingBagCollection can express it",
        "robe": "embeddings are windows of one shared 1-D array at hashed offsets; there are no rows to place",
        "tt": "embeddings are contracted from three tensor-train cores by matmuls; there are no rows to place",
        "dhe": "an MLP computes each embedding from 1024 hashes; there is no table at all",
        "mde": "per-field tables of different dims with projections live in slimembed modules, "
               "not in a torchrec EmbeddingBagCollection",
        "optembed": "row and dimension masks (learned thresholds) are applied inside the lookup; "
                    "torchrec's sharded kernels cannot apply them",
        "quantized": "int8/fp16 rows are an inference export, not a trainable table",
    }
    base = method.split("_")[0] if method.startswith("optembed") else method
    return reasons.get(base, f"{type_name} holds its rows in custom modules, "
                             "not in a plain torchrec EmbeddingBagCollection")
# ---------------------------------------------------------------------------------- end FALLBACK


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
    return _fallback_reason(getattr(table, "method", type(table).__name__), getattr(table, "backend", None),
                            type(table).__name__, has_ebc=bool(plain_ebcs(table)))


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
    own = getattr(cls, "why_not_shardable_config", None)
    why = own(cfg) if callable(own) else _fallback_reason(method, cfg.get("backend", "gather"), cls.__name__)
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
