"""CAFE (Zhang et al., SIGMOD 2024): a HotSketch picks hot ids online; hot ids own rows, cold ids hash.

See :class:`CafeTable` (``make_table("cafe", ...)``) and ``docs/architecture.md §3``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable
from .budget import solve_knob
from .feature import Feature
from .gather import common_dim
from .hashing import HashFamily
from .registry import register


@register("cafe")
class CafeTable(EmbeddingTable):
    """CAFE: HotSketch-tracked hot ids own exclusive rows; cold ids share a hashed table.

    Speed: 0.27x of ``full`` per forward+backward on the CPU (``slimembed bench tables --methods
    cafe --compression 4 --threads 2``; docs/results/bench_tables_new.md): every training forward
    also updates the sketch (fingerprints, a sort by bucket, slot replacement) for the whole batch.

    **HotSketch.** ``num_buckets`` buckets of ``slots`` entries ``(key, score)``; an id's key is
    its 61-bit universal-hash fingerprint salted by its feature (two ids share a key with
    probability ``2**-61``), its bucket ``key mod num_buckets``. Each training forward inserts
    the batch (score = occurrences, i.e. frequency): a present key adds its count; an absent key
    takes the bucket's lowest-score slot with score ``old + count`` (Space-Saving); when several
    new keys of one bucket arrive in a batch, the most frequent one does (the others are dropped
    this batch, as if they had replaced each other). Slot ``s`` owns hot row ``s``; an id is **hot** while its key sits in a slot with
    ``score >= threshold``. Cold ids read row ``h(x) mod M`` of the shared table.

    **Promotion / demotion.** When a slot turns hot for a new key (or its key is replaced),
    its hot row is overwritten with the id's current cold row (the reference copies the hashed
    row), so the id's embedding is continuous at promotion; an evicted id simply reads its cold
    row again. The optimizer cannot be reached from a table: the hot row's optimizer moments are
    left as they are; :attr:`last_promoted` (``LongTensor`` of hot rows promoted by the last
    forward) lets a trainer reset them.

    Defaults from HugoZHL/CAFE: ``hash_rate = 0.3`` (the share of the budget given to the cold
    hashed table, as the issue's paper configuration), ``threshold = 500`` (``--sketch-threshold``
    default of its ``dlrm_s_pytorch.py``), ``slots = 4`` per bucket. Differences: the reference
    scores ids by gradient norm and keeps the sketch in C++; here the score is the count (no
    gradient hook needed) and the sketch is vectorized torch (buffers, in the state dict).

    Memory (``memory_report`` counts it all; the sketch is needed at inference to find hot rows):
    ``S * D * 4`` hot rows + ``S * 12`` sketch (int64 key, fp32 score) + ``M * D * 4`` cold rows
    + hash coefficients (``S = num_buckets * slots``). Vocabulary-free: raw 64-bit ids.

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = CafeTable([Feature("a", 2**63, 4)], num_buckets=8, cold_rows=16, threshold=2)
        >>> _ = t(torch.tensor([[2**40], [2**40]]))  # training forward: 2**40 reaches score 2
        >>> bool(t.hot_rows(torch.tensor([2**40]), torch.tensor([0]))[0][0])
        True
    """

    method: ClassVar[str] = "cafe"
    needs_range: ClassVar[bool] = False
    budget_knob: ClassVar[Optional[str]] = "num_buckets"
    solved_knobs: ClassVar[Tuple[str, ...]] = ("num_buckets", "cold_rows")
    search_space: ClassVar[Dict[str, Any]] = {"hash_rate": [0.2, 0.3, 0.5], "threshold": [100, 500]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    not_shardable_reason: ClassVar[Optional[str]] = "the sketch updates in forward and maps ids to rows: no EBC"

    def __init__(self, features: Sequence[Feature], num_buckets: int = 1024, cold_rows: int = 4096,
                 slots: int = 4, threshold: float = 500.0, seed: int = 0,
                 init_scale: float = DEFAULT_INIT_SCALE) -> None:
        super().__init__(features)
        dim = common_dim(self.features, "CafeTable")
        if min(int(num_buckets), int(cold_rows), int(slots)) < 1:
            raise ValueError(f"CafeTable: num_buckets, cold_rows, slots must be >= 1, got "
                             f"{num_buckets}, {cold_rows}, {slots}")
        self.num_buckets, self.cold_rows, self.slots = int(num_buckets), int(cold_rows), int(slots)
        self.threshold, self.seed, self.init_scale = float(threshold), int(seed), float(init_scale)
        s = self.num_buckets * self.slots
        self.hashes = HashFamily(2, seed=self.seed, salts=self.feature_names)  # 0: key, 1: cold row
        self.register_buffer("sketch_keys", torch.full((s,), -1, dtype=torch.long))
        self.register_buffer("sketch_scores", torch.zeros(s))
        self.hot_weight = nn.Parameter(torch.empty(s, dim))
        self.cold_weight = nn.Parameter(torch.empty(self.cold_rows, dim))
        self.last_promoted = torch.empty(0, dtype=torch.long)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.hot_weight, -self.init_scale, self.init_scale)
        nn.init.uniform_(self.cold_weight, -self.init_scale, self.init_scale)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "num_buckets": self.num_buckets, "cold_rows": self.cold_rows,
                "slots": self.slots, "threshold": self.threshold, "seed": self.seed,
                "init_scale": self.init_scale}

    # ------------------------------------------------------------------ sketch
    def keys_of(self, ids: Tensor, fields: Tensor) -> Tensor:
        """``LongTensor[N]``: the per-feature 61-bit fingerprint stored in the sketch."""
        return self.hashes.raw(ids, 0, fields=fields)

    def hot_rows(self, ids: Tensor, fields: Tensor) -> Tuple[Tensor, Tensor]:
        """``(hot [N] bool, slot [N])``: whether each id is hot now, and its slot (valid if hot)."""
        keys = self.keys_of(ids, fields)
        base = (keys % self.num_buckets) * self.slots
        cand = base.unsqueeze(1) + torch.arange(self.slots, device=ids.device)  # [N, c]
        match = self.sketch_keys[cand] == keys.unsqueeze(1)
        slot = base + match.to(torch.int8).argmax(1)
        return match.any(1) & (self.sketch_scores[slot] >= self.threshold), slot

    @torch.no_grad()
    def insert(self, ids: Tensor, fields: Tensor) -> Tensor:
        """Insert a batch into the HotSketch; returns the hot rows promoted (and re-initialised)."""
        if ids.numel() == 0:
            return ids.new_empty(0)
        keys = self.keys_of(ids, fields)
        uk, inv, cnt = torch.unique(keys, return_inverse=True, return_counts=True)
        first = torch.full_like(uk, ids.numel()).scatter_reduce_(0, inv, torch.arange(ids.numel(), device=ids.device), "amin")
        u_ids, u_fields, cnt = ids[first], fields[first], cnt.to(self.sketch_scores.dtype)
        c = self.slots
        base = (uk % self.num_buckets) * c
        cand = base.unsqueeze(1) + torch.arange(c, device=ids.device)
        old_keys, old_scores = self.sketch_keys.clone(), self.sketch_scores.clone()
        match = old_keys[cand] == uk.unsqueeze(1)
        present = match.any(1)
        slot = base + match.to(torch.int8).argmax(1)
        self.sketch_scores.index_add_(0, slot[present], cnt[present])
        # absent keys: by bucket, then by count (descending); the r-th takes the r-th lowest slot
        ab = (~present).nonzero().squeeze(1)
        ab = ab[torch.sort(cnt[ab], descending=True, stable=True).indices]
        ab = ab[torch.sort(base[ab], stable=True).indices]
        b_sorted = base[ab]
        rank = torch.arange(ab.numel(), device=ids.device) - torch.searchsorted(b_sorted, b_sorted)
        ok = rank == 0  # only a bucket's lowest slot is replaced (heavy keys are never evicted in bulk)
        ab = ab[ok]
        tgt = base[ab] + old_scores[cand[ab]].argmin(1)  # the lowest slot (an empty one scores 0)
        self.sketch_scores[tgt] = old_scores[tgt] + cnt[ab]
        self.sketch_keys[tgt] = uk[ab]
        # promotions: touched slots that are hot now but were not hot for this key before
        touched = torch.cat([slot[present], tgt])
        who = torch.cat([present.nonzero().squeeze(1), ab])
        was_hot = (old_scores[touched] >= self.threshold) & (old_keys[touched] == uk[who])
        now_hot = self.sketch_scores[touched] >= self.threshold
        promote = now_hot & ~was_hot
        rows, src = touched[promote], who[promote]
        self.hot_weight[rows] = self.cold_weight[self.cold_index(u_ids[src], u_fields[src])]
        return rows

    def cold_index(self, ids: Tensor, fields: Tensor) -> Tensor:
        """``LongTensor[N]``: each id's row of the shared cold table."""
        return self.hashes(ids, self.cold_rows, index=1, fields=fields)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        if self.training:
            self.last_promoted = self.insert(ids, fields)
        hot, slot = self.hot_rows(ids, fields)
        cold = F.embedding(self.cold_index(ids, fields), self.cold_weight)
        return torch.where(hot.unsqueeze(1), F.embedding(slot, self.hot_weight), cold)

    # ------------------------------------------------------------------ budgets
    @classmethod
    def knob_range(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        dim = common_dim(features, "CafeTable")
        return 1, max(1, budget_bytes // (int(kwargs.get("slots", 4)) * (4 * dim + 12)))

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, hash_rate: float = 0.3,
                   **kwargs: Any) -> "CafeTable":
        """``hash_rate`` of the budget to the cold table, then the most buckets (sketch + hot rows).

        Granularity: one bucket, ``slots * (4 D + 12)`` bytes.
        """
        features = list(features)
        for k in cls.solved_knobs:
            kwargs.pop(k, None)
        if not 0.0 < hash_rate < 1.0:
            raise ValueError(f"cafe: hash_rate must be in (0, 1), got {hash_rate}")
        dim = common_dim(features, "CafeTable")
        kwargs["cold_rows"] = max(1, int(hash_rate * budget_bytes) // (4 * dim))
        c = int(kwargs.get("slots", 4))
        fixed = kwargs["cold_rows"] * dim * 4 + 40 * len(features)  # + hash coefficients, id limits
        lo, hi = cls.knob_range(features, budget_bytes, **kwargs)
        return solve_knob(lambda v: cls.budget_build(features, v, **kwargs), budget_bytes, lo, hi,
                          method=cls.method, knob="num_buckets",
                          bytes_of=lambda v: fixed + v * c * (4 * dim + 12))
