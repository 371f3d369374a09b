"""Feature multiplexing (Coleman et al., NeurIPS 2023): all features share ONE table of ``M`` rows.

Feature ``t`` reads row ``h_t(x) mod M`` of the shared table, ``h_t`` the project's universal hash
salted by the feature name (:class:`~slimembed.tables.hashing.HashFamily`), so two features
collide only pseudo-randomly (rate ``1/M`` per pair of ids) and the downstream per-feature
weights can "undo" cross-feature collisions (paper §4.2). It is Unified Embedding with one chunk
of the full dim per feature (:class:`~slimembed.tables.unified.UnifiedTable` ``chunks=1,
chunk_dim=D, num_tables=1``): the same remap step and the same two backends (``"gather"``: one
fused weight; ``"torchrec"``: a child ``EmbeddingBagCollection`` whose single table lists every
feature name, so DistributedModelParallel shards it).

Pure by default (``collisionless_max=0``): every feature hashes into the one table, as in the
paper's "multiplexed" arm. ``collisionless_max=200`` gives small features private rows.

Memory: ``M * D`` floats + the hash coefficients (``16 F`` bytes) and layout buffers (``48 F``).
Budget knob: ``rows`` = ``M`` (granularity one row, ``4 * D`` bytes).

Example::

    >>> import torch
    >>> from slimembed.tables import Feature, make_table
    >>> t = make_table("multiplexed", [Feature("C1", 2**63, 16), Feature("C2", 10**6, 16)], rows=1000)
    >>> t(torch.tensor([[5, 5]])).shape     # id 5 of C1 and of C2 land on unrelated rows
    torch.Size([1, 2, 16])
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable
from .feature import Feature
from .gather import common_dim
from .dropin import EmbeddingBag
from .registry import register
from .unified import UnifiedTable


@register("multiplexed")
class MultiplexedTable(UnifiedTable):
    """One shared ``[M, D]`` table for all features, a salted hash per feature.

    Args:
        features: the features (one common ``embedding_dim``); ``num_embeddings`` may be ``2**63``.
        rows: ``M``, rows of the shared table; default ``min(2**20, sum of hashed N_t)``.
        collisionless_max: features with ``num_embeddings <=`` this get private rows (default 0:
            none, every feature multiplexed).
        backend: ``"gather"`` (default) or ``"torchrec"``.
        seed, sparse, init_scale: as :class:`~slimembed.tables.unified.UnifiedTable`.

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.
    """

    method = "multiplexed"
    _plain_keys = True
    search_space: Dict[str, Any] = {}

    def __init__(
        self,
        features: Sequence[Feature],
        rows: Optional[int] = None,
        collisionless_max: int = 0,
        backend: str = "gather",
        seed: int = 0,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        dim = common_dim(list(features), "MultiplexedTable")
        super().__init__(features, rows=rows, num_tables=1, chunk_dim=dim, chunks=1,
                         collisionless_max=collisionless_max, output="pad", backend=backend,
                         seed=seed, sparse=sparse, init_scale=init_scale)

    def config(self) -> Dict[str, Any]:
        return {**EmbeddingTable.config(self), "rows": self.rows,
                "collisionless_max": self.collisionless_max, "backend": self.backend,
                "seed": self.seed, "sparse": self.sparse, "init_scale": self.init_scale}


class MultiplexedEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in over a one-feature :class:`MultiplexedTable`.

    With a single feature there is nothing to multiplex: this is the hashing trick (one salted
    hash into ``num_rows`` rows), kept for a uniform API. To share one table between several
    ``nn.EmbeddingBag`` call sites, build the collection table over all of them and take
    ``table.feature_bag(name)`` for each (they read the same weight; memory counts it once).

    Args: ``nn.EmbeddingBag``'s, in its order (``max_norm``, ``scale_grad_by_freq``, ``_weight``
    raise ``NotImplementedError``), plus keyword-only ``num_rows`` (default
    ``min(num_embeddings, 2**20)``), ``seed``, ``init_scale``.
    """

    fixed_method = "multiplexed"
    renamed = {"num_rows": "rows"}
