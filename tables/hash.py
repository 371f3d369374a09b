"""The hashing trick (Weinberger et al., ICML 2009) over the shared gather engine (:mod:`.gather`).

:class:`HashTable` (``make_table("hash", ...)``): feature ``f`` owns ``M_f`` rows of the fused
weight; id ``x`` reads row ``h_f(x) mod M_f`` (:mod:`slimembed.tables.hashing`, a per-feature salt),
times an optional ±1 sign hash. Vocabulary-free: any non-negative int64 id works, unseen ids too.
"""

from __future__ import annotations

from typing import Mapping, Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE
from .budget import row_range
from .feature import Feature
from .gather import GatherTable, RowsSpec, common_dim, hashed_rows
from .hashing import HashFamily
from .dropin import EmbeddingBag
from .registry import register


@register("hash")
class HashTable(GatherTable):
    """Per-feature hashed tables fused in one weight (the hashing trick, Weinberger et al. 2009).

    Feature ``f`` owns ``M_f`` rows; id ``x`` reads row ``h_f(x) mod M_f`` of its block, with
    ``h_f`` the project's universal hash salted by the feature name (``seed``), optionally times a
    ±1 sign hash ``s_f(x)`` (``signed=True``; the estimator of the paper). A feature with
    ``M_f >= N_f`` stays collision-free: it reads row ``x mod M_f`` (``= x`` for in-vocabulary ids).

    Args:
        features: the features (one common ``embedding_dim``). ``num_embeddings`` may be the id
            space (e.g. ``2**63``): the table is vocabulary-free.
        rows: rows per feature ``M_f``: an int (capped at each ``N_f``), a list, or ``{name: M_f}``.
        total_rows: alternatively a total, split over fields by ``allocation`` (capped at ``N_f``,
            at least ``min_rows`` each; see :func:`slimembed.tables.budget.allocate_rows`).
            Neither: ``M_f = min(N_f, 2**20)``.
        min_rows: floor of a feature's rows under ``total_rows`` (default 1).
        collisionless_max: under ``total_rows``, features of at most this many values keep all
            their rows as a hard floor (default 0: none; DLRM's QR threshold is 200).
        allocation: how ``total_rows`` is split over fields (a budget solves ``total_rows``):
            ``"sqrt"`` (default: rows ∝ ``sqrt(N_f)``, capped at ``N_f``), ``"proportional"``
            (rows ∝ ``N_f``) or ``"frequency"`` (rows ∝ ``field_weights``). A field whose share
            reaches ``N_f`` stays whole (collision-free). ``docs/results/allocation.md`` compares the
            rules: sqrt wins at 10x and 50x and loses to the former rule at 250x.
        field_weights: per-feature weights for ``allocation="frequency"`` (``slimembed train``
            computes each field's effective number of values in the training split).
        signed: multiply each row by a ±1 sign hash.
        seed: the hash family's seed.
        sparse: sparse row gradients.
        init_scale: uniform ``±init_scale`` init (docs/architecture.md §3: 0.05).

    Memory: ``sum_f M_f * D`` fp32 + the hash coefficients (``16 F`` bytes, ``32 F`` signed) and
    per-feature row counts/offsets (``16 F``) + the base's id limits (``8 F``).

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = HashTable([Feature("C1", 2**63, 16)], rows=1000)
        >>> t(torch.tensor([[2**50]])).shape
        torch.Size([1, 1, 16])
    """

    method = "hash"
    needs_range = False
    DEFAULT_MAX_ROWS = 2**20
    DEFAULT_MIN_ROWS = 1
    budget_knob = "total_rows"
    solved_knobs = ("rows", "total_rows")
    search_space = {"signed": [False, True]}
    quantizable = True
    supports_sparse = True
    not_shardable_reason = ("its rows are one fused parameter read through slimembed's gather engine "
                            "(hashed ids), not a torchrec EmbeddingBagCollection")

    def __init__(
        self,
        features: Sequence[Feature],
        rows: RowsSpec = None,
        total_rows: Optional[int] = None,
        min_rows: int = 1,
        collisionless_max: int = 0,
        allocation: str = "sqrt",
        field_weights: Optional[Sequence[float]] = None,
        signed: bool = False,
        seed: int = 0,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, "HashTable")
        sizes = [int(f.num_embeddings) for f in self.features]
        m = hashed_rows(self.features, rows, total_rows, min_rows, collisionless_max, allocation,
                        field_weights, self.DEFAULT_MAX_ROWS, "HashTable")
        self.rows_list = m
        self.min_rows = int(min_rows)
        self.signed = bool(signed)
        self.seed = int(seed)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        self.combine_mode = "sum"
        self.num_slots = 1
        self.hashes = HashFamily(1, seed=self.seed, salts=self.feature_names, with_sign=self.signed)
        self.register_buffer("num_rows", torch.tensor(m, dtype=torch.long))
        self.register_buffer("row_offsets", torch.tensor([0] + m[:-1], dtype=torch.long).cumsum(0))
        self._direct = [r >= n for r, n in zip(m, sizes)]
        self.register_buffer("direct", torch.tensor(self._direct, dtype=torch.bool), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(m), dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    @property
    def rows_per_feature(self) -> List[int]:
        return list(self.rows_list)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "rows": list(self.rows_list), "signed": self.signed,
                "seed": self.seed, "sparse": self.sparse, "init_scale": self.init_scale}

    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        m = self.per_field(self.num_rows, fields)
        off = self.per_field(self.row_offsets, fields)
        if all(self._direct):
            row = torch.remainder(ids, m)
        else:
            row = self.hashes(ids, m, fields=fields)
            if any(self._direct):
                row = torch.where(self.per_field(self.direct, fields), torch.remainder(ids, m), row)
        idx = (row + off).unsqueeze(-1)
        coef = self.hashes.sign(ids, fields=fields).unsqueeze(-1) if self.signed else None
        return idx, coef

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """``total_rows`` from the row floors to what the budget holds (:func:`row_range`)."""
        common_dim(features, cls.__name__)
        return row_range(features, budget_bytes, kwargs.get("min_rows", cls.DEFAULT_MIN_ROWS),
                         kwargs.get("collisionless_max", 0))


class HashEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by :class:`HashTable` (one feature, ``num_rows`` rows).

    Args: ``nn.EmbeddingBag``'s, in its order (``num_embeddings`` may be the id space, e.g.
    ``2**63``; ``max_norm``, ``scale_grad_by_freq``, ``_weight`` raise ``NotImplementedError``),
    plus keyword-only ``num_rows``
    (default ``min(num_embeddings, 2**20)``), ``signed``, ``seed``.
    ``forward(input, offsets=None, per_sample_weights=None) -> [B, embedding_dim]``.

    Example::

        >>> bag = HashEmbeddingBag(2**63, 8, num_rows=1000, mode="sum")
        >>> bag(torch.tensor([1, 2**40, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 8])
    """

    fixed_method = "hash"
    renamed = {"num_rows": "rows"}
