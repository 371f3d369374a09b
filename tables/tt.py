"""TT-Rec: tensor-train compressed embedding tables (Yin, Acun, Wu, Liu; MLSys 2021, arXiv 2101.11714).

A field with ``N`` rows of dim ``d`` is stored as three tensor-train cores with ranks ``(1, R, R, 1)``::

    G1 [n1, d1, R],   G2 [n2, R, d2, R],   G3 [n3, R, d3]      N <= n1*n2*n3,  d = d1*d2*d3

Row ``x`` is written in mixed radix ``x = (x1*n2 + x2)*n3 + x3`` and reconstructed as
``e(x)[i1, i2, i3] = sum_{r1, r2} G1[x1, i1, r1] * G2[x2, r1, i2, r2] * G3[x3, r2, i3]``
(flattened row-major to ``d``): two batched matrix products over all rows of a batch at once.
Memory per field: ``(n1*d1 + n2*d2*R + n3*d3) * R`` floats.

Pure PyTorch (no FBTT CUDA kernel, no LFU cache). Fields with few rows (``num_embeddings <=
threshold``) or whose cores would be at least as large as the plain table stay a plain
:class:`~slimembed.tables.full.FullTable` (DLRM/Hetu compress only large fields).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, device_constant
from .feature import Feature, check_features
from .full import FullTable
from .dropin import EmbeddingBag
from .registry import register
from .threshold import for_budget_with_threshold

Shape3 = Tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# factorisation
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _row_factors(n: int) -> Shape3:
    """Three factors with product ``>= n`` and the smallest sum (ties: the smallest product).

    The sum ``n1 + n2 + n3`` is what the cores' size grows with, so this is the balanced
    factorisation (each factor ~ n^(1/3)), padded by at most a few percent of ``n``. Sorted
    ascending.
    """
    n = max(int(n), 1)
    q = 1
    while q**3 < n:
        q += 1
    best: Optional[Tuple[int, int, Shape3]] = None
    for a in range(max(1, q // 2), q + 1):  # a = the smallest factor
        b = a
        while True:
            c = -(-n // (a * b))
            if c < b:
                break
            key = (a + b + c, a * b * c, (a, b, c))
            if best is None or key < best:
                best = key
            if best is not None and a + 2 * b > best[0]:
                break
            b += 1
    assert best is not None
    return best[2]


@lru_cache(maxsize=None)
def _dim_factors(d: int) -> Shape3:
    """The most balanced exact factorisation ``d = a*b*c`` (smallest max/min), sorted ascending.

    ``16 -> (2, 2, 4)``, ``64 -> (4, 4, 4)``, ``12 -> (2, 2, 3)``; a prime ``d`` gives ``(1, 1, d)``.
    """
    best: Optional[Tuple[int, int, Shape3]] = None
    for a in range(1, d + 1):
        if d % a:
            continue
        for b in range(a, d // a + 1):
            if (d // a) % b:
                continue
            c = d // (a * b)
            if c < b:
                continue
            key = (c - a, c, (a, b, c))
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2]


def tt_shapes(num_embeddings: int, embedding_dim: int) -> Tuple[Shape3, Shape3]:
    """Default core shapes ``((n1, n2, n3), (d1, d2, d3))`` for a field.

    Both are balanced (see :func:`_row_factors`, :func:`_dim_factors`). The middle core is the one
    multiplied by ``R`` twice, so it gets the smallest row factor and the smallest dim factor; of
    the two outer cores, the one with more rows gets the smaller dim factor (rearrangement
    inequality: this minimises ``n1*d1 + n3*d3``).

    Example::

        >>> tt_shapes(10_000, 16)
        ((25, 20, 20), (2, 2, 4))
    """
    ns = _row_factors(num_embeddings)
    ds = _dim_factors(embedding_dim)
    n_small, n_mid, n_big = ns
    d_small, d_mid, d_big = ds
    # middle core: smallest n, smallest d; outer: big n with the smaller remaining d.
    return (n_big, n_small, n_mid), (d_mid, d_small, d_big)


def tt_param_count(n: Shape3, d: Shape3, rank: int) -> int:
    """Floats in the three cores: ``(n1*d1 + n2*d2*R + n3*d3) * R``."""
    return (n[0] * d[0] + n[1] * d[1] * rank + n[2] * d[2]) * rank


# ---------------------------------------------------------------------------------------------
# the plan: which fields are TT, which stay full, how TT fields group
# ---------------------------------------------------------------------------------------------
class _Plan:
    """The layout a :class:`TTTable` is built from (pure Python; no tensors)."""

    def __init__(
        self,
        features: Sequence[Feature],
        rank: int,
        threshold: int,
        keep_full_if_larger: bool,
        shapes: Optional[Dict[str, Tuple[Sequence[int], Sequence[int]]]],
    ) -> None:
        shapes = dict(shapes or {})
        unknown = sorted(set(shapes) - {f.name for f in features})
        if unknown:
            raise ValueError(f"tt shapes given for unknown features {unknown}")
        self.full_fields: List[int] = []
        self.field_shapes: Dict[int, Tuple[Shape3, Shape3]] = {}
        for i, f in enumerate(features):
            n_rows, dim = int(f.num_embeddings), int(f.embedding_dim)
            if f.name in shapes:
                ns, ds = (tuple(int(v) for v in s) for s in shapes[f.name])
                if len(ns) != 3 or len(ds) != 3:
                    raise ValueError(f"feature {f.name!r}: tt shapes need 3 row and 3 dim factors")
                if math.prod(ns) < n_rows or math.prod(ds) != dim:
                    raise ValueError(
                        f"feature {f.name!r}: row factors {ns} must cover {n_rows} rows and dim "
                        f"factors {ds} must multiply to {dim}"
                    )
                self.field_shapes[i] = (ns, ds)  # type: ignore[assignment]
                continue
            if n_rows <= threshold:
                self.full_fields.append(i)
                continue
            ns, ds = tt_shapes(n_rows, dim)
            if keep_full_if_larger and tt_param_count(ns, ds, rank) >= n_rows * dim:
                self.full_fields.append(i)
                continue
            self.field_shapes[i] = (ns, ds)
        # Group TT fields with equal core shapes: one stacked parameter and one bmm per group.
        groups: Dict[Tuple[Shape3, Shape3], List[int]] = {}
        for i, key in self.field_shapes.items():
            groups.setdefault(key, []).append(i)
        self.groups: List[Tuple[Tuple[Shape3, Shape3], List[int]]] = sorted(
            groups.items(), key=lambda kv: kv[1][0]
        )
        self.rank = int(rank)
        self.num_features = len(features)
        self.dim = int(features[0].embedding_dim)
        self.full_rows = sum(int(features[i].num_embeddings) for i in self.full_fields)

    def param_count(self) -> int:
        tt = sum(len(fs) * tt_param_count(ns, ds, self.rank) for (ns, ds), fs in self.groups)
        return tt + self.full_rows * self.dim

    def total_bytes(self) -> int:
        """Parameters + buffers of the built table, fp32 params and int64 index buffers."""
        buffers = 8 * self.num_features * 3  # _id_limits, _field_group, _field_slot
        if self.full_fields:
            buffers += 8 * len(self.full_fields) * 2  # FullTable: _id_limits, row_offsets
        return 4 * self.param_count() + buffers


def _check_dims(features: Sequence[Feature]) -> None:
    dims = sorted({f.embedding_dim for f in features})
    if len(dims) != 1:
        raise ValueError(f"TTTable needs one embedding_dim for all features, got {dims}; build one table per dim")


def check_feats(features: Sequence[Feature]) -> List[Feature]:
    """Validated feature list with one common ``embedding_dim``."""
    feats = check_features(features)
    _check_dims(feats)
    return feats


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@register("tt")
class TTTable(EmbeddingTable):
    """TT-Rec embedding tables for many features (Yin et al., MLSys 2021).

    Each large field is three tensor-train cores ``G1 [n1, d1, R]``, ``G2 [n2, R, d2, R]``,
    ``G3 [n3, R, d3]`` (ranks ``(1, R, R, 1)``, ``N <= n1*n2*n3``, ``d = d1*d2*d3``, balanced
    factors from :func:`tt_shapes`); a row is two batched matmuls over all ids of a batch. Fields
    with equal core shapes share one stacked parameter and one pair of ``bmm``. Small fields stay
    a plain fused table (child ``full``).

    Args:
        features: the features; all must share ``embedding_dim``.
        rank: the TT rank ``R`` (the budget knob). Default 8.
        threshold: fields with ``num_embeddings <= threshold`` stay full (DLRM's 200).
        keep_full_if_larger: fields whose cores would hold at least ``N*d`` floats stay full.
        shapes: optional per-feature ``{name: ((n1, n2, n3), (d1, d2, d3))}``; such fields are
            always TT.
        init_scale: target scale ``s``. Cores are sampled N(0, sigma^2) with
            ``sigma = (s^2 / (3 R^2))^(1/6)``, so each reconstructed entry (a sum of ``R^2``
            products of three core entries) has variance ``s^2 / 3``, that of uniform ``±s``
            (TT-Rec's sampled-Gaussian init, matched to docs/architecture.md §3's ±0.05).
        sparse: sparse gradients for the full child.

    Memory: ``sum_TT (n1*d1 + n2*d2*R + n3*d3)*R + sum_full N*d`` floats, plus int64 index
    buffers (3 per feature, 2 per full field).

    Shapes: dense ids ``[B, F]`` -> ``[B, F, d]``; a KJT -> ``KeyedTensor`` ``[B, F * d]``.
    Ids must lie in ``[0, num_embeddings)``.

    Example::

        >>> t = TTTable([Feature("C3", 10_000, 16), Feature("C9", 3, 16)], rank=4)
        >>> t(torch.tensor([[9_999, 2]])).shape
        torch.Size([1, 2, 16])
    """

    method = "tt"
    budget_knob = "rank"
    solved_knobs = ("rank",)
    refuse_solved_knobs = True
    search_space: Dict[str, Any] = {}
    supports_sparse = True
    not_shardable_reason = "embeddings are contracted from three tensor-train cores by matmuls; there are no rows to place"
    needs_range = True

    def __init__(
        self,
        features: Sequence[Feature],
        rank: int = 8,
        threshold: int = 200,
        keep_full_if_larger: bool = True,
        shapes: Optional[Dict[str, Tuple[Sequence[int], Sequence[int]]]] = None,
        init_scale: float = DEFAULT_INIT_SCALE,
        sparse: bool = False,
    ) -> None:
        super().__init__(features)
        _check_dims(self.features)
        if int(rank) < 1:
            raise ValueError(f"TT rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.threshold = int(threshold)
        self.keep_full_if_larger = bool(keep_full_if_larger)
        self.shapes = (
            {k: (tuple(int(x) for x in v[0]), tuple(int(x) for x in v[1])) for k, v in shapes.items()}
            if shapes
            else None
        )
        self.init_scale = float(init_scale)
        self.sparse = bool(sparse)
        self.plan = _Plan(self.features, self.rank, self.threshold, self.keep_full_if_larger, self.shapes)
        self.dim = self.plan.dim

        nf = self.num_features
        field_group = [-1] * nf  # -1: full
        field_slot = [0] * nf
        for j, i in enumerate(self.plan.full_fields):
            field_slot[i] = j
        self.full: Optional[FullTable] = None
        if self.plan.full_fields:
            self.full = FullTable(
                [self.features[i] for i in self.plan.full_fields], sparse=sparse, init_scale=init_scale
            )
        self.core1 = nn.ParameterList()
        self.core2 = nn.ParameterList()
        self.core3 = nn.ParameterList()
        self.group_shapes: List[Tuple[Shape3, Shape3]] = []
        self.group_fields: List[List[int]] = []
        r = self.rank
        for g, ((ns, ds), fields) in enumerate(self.plan.groups):
            k = len(fields)
            self.core1.append(nn.Parameter(torch.empty(k, ns[0], ds[0], r)))
            self.core2.append(nn.Parameter(torch.empty(k, ns[1], r, ds[1] * r)))
            self.core3.append(nn.Parameter(torch.empty(k, ns[2], r, ds[2])))
            self.group_shapes.append((ns, ds))
            self.group_fields.append(list(fields))
            for s, i in enumerate(fields):
                field_group[i] = g
                field_slot[i] = s
        self.register_buffer("_field_group", torch.tensor(field_group, dtype=torch.long), persistent=False)
        self.register_buffer("_field_slot", torch.tensor(field_slot, dtype=torch.long), persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    def core_std(self) -> float:
        """Std of each core entry: ``(s^2 / (3 R^2))^(1/6)`` (see the class docstring)."""
        return (self.init_scale**2 / (3.0 * self.rank**2)) ** (1.0 / 6.0)

    def reset_parameters(self) -> None:
        std = self.core_std()
        for p in list(self.core1) + list(self.core2) + list(self.core3):
            nn.init.normal_(p, 0.0, std)
        if self.full is not None:
            self.full.reset_parameters()

    def config(self) -> Dict[str, Any]:
        cfg = {
            **super().config(),
            "rank": self.rank,
            "threshold": self.threshold,
            "keep_full_if_larger": self.keep_full_if_larger,
            "init_scale": self.init_scale,
            "sparse": self.sparse,
        }
        if self.shapes:
            cfg["shapes"] = {k: [list(v[0]), list(v[1])] for k, v in self.shapes.items()}
        return cfg

    @property
    def tt_features(self) -> List[str]:
        """Names of the features stored as tensor trains (the rest are full)."""
        return [self.features[i].name for i in sorted(self.plan.field_shapes)]

    @staticmethod
    def memory_bytes(features: Sequence[Feature], rank: int, **kwargs: Any) -> int:
        """Closed-form ``memory_report(TTTable(features, rank, **kwargs)).total_bytes``."""
        return _Plan(
            check_feats(features),
            rank,
            int(kwargs.get("threshold", 200)),
            bool(kwargs.get("keep_full_if_larger", True)),
            kwargs.get("shapes"),
        ).total_bytes()

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "TTTable":
        """The rank solve with a budget-aware ``threshold``: 200 (DLRM/Hetu) when the small fields
        kept full still fit, else the largest threshold that fits (down to 0: every field where a
        train is smaller than the table is TT); see :mod:`slimembed.tables.threshold`. An explicit
        ``threshold`` is kept as given (a hard floor, named in the error)."""
        return for_budget_with_threshold(cls, super().for_budget, features, budget_bytes, "threshold", kwargs)

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """The rank ``R`` (memory is non-decreasing in R). Granularity: one rank step. At
        ``R = 1`` fields up to ``threshold`` stay full (:meth:`for_budget` lowers a default one)."""
        features = check_feats(features)
        # At R^2 >= N*d every field's middle core alone is at least the full table: all full.
        return 1, max(1, math.isqrt(max(int(f.num_embeddings) * f.embedding_dim for f in features)) + 1)

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        return lambda r: cls.memory_bytes(features, r, **kwargs)

    # ------------------------------------------------------------------ lookup
    def _tt_rows(self, g: int, ids: Tensor, slots: Tensor) -> Tensor:
        """Rows of group ``g``: ``ids [M]``, ``slots [M]`` (field within the group) -> ``[M, d]``."""
        (n1, n2, n3), (d1, d2, d3) = self.group_shapes[g]
        r = self.rank
        x3 = ids % n3
        rest = ids // n3
        x2 = rest % n2
        x1 = rest // n2
        a = self.core1[g][slots, x1]  # [M, d1, R]
        b = self.core2[g][slots, x2]  # [M, R, d2*R]
        c = self.core3[g][slots, x3]  # [M, R, d3]
        ab = torch.bmm(a, b).view(-1, d1 * d2, r)  # [M, d1*d2, R]
        return torch.bmm(ab, c).reshape(-1, d1 * d2 * d3)  # [M, d]

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        out = torch.zeros(ids.numel(), self.dim, device=ids.device, dtype=self._dtype())
        if ids.numel() == 0:
            return out
        groups = self._field_group[fields]
        slots = self._field_slot[fields]
        if self.full is not None:
            sel = (groups < 0).nonzero().squeeze(1)
            if sel.numel():
                out = out.index_put((sel,), self.full.embed(ids[sel], slots[sel]))
        for g in range(len(self.group_shapes)):
            sel = (groups == g).nonzero().squeeze(1)
            if sel.numel():
                out = out.index_put((sel,), self._tt_rows(g, ids[sel], slots[sel]))
        return out

    def forward_dense(self, ids: Tensor) -> Tensor:
        # Columns are fields: no masks; one gather for the full fields, two bmm per TT group.
        b, nf = ids.shape
        cols: List[Optional[Tensor]] = [None] * nf
        if self.full is not None:
            ff = self.plan.full_fields
            cols_f = device_constant(self, "full", ids.device, ff)  # no per-batch host copy
            rows = self.full.forward_dense(ids.index_select(1, cols_f))  # [B, F_full, d]
            for j, i in enumerate(ff):
                cols[i] = rows[:, j]
        for g, fields in enumerate(self.group_fields):
            k = len(fields)
            gid = ids.index_select(1, device_constant(self, f"group{g}", ids.device, fields)).reshape(-1)  # [B*k], slot-minor
            slots = torch.arange(k, device=ids.device).repeat(b)
            rows = self._tt_rows(g, gid, slots).view(b, k, self.dim)
            for s, i in enumerate(fields):
                cols[i] = rows[:, s]
        return torch.stack(cols, dim=1)  # type: ignore[arg-type]

    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    # ------------------------------------------------------------------ export / debugging
    @torch.no_grad()
    def materialize(self, feature: str) -> Tensor:
        """The dense ``[N, d]`` table a feature represents (for tests, export, inspection)."""
        i = self.feature_names.index(feature)
        n = int(self.features[i].num_embeddings)
        ids = torch.arange(n, device=self._field_group.device)
        return self.embed(ids, torch.full_like(ids, i))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, tt_fields={len(self.plan.field_shapes)}, "
            f"full_fields={len(self.plan.full_fields)}"
        )



class TTEmbeddingBag(EmbeddingBag):
    """Drop-in for ``nn.EmbeddingBag`` backed by a one-feature :class:`TTTable` (always TT).

    Same constructor (plus the TT arguments) and forward ``(input, offsets=None,
    per_sample_weights=None)``: input ``[B, L]`` or ``[N]`` with ``offsets``; returns ``[B, D]``.

    Args (beyond ``nn.EmbeddingBag``'s):
        tt_rank: ``R`` (default 8).
        tt_p_shapes: row factors ``(n1, n2, n3)`` covering ``num_embeddings`` (default balanced).
        tt_q_shapes: dim factors ``(d1, d2, d3)`` with product ``embedding_dim``.
        init_scale: see :class:`TTTable`.

    Not supported (they raise): ``max_norm``, ``scale_grad_by_freq``, ``sparse=True`` (cores get
    dense gradients) and ``_weight`` (an arbitrary matrix has no exact rank-``R`` train).
    ``padding_idx`` ids are left out of their bags as in ``nn.EmbeddingBag``, but the TT row
    itself is not zero. Out-of-range ids raise ``ValueError``.

    Example::

        >>> bag = TTEmbeddingBag(100_000, 16, mode="sum", tt_rank=4)
        >>> bag(torch.tensor([1, 2, 99_999]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    fixed_method = "tt"
    renamed = {"tt_rank": "rank"}
    sparse_ok = False  # the one feature is always TT: its cores get dense gradients

    def table_kwargs(self, num_embeddings: int, embedding_dim: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        default_p, default_q = tt_shapes(num_embeddings, embedding_dim)
        p, q = kwargs.pop("tt_p_shapes", None), kwargs.pop("tt_q_shapes", None)
        kwargs.setdefault("shapes", {"input": (tuple(p) if p is not None else default_p,
                                               tuple(q) if q is not None else default_q)})
        return kwargs
