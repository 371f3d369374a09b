"""MDE: mixed-dimension embeddings (Ginart, Naumov, Mudigere, Yang, Zou; arXiv 1909.11810, ISIT 2021).

Field ``i`` with ``n_i`` rows gets its own stored dimension by the *alpha-power rule*::

    d_i = clamp(round(lam * n_i ** -alpha), 1, D)        (alpha = 0.3, DLRM's default)

optionally rounded to a power of two, and a bias-free projection ``d_i -> D`` (DLRM's
``PrEmbeddingBag``) so every field still outputs the base dim ``D`` the model needs. ``lam`` comes
from the base dim (``lam = D * n_min ** alpha``: the smallest field keeps ``D``) or from a memory
budget. Memory: ``sum_i n_i * d_i + sum_{d_i < D} d_i * D`` floats.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, device_constant
from .budget import budget_error
from .feature import Feature, check_features
from .dropin import EmbeddingBag
from .registry import register


# ---------------------------------------------------------------------------------------------
# the alpha-power rule and its byte count
# ---------------------------------------------------------------------------------------------
def base_lambda(num_embeddings: Sequence[int], base_dim: int, alpha: float) -> float:
    """``lam = D * n_min ** alpha``: the smallest field gets exactly the base dim."""
    return float(base_dim) * float(min(num_embeddings)) ** alpha


def mde_dims(
    num_embeddings: Sequence[int],
    base_dim: int,
    alpha: float = 0.3,
    lam: Optional[float] = None,
    round_pow2: bool = False,
) -> List[int]:
    """Per-field dims by the alpha-power rule ``d_i = clamp(round(lam * n_i^-alpha), 1, D)``.

    Args:
        num_embeddings: ``n_i`` per field.
        base_dim: ``D``, the largest dim (and the output dim after projection).
        alpha: the temperature (0 gives every field ``D``).
        lam: the scale; default :func:`base_lambda`.
        round_pow2: round each dim to the nearest power of two (in log space), then clamp to D.
    Returns:
        ``d_i`` per field, non-increasing in ``n_i``.

    Example::

        >>> mde_dims([10, 1000, 100000], 16)
        [16, 4, 1]
    """
    if lam is None:
        lam = base_lambda(num_embeddings, base_dim, alpha)
    dims = []
    for n in num_embeddings:
        raw = lam * float(n) ** (-alpha)
        d = min(max(int(math.floor(raw + 0.5)), 1), base_dim)
        if round_pow2:
            d = min(2 ** int(round(math.log2(d))), base_dim)
        dims.append(d)
    return dims


def mde_param_count(num_embeddings: Sequence[int], dims: Sequence[int], base_dim: int) -> int:
    """Floats of an MDE table: ``sum n_i d_i + sum_{d_i < D} d_i D`` (rows + projections)."""
    rows = sum(int(n) * int(d) for n, d in zip(num_embeddings, dims))
    proj = sum(int(d) * base_dim for d in dims if d < base_dim)
    return rows + proj


def _buffer_bytes(num_features: int) -> int:
    # base _id_limits + _field_group, _field_slot, _row_offset: four int64 per feature.
    return 8 * 4 * num_features


def solve_lambda(
    num_embeddings: Sequence[int],
    base_dim: int,
    budget_bytes: int,
    alpha: float = 0.3,
    round_pow2: bool = False,
) -> Tuple[float, List[int]]:
    """The ``lam`` (and dims) whose table holds the most bytes ``<= budget_bytes``.

    The dims are step functions of ``lam``; the steps are at ``lam = (j - 1/2) * n_i^alpha``. Every
    step is evaluated exactly (``F * D`` candidates), so no ``lam`` lands closer to the budget from
    below (bytes are not monotone in ``lam``: growing a tiny field to ``D`` can drop its
    projection). Ties go to the larger ``lam``.

    Raises:
        ValueError: the budget is below the cheapest setting; the message names its bytes.
    """
    ns = [int(n) for n in num_embeddings]
    extra = _buffer_bytes(len(ns))
    cands = {0.0}
    for n in ns:
        scale = float(n) ** alpha
        for j in range(2, base_dim + 1):
            cands.add((j - 0.5) * scale * (1 + 1e-12))
    best: Optional[Tuple[int, float, List[int]]] = None
    cheapest = None
    for lam in sorted(cands):
        dims = mde_dims(ns, base_dim, alpha, lam, round_pow2)
        nbytes = 4 * mde_param_count(ns, dims, base_dim) + extra
        cheapest = nbytes if cheapest is None else min(cheapest, nbytes)
        if nbytes <= budget_bytes and (best is None or nbytes >= best[0]):
            best = (nbytes, lam, dims)
    if best is None:
        raise budget_error("mde", int(cheapest), budget_bytes, "every field at dim 1")  # type: ignore[arg-type]
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@register("mde")
class MDETable(EmbeddingTable):
    """Mixed-dimension embeddings for many features (Ginart et al., 2019/2021).

    Fields with equal stored dim share one fused weight ``[sum n_i, d]`` (one gather per dim
    group); fields with ``d_i < D`` have a bias-free projection, stacked per group as
    ``[G, d, D]`` and applied with one batched matmul. Every output is ``D`` (the features'
    ``embedding_dim``), so FM/DeepFM/IPNN and torchrec models take the table as is.

    Args:
        features: the features; all share ``embedding_dim`` = the base dim ``D``.
        alpha: the alpha-power temperature (DLRM default 0.3).
        dims: explicit per-feature stored dims (overrides the rule; what ``config()`` records).
        lam: the rule's scale; default ``D * n_min ** alpha`` (smallest field keeps ``D``).
        round_pow2: round dims to powers of two (DLRM ``--md-round-dims``).
        init_scale: rows uniform ``±init_scale`` (docs/architecture.md §3); projections Xavier-uniform
            (DLRM's ``PrEmbeddingBag``).
        sparse: sparse gradients for the row weights (projections stay dense).

    Memory: ``sum_i n_i d_i + sum_{d_i<D} d_i D`` floats, plus four int64 buffers per feature.

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.
    Ids must lie in ``[0, num_embeddings)``.

    Example::

        >>> t = MDETable([Feature("a", 10, 16), Feature("b", 100_000, 16)])
        >>> t.dims, t(torch.tensor([[3, 99_999]])).shape
        ([16, 1], torch.Size([1, 2, 16]))
    """

    method = "mde"
    needs_range = True
    budget_knob = "lam"
    solved_knobs = ("dims", "lam")
    refuse_solved_knobs = True
    search_space = {"alpha": {"low": 0.1, "high": 0.5}, "round_pow2": [False, True]}
    supports_sparse = True
    not_shardable_reason = ("per-field tables of different dims with projections live in slimembed modules, "
                            "not in a torchrec EmbeddingBagCollection")

    def __init__(
        self,
        features: Sequence[Feature],
        alpha: float = 0.3,
        dims: Optional[Sequence[int]] = None,
        lam: Optional[float] = None,
        round_pow2: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
        sparse: bool = False,
    ) -> None:
        super().__init__(features)
        base = _check_dims(self.features)
        ns = [int(f.num_embeddings) for f in self.features]
        if any(n > 2**40 for n in ns):
            raise ValueError("MDETable stores every row; a vocabulary-free id space needs a hashing method")
        self.base_dim = base
        self.alpha = float(alpha)
        self.round_pow2 = bool(round_pow2)
        self.lam = float(lam) if lam is not None else base_lambda(ns, base, self.alpha)
        if dims is None:
            dims = mde_dims(ns, base, self.alpha, self.lam, self.round_pow2)
        dims = [int(d) for d in dims]
        if len(dims) != len(ns) or not all(1 <= d <= base for d in dims):
            raise ValueError(f"dims must be {len(ns)} ints in [1, {base}], got {dims}")
        self.dims = dims
        self.init_scale = float(init_scale)
        self.sparse = bool(sparse)

        # Dim groups, largest dim first; within a group, fields keep their order.
        self.group_dims: List[int] = sorted(set(dims), reverse=True)
        self.group_fields: List[List[int]] = [
            [i for i, d in enumerate(dims) if d == gd] for gd in self.group_dims
        ]
        field_group = [0] * len(ns)
        field_slot = [0] * len(ns)
        row_offset = [0] * len(ns)
        self.weights = nn.ParameterList()
        self.projections = nn.ParameterList()  # one per group with d < D, in group order
        self._proj_index: List[int] = []
        for g, (gd, fields) in enumerate(zip(self.group_dims, self.group_fields)):
            off = 0
            for s, i in enumerate(fields):
                field_group[i], field_slot[i], row_offset[i] = g, s, off
                off += ns[i]
            self.weights.append(nn.Parameter(torch.empty(off, gd)))
            if gd < base:
                self._proj_index.append(len(self.projections))
                self.projections.append(nn.Parameter(torch.empty(len(fields), gd, base)))
            else:
                self._proj_index.append(-1)
        self.register_buffer("_field_group", torch.tensor(field_group, dtype=torch.long), persistent=False)
        self.register_buffer("_field_slot", torch.tensor(field_slot, dtype=torch.long), persistent=False)
        self.register_buffer("_row_offset", torch.tensor(row_offset, dtype=torch.long), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in self.weights:
            nn.init.uniform_(w, -self.init_scale, self.init_scale)
        for p in self.projections:
            for s in range(p.shape[0]):
                nn.init.xavier_uniform_(p.data[s])

    @property
    def output_dims(self) -> List[int]:
        return [self.base_dim] * self.num_features

    def config(self) -> Dict[str, Any]:
        return {
            **super().config(),
            "alpha": self.alpha,
            "dims": list(self.dims),
            "lam": self.lam,
            "round_pow2": self.round_pow2,
            "init_scale": self.init_scale,
            "sparse": self.sparse,
        }

    def projection(self, feature: str) -> Optional[Tensor]:
        """The ``[d_i, D]`` projection of a feature (None when it is stored at ``D``)."""
        i = self.feature_names.index(feature)
        g = int(self._field_group[i])
        pi = self._proj_index[g]
        return None if pi < 0 else self.projections[pi][int(self._field_slot[i])]

    @staticmethod
    def memory_bytes(features: Sequence[Feature], dims: Sequence[int]) -> int:
        """Closed-form ``memory_report(MDETable(features, dims=dims)).total_bytes``."""
        feats = check_features(features)
        base = _check_dims(feats)
        ns = [int(f.num_embeddings) for f in feats]
        return 4 * mde_param_count(ns, dims, base) + _buffer_bytes(len(feats))

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "MDETable":
        """Solve ``lam`` (alpha fixed) for the most bytes ``<= budget_bytes`` (see :func:`solve_lambda`).

        The one method that overrides the base solver: its bytes are not monotone in ``lam``, so
        every step is evaluated instead of bisected. Granularity: one dim step of one field.
        Raises ``ValueError`` naming the minimum when the budget is below it.
        """
        for k in cls.solved_knobs:
            if k in kwargs:
                raise TypeError(f"for_budget solves 'lam' and 'dims'; do not pass {k!r}")
        feats = check_features(features)
        base = _check_dims(feats)
        lam, dims = solve_lambda(
            [f.num_embeddings for f in feats], base, budget_bytes,
            float(kwargs.get("alpha", 0.3)), bool(kwargs.get("round_pow2", False)),
        )
        table = cls(feats, dims=dims, lam=lam, **kwargs)
        from .budget import module_bytes

        got = module_bytes(table)
        if got > budget_bytes:  # pragma: no cover - guards the closed form
            raise AssertionError(f"mde: built {got} bytes > budget {budget_bytes}")
        # next_bytes is None: the next-larger setting is not one step of a bisected knob
        table.budget_solution = {"method": cls.method, "knob": "lam", "value": lam,  # type: ignore[assignment]
                                 "budget_bytes": int(budget_bytes), "bytes": got, "next_bytes": None}
        return table

    def dense_rows(self) -> Optional[Tensor]:
        """The one feature's stored ``[N, d_0]`` rows (``d_0 < D`` has a projection on top)."""
        return self.weights[0] if self.num_features == 1 else None

    # ------------------------------------------------------------------ lookup
    def _rows(self, g: int, ids: Tensor, fields: Tensor) -> Tensor:
        """Stored rows of group ``g`` for global ``fields``: ``[M, d_g]``."""
        return F.embedding(ids + self._row_offset[fields], self.weights[g], sparse=self.sparse)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        out = torch.zeros(ids.numel(), self.base_dim, device=ids.device, dtype=self.weights[0].dtype)
        if ids.numel() == 0:
            return out
        groups = self._field_group[fields]
        for g in range(len(self.group_dims)):
            sel = (groups == g).nonzero().squeeze(1)
            if not sel.numel():
                continue
            rows = self._rows(g, ids[sel], fields[sel])
            pi = self._proj_index[g]
            if pi >= 0:  # per-field projection: a loop over this group's fields, not samples
                proj = self.projections[pi]
                slots = self._field_slot[fields[sel]]
                projected = rows.new_zeros(rows.shape[0], self.base_dim)
                for s in range(proj.shape[0]):
                    m = (slots == s).nonzero().squeeze(1)
                    if m.numel():
                        projected = projected.index_put((m,), rows[m] @ proj[s])
                rows = projected
            out = out.index_put((sel,), rows)
        return out

    def forward_dense(self, ids: Tensor) -> Tensor:
        # Columns are fields: per dim group one gather [B, G, d] and one bmm with [G, d, D].
        cols: List[Optional[Tensor]] = [None] * self.num_features
        for g, fields in enumerate(self.group_fields):
            # the group's columns as a cached device tensor (a Python list index would copy host
            # to device on every batch)
            cols_g = device_constant(self, f"group{g}", ids.device, fields)
            gid = ids.index_select(1, cols_g) + self._row_offset.index_select(0, cols_g)
            rows = F.embedding(gid, self.weights[g], sparse=self.sparse)
            pi = self._proj_index[g]
            if pi >= 0:
                rows = torch.bmm(rows.transpose(0, 1), self.projections[pi]).transpose(0, 1)  # [B, G, D]
            for s, i in enumerate(fields):
                cols[i] = rows[:, s]
        return torch.stack(cols, dim=1)  # type: ignore[arg-type]

    def bag(
        self, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Optional[Tensor],
        padding_idx: Optional[int],
    ) -> Tensor:
        # One feature: pool the stored d-dim rows first, then project the bags (exact for the
        # linear modes, B*d*D instead of N*d*D work); max does not commute with the projection.
        if mode == "max":
            return super().bag(ids, offsets, mode, per_sample_weights, padding_idx)
        pooled = F.embedding_bag(
            ids, self.weights[0], offsets, mode=mode, per_sample_weights=per_sample_weights,
            include_last_offset=True, padding_idx=padding_idx, sparse=self.sparse,
        )
        if self._proj_index[0] >= 0:
            pooled = pooled @ self.projections[self._proj_index[0]][0]
        return pooled

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, stored_dims={self.group_dims}"


def _check_dims(features: Sequence[Feature]) -> int:
    dims = sorted({f.embedding_dim for f in features})
    if len(dims) != 1:
        raise ValueError(
            f"MDETable needs one embedding_dim (the base dim D) for all features, got {dims}"
        )
    return dims[0]


class MDEmbeddingBag(EmbeddingBag):
    """Drop-in for ``nn.EmbeddingBag`` backed by a one-feature :class:`MDETable`.

    Rows are stored at ``md_dim`` and projected (bias-free) to ``embedding_dim``; sum/mean bags
    are pooled at ``md_dim`` and then projected (exact, cheaper), ``max`` projects first.
    Same constructor (plus ``md_dim``, ``init_scale``, keyword-only) and forward ``(input,
    offsets=None, per_sample_weights=None)``; returns ``[B, embedding_dim]``.

    Args (beyond ``nn.EmbeddingBag``'s):
        md_dim: stored dim (``1..embedding_dim``). With one field the alpha rule gives the base
            dim, so the default ``None`` means ``embedding_dim`` (no projection); set it to
            compress.

    ``_weight`` is accepted only without projection (``md_dim == embedding_dim``).
    ``max_norm`` and ``scale_grad_by_freq`` raise. Out-of-range ids raise ``ValueError``.

    Example::

        >>> bag = MDEmbeddingBag(1000, 16, mode="sum", md_dim=4)
        >>> bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    fixed_method = "mde"

    def table_kwargs(self, num_embeddings: int, embedding_dim: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        md_dim = kwargs.pop("md_dim", None)
        kwargs.setdefault("dims", [embedding_dim if md_dim is None else int(md_dim)])
        return kwargs
