"""DeepRec's Adaptive Embedding ("AdaptEmb" in the VLDB'24 benchmark): frequent ids own rows.

See :class:`AdaptiveTable` (``make_table("adaptive", ...)``) and ``docs/architecture.md §3``.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable
from .budget import allocate_rows, budget_error, module_bytes, solve_knob
from .feature import Feature
from .gather import RowsSpec, common_dim, per_feature
from .hashing import HashFamily
from .registry import register

#: a field's training counts: an array (entry ``i`` = count of id ``1 + i``, the layout of
#: ``vocab/<field>.counts.npy``) or an ``(ids, counts)`` pair (``slimembed.datasets.counts.train_counts``)
FieldCounts = Union[Tensor, np.ndarray, Sequence[int], Tuple[Any, Any]]
FreqSource = Mapping[str, FieldCounts]
PPM = 10**6  # the budget knob: top_percent in parts per million (an integer knob)


def _as_long(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.long, device="cpu").reshape(-1)


def count_pairs(counts: FieldCounts) -> Tuple[Tensor, Tensor]:
    """``(ids [V], counts [V])`` on the CPU of either form of a field's counts, id 0 (the OOV id,
    never hot) left out. Arrays are ``counts[i]`` = count of id ``1 + i``."""
    if isinstance(counts, tuple):
        if len(counts) != 2:
            raise ValueError(f"counts as a tuple must be (ids, counts), got {len(counts)} items")
        ids, c = _as_long(counts[0]), _as_long(counts[1])
        if ids.shape != c.shape:
            raise ValueError(f"counts (ids, counts) differ in length: {ids.numel()} vs {c.numel()}")
        keep = ids != 0
        return ids[keep], c[keep]
    c = _as_long(counts)
    return torch.arange(1, c.numel() + 1, device="cpu"), c


def top_ids_from_counts(counts: FieldCounts, k: int) -> Tensor:
    """The ``k`` most frequent ids of a field from its training counts (either form of
    :func:`count_pairs`; id 0, the OOV id, is never hot). Ties go to the lower id (a stable sort
    over ids in increasing order). Returns ``LongTensor[min(k, V)]`` in decreasing frequency.

    Example::

        >>> top_ids_from_counts(np.array([5, 9, 9, 1]), 2)           # ids 1..4
        tensor([2, 3])
        >>> top_ids_from_counts((np.array([0, 4, 7]), np.array([50, 1, 3])), 2)   # id 0 never hot
        tensor([7, 4])
    """
    ids, c = count_pairs(counts)
    order = torch.argsort(ids)  # ties -> lower id
    ids, c = ids[order], c[order]
    return ids[torch.sort(c, descending=True, stable=True).indices[: max(0, int(k))]]


def hot_id_lists(features: Sequence[Feature], top_percent: float, counts: Optional[FreqSource],
                 frequent_ids: Optional[FreqSource], num_hot: RowsSpec, who: str) -> List[Tensor]:
    """Per feature, the sorted ``LongTensor`` of its ``floor(top_percent * N_f)`` most frequent ids.

    Exactly one source: ``counts`` (``{name: counts}``, an array with entry ``i`` = id ``1 + i``
    or an ``(ids, counts)`` pair, :func:`count_pairs`),
    ``frequent_ids`` (``{name: ids}``, most frequent first) or ``num_hot`` (placeholders ``1..n_f``
    that a ``load_state_dict`` overwrites). A feature missing from ``counts``/``frequent_ids`` has
    no hot ids. Computed on the CPU (also under ``torch.device("meta")``: the ids are data).
    """
    if sum(x is not None for x in (counts, frequent_ids, num_hot)) != 1:
        raise ValueError(f"{who} needs exactly one frequency source: counts=, frequent_ids= or "
                         "num_hot= (to load hot ids from a state dict)")
    sizes = [int(f.num_embeddings) for f in features]
    want = [int(float(top_percent) * n) for n in sizes]
    placeholders = per_feature(num_hot, features, "num_hot") if num_hot is not None else None
    hot: List[Tensor] = []
    for i, f in enumerate(features):
        if placeholders is not None:
            ids = torch.arange(1, min(placeholders[i], sizes[i] - 1) + 1, device="cpu")
        elif counts is not None:
            c = counts.get(f.name)
            if c is not None and not isinstance(c, tuple) and len(c) > sizes[i] - 1:
                raise ValueError(f"{who}: counts for feature {f.name!r} have {len(c)} entries > "
                                 f"num_embeddings - 1 = {sizes[i] - 1}")
            ids = top_ids_from_counts(c, want[i]) if c is not None else torch.empty(0, dtype=torch.long, device="cpu")
        else:
            src = frequent_ids.get(f.name) if frequent_ids is not None else None
            ids = torch.as_tensor(np.asarray([] if src is None else src), dtype=torch.long, device="cpu").reshape(-1)
            if torch.unique(ids).numel() != ids.numel():
                raise ValueError(f"{who}: frequent_ids of feature {f.name!r} repeat an id")
            ids = ids[: want[i]]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= sizes[i]):
            raise ValueError(f"{who}: frequent id out of [0, {sizes[i]}) for feature {f.name!r}")
        hot.append(torch.sort(ids).values)
    return hot


def ranked_capacity(features: Sequence[Feature], kwargs: Mapping[str, Any]) -> List[int]:
    """Per feature, the most hot ids the frequency source in ``kwargs`` can give."""
    out = []
    for f in features:
        if kwargs.get("counts") is not None:
            c = kwargs["counts"].get(f.name)
            out.append(0 if c is None else int(count_pairs(c)[0].numel()))
        elif kwargs.get("frequent_ids") is not None:
            s = kwargs["frequent_ids"].get(f.name)
            out.append(0 if s is None else len(s))
        else:
            out.append(int(f.num_embeddings) - 1)
    return out


@register("adaptive")
class AdaptiveTable(EmbeddingTable):
    """Adaptive Embedding (DeepRec; the VLDB'24 benchmark's AdaptEmb): frequent ids own rows.

    Per feature ``f`` the ``n_f = floor(top_percent * N_f)`` most frequent ids of the training
    split own an exclusive row; every id also reads a hashed shared row ``h_f(x) mod M_f``, and
    the embedding is their sum: ``e(x) = E_hot[x] * [x hot] + E_shared[h_f(x)]``.

    The frequency source is ``counts`` (``{feature: per-id counts}``: an array with entry ``i`` =
    id ``1 + i``, the layout of ``vocab/<field>.counts.npy``, or an ``(ids, counts)`` pair as
    :func:`slimembed.datasets.counts.train_counts` returns; ``needs_counts`` tells the experiment
    to pass the training split's) or ``frequent_ids`` (``{feature: ids}``, most frequent first). A feature missing from the source gets no hot ids. Without any source,
    ``num_hot`` (per feature) builds placeholder hot ids ``1..n_f`` that a ``load_state_dict``
    overwrites: that is how :meth:`config` round-trips (the hot ids live in the state dict).

    Defaults: ``top_percent = 0.1`` (the benchmark's ``embedding_args`` for ``adapt``, Hsword/Hetu
    ``tools/EmbeddingMemoryCompression``). Differences from the reference: the reference keeps an
    int32 remap over the whole vocabulary (4 bytes per id, more than the whole budget at 100x for
    ``D = 16``); here the hot ids are a sorted int64 key array searched with ``searchsorted``
    (8 bytes per *hot* id), and the shared rows are per feature, salted by the feature name.
    Under a budget, ``shared_fraction`` of it goes to the shared rows (split across features
    proportionally to ``N_f``) and ``top_percent`` is solved on the rest.

    Args:
        features: the features (one common ``embedding_dim``).
        top_percent: fraction of each feature's vocabulary that owns rows, in ``[0, 1]``.
        shared_rows: shared hashed rows ``M_f`` (int, list or ``{name: M_f}``; capped at ``N_f``);
            default ``max(1, N_f // 10)``.
        counts / frequent_ids / num_hot: the frequency source (see above; give one).
        seed: hash seed. init_scale: uniform ``±init_scale`` init of both tables.

    Memory (``memory_report`` counts it all; nothing is training-only):
    ``H * D * 4`` hot rows + ``H * 8`` sorted keys + ``sum_f M_f * D * 4`` shared rows + hash
    coefficients and per-feature offsets (``H = sum_f n_f``).

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = AdaptiveTable([Feature("a", 100, 4)], top_percent=0.1,
        ...                   counts={"a": np.arange(99)}, shared_rows=8)
        >>> t(torch.tensor([[99], [3]])).shape
        torch.Size([2, 1, 4])
        >>> bool(t.is_hot(torch.tensor([99, 3]), torch.tensor([0, 0]))[0])
        True
    """

    method: ClassVar[str] = "adaptive"
    needs_range: ClassVar[bool] = True
    budget_knob: ClassVar[Optional[str]] = "top_percent"
    # num_hot only sizes placeholders for a state-dict load; a budget takes the hot ids from counts
    solved_knobs: ClassVar[Tuple[str, ...]] = ("top_percent", "shared_rows", "num_hot")
    #: the experiment passes the training split's per-id counts as ``counts=`` (docs/architecture.md §5)
    needs_counts: ClassVar[bool] = True
    search_space: ClassVar[Dict[str, Any]] = {"shared_fraction": [0.25, 0.5, 0.75]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    not_shardable_reason: ClassVar[Optional[str]] = (
        "two tables behind a searchsorted id map: not a plain EBC that DMP can shard")

    def __init__(
        self,
        features: Sequence[Feature],
        top_percent: float = 0.1,
        shared_rows: RowsSpec = None,
        counts: Optional[FreqSource] = None,
        frequent_ids: Optional[FreqSource] = None,
        num_hot: RowsSpec = None,
        seed: int = 0,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, "AdaptiveTable")
        if not 0.0 <= float(top_percent) <= 1.0:
            raise ValueError(f"AdaptiveTable: top_percent must be in [0, 1], got {top_percent}")
        sizes = [int(f.num_embeddings) for f in self.features]
        self.top_percent = float(top_percent)
        m = per_feature(shared_rows, self.features, "shared_rows")
        m = [max(1, n // 10) for n in sizes] if m is None else [min(int(r), n) for r, n in zip(m, sizes)]
        if min(m) < 1:
            raise ValueError(f"AdaptiveTable: shared_rows must be >= 1 per feature, got {m}")
        self.shared_list: List[int] = m
        self.seed = int(seed)
        self.init_scale = float(init_scale)
        hot = hot_id_lists(self.features, self.top_percent, counts, frequent_ids, num_hot, "AdaptiveTable")
        self.hot_list: List[int] = [int(h.numel()) for h in hot]
        starts = [0] + list(itertools.accumulate(sizes))[:-1]
        self.register_buffer("key_offsets", torch.tensor(starts, dtype=torch.long))
        keys = torch.cat([h + s for h, s in zip(hot, starts)])  # CPU; then the build's device
        keys = keys.to(torch.get_default_device())
        self.register_buffer("hot_keys", keys)  # sorted: fields in order, ids sorted within
        self.hot_weight = nn.Parameter(torch.empty(len(keys), dim))
        self.shared_weight = nn.Parameter(torch.empty(sum(m), dim))
        self.register_buffer("shared_rows_t", torch.tensor(m, dtype=torch.long))
        self.register_buffer("shared_offsets", torch.tensor([0] + m[:-1], dtype=torch.long).cumsum(0))
        self.hashes = HashFamily(1, seed=self.seed, salts=self.feature_names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.hot_weight, -self.init_scale, self.init_scale)
        nn.init.uniform_(self.shared_weight, -self.init_scale, self.init_scale)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "top_percent": self.top_percent, "shared_rows": list(self.shared_list),
                "num_hot": list(self.hot_list), "seed": self.seed, "init_scale": self.init_scale}

    def _hot_position(self, ids: Tensor, fields: Tensor) -> Tuple[Tensor, Tensor]:
        """``(pos, hit)``: each id's exclusive row (valid where ``hit``) by binary search."""
        keys = ids + self.key_offsets[fields]
        if self.hot_keys.numel() == 0:
            return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self.hot_keys, keys).clamp_(max=self.hot_keys.numel() - 1)
        return pos, self.hot_keys[pos] == keys

    def is_hot(self, ids: Tensor, fields: Tensor) -> Tensor:
        """``BoolTensor[N]``: whether each id owns an exclusive row."""
        return self._hot_position(ids, fields)[1]

    def shared_index(self, ids: Tensor, fields: Tensor) -> Tensor:
        """``LongTensor[N]``: each id's row of ``shared_weight`` (``h_f(x) mod M_f`` + offset)."""
        return self.hashes(ids, self.shared_rows_t[fields], fields=fields) + self.shared_offsets[fields]

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        out = F.embedding(self.shared_index(ids, fields), self.shared_weight)
        if self.hot_keys.numel():
            pos, hit = self._hot_position(ids, fields)
            out = out + F.embedding(pos, self.hot_weight) * hit.unsqueeze(-1).to(out.dtype)
        return out

    # ------------------------------------------------------------------ budgets
    @classmethod
    def budget_build(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> "AdaptiveTable":
        """The table at knob ``top_percent = value / 1e6`` (what :meth:`for_budget` solves)."""
        return cls(list(features), top_percent=value / PPM, **kwargs)

    @classmethod
    def knob_range(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """``top_percent`` in parts per million: ``(0, 1e6)``."""
        return 0, PPM

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, shared_fraction: float = 0.5,
                   **kwargs: Any) -> "AdaptiveTable":
        """Shared rows from ``shared_fraction`` of the budget, then the largest ``top_percent``.

        Granularity: one ppm of ``top_percent`` (at most one hot row per feature, ``4 D + 8`` bytes).
        """
        features = list(features)
        for k in cls.solved_knobs:
            kwargs.pop(k, None)
        if not 0.0 < shared_fraction <= 1.0:
            raise ValueError(f"adaptive: shared_fraction must be in (0, 1], got {shared_fraction}")
        dim = common_dim(features, "AdaptiveTable")
        sizes = [int(f.num_embeddings) for f in features]
        total = max(len(features), int(shared_fraction * budget_bytes) // (4 * dim))
        kwargs["shared_rows"] = allocate_rows(total, sizes, minimum=1)
        base = cls.budget_build(features, 0, **kwargs)
        fixed = module_bytes(base)
        if fixed > budget_bytes:
            raise budget_error(cls.method, fixed, budget_bytes, "shared rows alone")
        ranked = ranked_capacity(features, kwargs)
        lo, hi = cls.knob_range(features, budget_bytes, **kwargs)

        def bytes_of(v: int) -> int:
            hot = sum(min(int(v / PPM * n), cap) for n, cap in zip(sizes, ranked))
            return fixed + hot * (4 * dim + 8)

        return solve_knob(lambda v: cls.budget_build(features, v, **kwargs), budget_bytes, lo, hi,
                          method=cls.method, knob="top_percent", bytes_of=bytes_of)
