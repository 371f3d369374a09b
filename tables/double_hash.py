"""Double hashing with an optional frequency-aware id map (Zhang et al., "Model Size Reduction Using
Frequency Based Double Hashing for Recommender Systems", RecSys 2020, arXiv 2007.14523).

Each id is hashed by two independent universal hashes into two tables (or one shared table) and
the two rows are summed (default) or concatenated (two ``D/2`` halves): a full collision needs both
hashes to collide. The frequency-aware (hybrid) variant gives the top-K frequent ids of a feature
their own dedicated rows through an id map (a sorted-array + ``searchsorted`` buffer that memory
accounting counts); the other ids are double-hashed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE
from .budget import row_range
from .feature import Feature
from .gather import GatherTable, RowsSpec, common_dim, hashed_rows
from .hashing import HashFamily
from .dropin import EmbeddingBag
from .registry import register

IdsSpec = Optional[Mapping[str, Union[Tensor, Sequence[int]]]]


@register("double_hash")
class DoubleHashTable(GatherTable):
    """Two hashes per id into per-feature tables, rows combined by sum or concat (+ frequent ids).

    Feature ``f`` gets ``r_f`` rows of width ``D`` in all (both tables). With ``combine="sum"``
    the two tables have ``ceil(r_f/2)`` and ``floor(r_f/2)`` rows of width ``D`` and
    ``e(x) = T1[h1(x)] + T2[h2(x)]``; with ``combine="concat"`` both tables have ``r_f`` rows of
    width ``D/2`` and ``e(x) = [T1[h1(x)], T2[h2(x)]]``. ``shared=True`` puts both hashes into one
    table of the feature's rows. A feature whose rows cover its vocabulary (``r_f >= N_f``) keeps a
    plain collision-free table (id ``x`` -> row ``x mod N_f``).

    Frequency-aware variant: ``frequent_ids={name: LongTensor[K_f]}`` gives those ids their own
    ``D``-wide rows (``K_f * D`` floats); the lookup is an exact id map: ``freq_uniq`` (the sorted
    distinct frequent ids) and ``freq_key`` (sorted ``uid * F + field``) with two ``searchsorted``.

    Args:
        features: the features (one ``embedding_dim``; even for concat). Ids: any non-negative int64.
        rows: per-feature total rows ``r_f`` (int capped at ``N_f``, list, or dict).
        total_rows: alternatively a total split over fields by ``allocation`` (capped; at least
            ``min_rows`` each). Neither: ``r_f = min(N_f, 2**20)``.
        combine: ``"sum"`` (default) or ``"concat"``.
        shared: both hashes index one table per feature.
        frequent_ids: optional dedicated-row ids per feature name (duplicates are dropped; ignored
            for collision-free features).
        frequent: alternatively ``K``: each feature's ``K`` most frequent training ids get their
            own rows, read from ``counts`` (``{name: (ids, counts)}``; ``slimembed train`` passes
            the training split's). The id map is memory and counts against the budget.
        counts: the training counts for ``frequent`` (not stored: ``config()`` records the ids).
        min_rows: floor of a feature's rows under ``total_rows`` (default 2: one row per table).
        collisionless_max: under ``total_rows``, features of at most this many values keep all
            their rows as a hard floor (default 0: none; DLRM's QR threshold is 200).
        allocation: how ``total_rows`` is split over fields (a budget solves ``total_rows``):
            ``"sqrt"`` (default: rows ∝ ``sqrt(N_f)``, capped at ``N_f``), ``"proportional"``
            (rows ∝ ``N_f``) or ``"frequency"`` (rows ∝ ``field_weights``). A field whose share
            reaches ``N_f`` stays whole (collision-free). ``docs/results/allocation.md`` compares the
            rules: sqrt wins at 10x and 50x and loses to the former rule at 250x.
        field_weights: per-feature weights for ``allocation="frequency"`` (``slimembed train``
            computes each field's effective number of values in the training split).
        seed, sparse, init_scale: as in :class:`slimembed.tables.HashTable`.

    Memory: ``(sum_f r_f + sum_f K_f) * D`` fp32 + id map ``8 * (U + K)`` + hash coefficients
    and per-feature offsets.

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = DoubleHashTable([Feature("C1", 10**6, 16)], rows=5000,
        ...                     frequent_ids={"C1": torch.tensor([3, 7, 11])})
        >>> t(torch.tensor([[3], [10**5]])).shape
        torch.Size([2, 1, 16])
    """

    method = "double_hash"
    needs_range = False
    DEFAULT_MAX_ROWS = 2**20
    budget_knob = "total_rows"
    solved_knobs = ("rows", "total_rows")
    search_space = {"combine": ["sum", "concat"]}
    quantizable = True
    supports_sparse = True
    not_shardable_reason = ("two hashed lookups into one fused parameter are summed per id by slimembed's "
                            "gather engine; there is no torchrec EmbeddingBagCollection")

    def __init__(
        self,
        features: Sequence[Feature],
        rows: RowsSpec = None,
        total_rows: Optional[int] = None,
        combine: str = "sum",
        shared: bool = False,
        frequent_ids: IdsSpec = None,
        frequent: Optional[int] = None,
        counts: Optional[Mapping[str, Any]] = None,
        min_rows: int = 2,
        collisionless_max: int = 0,
        allocation: str = "sqrt",
        field_weights: Optional[Sequence[float]] = None,
        seed: int = 0,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, "DoubleHashTable")
        if frequent is not None:  # the frequency-aware variant from training counts
            if frequent_ids is not None:
                raise ValueError("give frequent (with counts) or frequent_ids, not both")
            if counts is None:
                raise ValueError("frequent=K needs the training counts (counts={field: (ids, counts)}); "
                                 "slimembed train passes them from the training split")
            frequent_ids = self.top_k_from_counts(counts, int(frequent))
        if combine not in ("sum", "concat"):
            raise ValueError(f"combine must be 'sum' or 'concat', got {combine!r}")
        if combine == "concat" and dim % 2:
            raise ValueError(f"combine='concat' needs an even embedding_dim, got {dim}")
        sizes = [int(f.num_embeddings) for f in self.features]
        r = hashed_rows(self.features, rows, total_rows, min_rows, collisionless_max, allocation,
                        field_weights, self.DEFAULT_MAX_ROWS, "DoubleHashTable")
        self.rows_list = r
        self.combine_mode = combine
        self.num_slots = 2
        self.shared = bool(shared)
        self.min_rows = int(min_rows)
        self.seed = int(seed)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        u = 2 if combine == "concat" else 1  # units (rows of the weight) per D-wide row
        width = dim // u

        off1, m1, off2, m2, direct = [], [], [], [], []
        base = 0
        for a, n in zip(r, sizes):
            if a >= n:  # collision-free: N_f rows (concat: two column blocks of N_f half-rows)
                direct.append(True)
                off1.append(base); m1.append(n); off2.append(base + n if u == 2 else base); m2.append(n)
                base += n * u
                continue
            direct.append(False)
            units = a * u
            if self.shared or units < 2:
                off1.append(base); m1.append(units); off2.append(base); m2.append(units)
            else:
                h = (units + 1) // 2
                off1.append(base); m1.append(h); off2.append(base + h); m2.append(units - h)
            base += units
        self._direct = direct
        self.hashes = HashFamily(2, seed=self.seed, salts=self.feature_names)
        as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        self.register_buffer("off1", as_long(off1))
        self.register_buffer("m1", as_long(m1))
        self.register_buffer("off2", as_long(off2))
        self.register_buffer("m2", as_long(m2))
        self.register_buffer("direct", torch.tensor(direct, dtype=torch.bool), persistent=False)

        # ---- frequency-aware id map
        self.freq_base = base
        uniq, key, counts = self._build_id_map(frequent_ids)
        self.frequent_counts = counts
        self.register_buffer("freq_uniq", uniq)
        self.register_buffer("freq_key", key)
        self.num_frequent = int(sum(counts))
        self._has_freq = self.num_frequent > 0
        self.weight = nn.Parameter(torch.empty(base + self.num_frequent * u, width))
        self.reset_parameters()

    def _build_id_map(self, frequent_ids: IdsSpec) -> Tuple[Tensor, Tensor, List[int]]:
        nf = self.num_features
        empty = torch.zeros(0, dtype=torch.long)
        counts = [0] * nf
        if not frequent_ids:
            return empty.clone(), empty.clone(), counts
        unknown = sorted(set(frequent_ids) - set(self.feature_names))
        if unknown:
            raise ValueError(f"frequent_ids names unknown features {unknown}")
        ids_l, fld_l = [], []
        for i, f in enumerate(self.features):
            if f.name not in frequent_ids or self._direct[i]:
                continue
            v = torch.as_tensor(frequent_ids[f.name], dtype=torch.long, device="cpu").reshape(-1)
            v = torch.unique(v)
            if v.numel() and int(v.min()) < 0:
                raise ValueError(f"frequent_ids[{f.name!r}] holds a negative id {int(v.min())}")
            counts[i] = int(v.numel())
            ids_l.append(v)
            fld_l.append(torch.full_like(v, i))
        if not ids_l:
            return empty.clone(), empty.clone(), counts
        ids = torch.cat(ids_l)
        fld = torch.cat(fld_l)
        uniq, inv = torch.unique(ids, sorted=True, return_inverse=True)
        key, _ = torch.sort(inv * nf + fld)
        return uniq, key, counts

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    @property
    def rows_per_feature(self) -> List[int]:
        return list(self.rows_list)

    def config(self) -> Dict[str, Any]:
        cfg = {**super().config(), "rows": list(self.rows_list), "combine": self.combine_mode,
               "shared": self.shared, "seed": self.seed, "sparse": self.sparse,
               "init_scale": self.init_scale}
        if self._has_freq:
            cfg["frequent_ids"] = self.frequent_ids_dict()
        return cfg

    def frequent_ids_dict(self) -> Dict[str, List[int]]:
        """``{feature: [ids with dedicated rows]}`` read back from the id map."""
        nf = self.num_features
        uid, fld = self.freq_key // nf, self.freq_key % nf
        out: Dict[str, List[int]] = {}
        for i, f in enumerate(self.features):
            sel = fld == i
            if bool(sel.any()):
                out[f.name] = self.freq_uniq[uid[sel]].tolist()
        return out

    @staticmethod
    def top_k_from_counts(counts: Mapping[str, Any], k: int) -> Dict[str, Tensor]:
        """``{name: (ids, counts)}`` pairs (:func:`slimembed.datasets.counts.train_counts`) or
        ``{name: counts[N_f]}`` per-id arrays -> ``{name: the k most frequent ids}`` (ties: lower id).

        >>> DoubleHashTable.top_k_from_counts({"a": ([5, 9, 2], [10, 30, 10])}, 2)["a"].tolist()
        [9, 2]
        """
        if k < 0:
            raise ValueError(f"frequent must be >= 0, got {k}")
        out: Dict[str, Tensor] = {}
        for name, c in counts.items():
            if isinstance(c, tuple) and len(c) == 2:
                ids = torch.as_tensor(c[0], dtype=torch.long, device="cpu")
                n = torch.as_tensor(c[1], dtype=torch.long, device="cpu")
            else:  # built on the CPU even under a meta-device build: ids are data, not shapes
                n = torch.as_tensor(c, dtype=torch.long, device="cpu")
                ids = torch.arange(n.numel(), device="cpu")
            order = torch.argsort(ids, stable=True)  # ties broken by the lower id
            ids, n = ids[order], n[order]
            top = torch.argsort(n, descending=True, stable=True)[:min(k, n.numel())]
            out[name] = ids[top]
        return out

    @staticmethod
    def top_k_ids(counts: Mapping[str, Tensor], k: Union[int, Mapping[str, int]]) -> Dict[str, Tensor]:
        """``{name: counts[N_f]}`` (occurrences of each id) -> ``{name: the k most frequent ids}``."""
        out = {}
        for name, c in counts.items():
            kk = int(k[name]) if isinstance(k, Mapping) else int(k)
            c = torch.as_tensor(c)
            kk = min(kk, c.numel())
            out[name] = torch.topk(c, kk, sorted=True).indices if kk > 0 else c.new_zeros(0, dtype=torch.long)
        return out

    def frequent_slot(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(hit BoolTensor, position LongTensor)`` of each ``(field, id)`` in the id map."""
        nf = self.num_features
        fld = torch.arange(nf, device=ids.device) if fields is None else fields
        k = torch.searchsorted(self.freq_uniq, ids).clamp_(max=self.freq_uniq.numel() - 1)
        hit = self.freq_uniq[k] == ids
        key = k * nf + fld
        p = torch.searchsorted(self.freq_key, key).clamp_(max=self.freq_key.numel() - 1)
        hit &= self.freq_key[p] == key
        return hit, p

    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        pf = self.per_field
        m1, m2 = pf(self.m1, fields), pf(self.m2, fields)
        i1 = self.hashes(ids, m1, index=0, fields=fields)
        i2 = self.hashes(ids, m2, index=1, fields=fields)
        single = None  # ids that read one dedicated D-wide row (direct features, frequent ids)
        concat = self.combine_mode == "concat"
        if any(self._direct):
            d = pf(self.direct, fields)
            x = torch.remainder(ids, m1)
            i1 = torch.where(d, x, i1)
            i2 = torch.where(d, x, i2)
            single = d
        i1 = i1 + pf(self.off1, fields)
        i2 = i2 + pf(self.off2, fields)
        if self._has_freq:
            hit, p = self.frequent_slot(ids, fields)
            r = self.freq_base + (2 * p if concat else p)
            i1 = torch.where(hit, r, i1)
            i2 = torch.where(hit, r + 1 if concat else r, i2)
            single = hit if single is None else single | hit
        idx = torch.stack([i1, i2], -1)
        coef = None
        if single is not None and not concat:  # sum: drop the second slot of single-row ids
            ones = torch.ones_like(single, dtype=torch.float32)
            coef = torch.stack([ones, (~single).to(ones.dtype)], -1)
        return idx, coef

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """``total_rows`` from the row floors to what the budget holds (:func:`row_range`)."""
        common_dim(features, cls.__name__)
        return row_range(features, budget_bytes, kwargs.get("min_rows", 2),
                         kwargs.get("collisionless_max", 0))


class DoubleHashEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by :class:`DoubleHashTable` (one feature).

    Args: ``nn.EmbeddingBag``'s, in its order (``num_embeddings`` may be the id space;
    ``max_norm``, ``scale_grad_by_freq``, ``_weight`` raise ``NotImplementedError``), plus
    keyword-only ``num_rows`` (the
    feature's rows in both tables together; default ``min(num_embeddings, 2**20)``), ``combine``,
    ``shared``, ``frequent_ids`` (``LongTensor`` of ids with their own rows), ``seed``.
    ``forward(input, offsets=None, per_sample_weights=None) -> [B, embedding_dim]``.
    """

    fixed_method = "double_hash"
    renamed = {"num_rows": "rows"}

    def table_kwargs(self, num_embeddings: int, embedding_dim: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        ids = kwargs.get("frequent_ids")
        if ids is not None and not isinstance(ids, Mapping):  # the one feature's ids
            kwargs["frequent_ids"] = {"input": ids}
        return kwargs
