"""Compositional embeddings from complementary partitions (Shi, Mudigere, Naumov, Yang, KDD 2020,
arXiv 1909.02107). :mod:`slimembed.tables.qr` is its two-partition quotient-remainder case.

An id ``x`` of a feature with ``N`` rows is split into ``k`` digits, one per partition, and each
digit indexes its own small table; the ``k`` rows are combined by ``mult`` (default), ``add`` or
``concat``. The partitions are *complementary*: the digit tuple is unique for every id in
``[0, N)``, so every id gets its own vector.

* ``partition="radix"`` (mixed radix, generalising QR): with radixes ``r_1..r_{k-1}``, digit
  ``j < k-1`` is ``(x // (r_1 ... r_j)) % r_{j+1}`` (a table of ``r_{j+1}`` rows) and the last
  digit ``x // (r_1 ... r_{k-1})`` (a table of ``ceil(N / prod r)`` rows). For ``k = 2`` this is
  QR with ``r_1`` collisions: remainder ``x % c``, quotient ``x // c``.
* ``partition="crt"`` (Chinese remainder): digit ``j`` is ``x mod m_j`` with pairwise coprime
  moduli (the given ones bumped to the next coprime integer), the last at least
  ``ceil(N / prod(m_1..m_{k-1}))``; their product is ``>= N`` so the digit tuple is unique.
"""

from __future__ import annotations

import bisect
import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE
from .budget import allocate_rows
from .feature import Feature
from .gather import GatherTable, common_dim
from .dropin import EmbeddingBag
from .registry import register
from .threshold import for_budget_with_threshold

OPERATIONS = ("mult", "add", "concat")
PARTITIONS = ("radix", "crt")


Radix = Tuple[int, ...]


def partition_sizes(n: int, radix: Sequence[int], partition: str = "radix") -> List[int]:
    """Table sizes of the ``len(radix) + 1`` partitions of ``[0, n)``.

    ``radix`` holds the first radixes (``"radix"``) or moduli (``"crt"``); the last partition takes
    what is left: ``ceil(n / prod(radix))`` rows (radix), or the smallest modulus at least that
    large and coprime to the others (crt; the others are bumped to be pairwise coprime).
    """
    radix = [int(r) for r in radix]
    if any(r < 1 for r in radix):
        raise ValueError(f"radixes must be >= 1, got {radix}")
    if partition == "radix":
        return radix + [max(1, -(-n // math.prod(radix)))]
    moduli: List[int] = []
    for j in range(len(radix) + 1):
        m = radix[j] if j < len(radix) else max(1, -(-n // math.prod(moduli)))
        while any(math.gcd(m, q) != 1 for q in moduli):
            m += 1
        moduli.append(m)
    return moduli


def partition_digits(n: int, radix: Sequence[int], partition: str = "radix") -> Tuple[List[int], List[int]]:
    """``(place, size)`` per partition so that ``digit_j = (x // place_j) % size_j``."""
    sizes = partition_sizes(n, radix, partition)
    if partition == "crt":
        return [1] * len(sizes), sizes
    place = [1]
    for r in sizes[:-1]:
        place.append(place[-1] * r)
    return place, sizes


@functools.lru_cache(maxsize=4096)
def budget_candidates(n: int, k: int, partition: str, operation: str
                      ) -> Tuple[Tuple[int, ...], Tuple[Radix, ...]]:
    """Radix tuples for a feature of ``n`` rows, sorted by memory: ``(costs, radixes)``.

    ``cost`` is the memory in ``D``-wide rows times ``k`` (an exact integer for concat too).
    Candidates: the uniform ``k``-partition radixes ``(r,) * (k-1)``, and for ``mult``/``add``
    also the two-partition (QR) ones ``(c,)``, whose larger tables use a generous budget better.
    """
    cands: Dict[int, Radix] = {}

    def add(rad: Radix) -> None:
        sizes = partition_sizes(n, rad, partition)
        c = sum(sizes) if operation == "concat" else sum(sizes) * k
        if c < n * k and c not in cands:  # only configurations smaller than the full table
            cands[c] = rad

    if k > 1:
        for r in range(2, int(round(n ** (1.0 / k))) + 3):
            add((r,) * (k - 1))
        if k > 2 and operation != "concat":
            for c in range(2, int(math.isqrt(n)) + 3):
                add((c,))
    costs = tuple(sorted(cands))
    return costs, tuple(cands[c] for c in costs)


@register("compositional")
class CompositionalTable(GatherTable):
    """``k`` complementary partitions per feature, rows combined by ``mult`` / ``add`` / ``concat``.

    Features with ``N_f <= threshold`` rows, or whose partitions would not be smaller than the
    full table, keep a plain table (id ``x`` -> its own row). All tables of all features live in
    one fused weight, so a lookup is one gather of ``k`` rows per id.

    Args:
        features: the features (one ``embedding_dim``; divisible by ``k`` for concat). Ids must
            lie in ``[0, N_f)`` (``needs_range``): out-of-range or negative ids raise, naming the
            feature and value.
        num_partitions: ``k`` (default 3).
        radix: per feature (an int or tuple for all, a list, or ``{name: ...}``): an int ``r``
            means ``k-1`` radixes/moduli ``r`` (digit tables of ``r`` rows, the last one takes the
            rest); a tuple ``(r_1, ..., r_j)`` with ``j <= k-1`` gives ``j + 1`` partitions (fewer
            than ``k`` only for mult/add: the unused slots are left out); ``None`` keeps the
            feature full. Default ``ceil(N_f ** (1/k))`` (about the smallest memory).
        operation: ``"mult"`` (default), ``"add"`` or ``"concat"`` (each part ``D/k`` wide, so the
            output dim stays ``D``).
        partition: ``"radix"`` (default) or ``"crt"``.
        threshold: features with at most this many rows stay full (DLRM's default 200).
        sparse: sparse row gradients.
        init_scale: ``s``; full rows and ``concat`` parts are uniform ``±s``; ``add`` parts
            ``±s/sqrt(k)``; ``mult`` parts uniform ``±sqrt(3) * (s/sqrt(3)) ** (1/k)`` so that the
            product of the ``k`` parts has the standard deviation of uniform ``±s`` (DLRM's
            ``U(sqrt(1/N), 1)`` init is not used: docs/architecture.md §3 asks for ±0.05-scale embeddings, and a
            product of k ±0.05 values would vanish).

    Memory: ``D * sum_j size_j`` floats per compressed feature (``D/k`` wide for concat),
    ``N_f * D`` per full one, plus per-feature index buffers (``place``, ``size``, ``offset``).

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.
    """

    method = "compositional"
    needs_range = True
    DEFAULT_PARTITIONS = 3
    budget_knob = "total_rows"
    solved_knobs = ("radix", "collisions")
    search_space = {"num_partitions": {"low": 2, "high": 4}, "operation": ["mult", "add", "concat"]}
    quantizable = True
    supports_sparse = True
    not_shardable_reason = ("k complementary partitions are gathered from one fused parameter and combined "
                            "per id (mult/add/concat) before pooling; a pooled torchrec lookup cannot express that")

    def __init__(
        self,
        features: Sequence[Feature],
        num_partitions: int = DEFAULT_PARTITIONS,
        radix: Union[int, Sequence[Any], Dict[str, Any], None] = None,
        operation: str = "mult",
        partition: str = "radix",
        threshold: int = 200,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, type(self).__name__)
        k = int(num_partitions)
        if k < 1:
            raise ValueError(f"num_partitions must be >= 1, got {k}")
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
        if operation == "concat" and dim % k:
            raise ValueError(f"operation='concat' needs embedding_dim divisible by {k}, got {dim}")
        for f in self.features:
            if int(f.num_embeddings) > 2**40:
                raise ValueError(
                    f"{type(self).__name__}: feature {f.name!r} has {f.num_embeddings} rows; "
                    "compositional embeddings need a vocabulary (use a hashing method)"
                )
        self.num_partitions = k
        self.operation = operation
        self.partition = partition
        self.threshold = int(threshold)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        self.combine_mode = {"mult": "mult", "add": "sum", "concat": "concat"}[operation]
        self.num_slots = k
        sizes_n = [int(f.num_embeddings) for f in self.features]
        if radix is None:
            rad: List[Any] = [max(2, math.ceil(n ** (1.0 / k) - 1e-9)) for n in sizes_n]
        elif isinstance(radix, dict):
            rad = [radix.get(f.name) for f in self.features]
        elif isinstance(radix, int):
            rad = [radix] * len(self.features)
        else:
            rad = list(radix)
            if len(rad) != len(self.features):
                raise ValueError(f"radix: got {len(rad)} values for {len(self.features)} features")
        u = k if operation == "concat" else 1  # weight rows per D-wide row
        width = dim // u
        place, size, off, direct, radixes, tables, parts = [], [], [], [], [], [], []
        base = 0
        for f, n, r in zip(self.features, sizes_n, rad):
            rt: Optional[Radix] = None
            if r is not None and k > 1 and n > self.threshold:
                rt = (int(r),) * (k - 1) if isinstance(r, int) else tuple(int(v) for v in r)
                if not 1 <= len(rt) <= k - 1 or (operation == "concat" and len(rt) != k - 1):
                    raise ValueError(
                        f"{type(self).__name__}: feature {f.name!r}: radix {r!r} must give "
                        f"{'exactly' if operation == 'concat' else 'at most'} {k - 1} radixes"
                    )
                pl, sz = partition_digits(n, rt, partition)
                if sum(sz) >= n * u:
                    rt = None  # not smaller than the full table: keep it full
            if rt is None:  # a plain table: u column blocks of N rows
                direct.append(True)
                radixes.append(None)
                tables.append([n])
                parts.append(1)
                place.append([1] * k)
                size.append([n] * k)  # concat: slot j reads column block j; else slot 0 only
                off.append([base + (j * n if u > 1 else 0) for j in range(k)])
                base += n * u
                continue
            kf = len(sz)
            direct.append(False)
            radixes.append(rt)
            tables.append(sz)
            parts.append(kf)
            place.append(pl + [1] * (k - kf))
            size.append(sz + [1] * (k - kf))
            o, acc = [], base
            for s_ in sz:
                o.append(acc)
                acc += s_
            off.append(o + [base] * (k - kf))  # unused slots read any row and are masked out
            base = acc
        self.radix_list = radixes
        self.table_sizes = tables
        self.parts = parts
        self._direct = direct
        self.register_buffer("place", torch.tensor(place, dtype=torch.long).reshape(-1, k))
        self.register_buffer("size", torch.tensor(size, dtype=torch.long).reshape(-1, k))
        self.register_buffer("offset", torch.tensor(off, dtype=torch.long).reshape(-1, k))
        self.register_buffer("direct", torch.tensor(direct, dtype=torch.bool), persistent=False)
        if operation in ("add", "mult") and any(p < k for p in parts):
            # slot j of a feature with fewer than j+1 partitions (a plain table reads slot 0 only)
            coef = [[1.0 if j < p else 0.0 for j in range(k)] for p in parts]
            self.register_buffer("slot_coef", torch.tensor(coef), persistent=False)
        else:
            self.slot_coef = None
        self.weight = nn.Parameter(torch.empty(base, width))
        self.reset_parameters()

    # ------------------------------------------------------------------ init / config
    def part_init_scale(self, parts: Optional[int] = None) -> float:
        """Uniform init bound of each of ``parts`` combined tables (see the class docstring)."""
        s = self.init_scale
        k = self.num_partitions if parts is None else parts
        if self.operation == "mult":
            return math.sqrt(3.0) * (s / math.sqrt(3.0)) ** (1.0 / k)
        if self.operation == "add":
            return s / math.sqrt(k)
        return s

    def reset_parameters(self) -> None:
        with torch.no_grad():
            u = self.num_partitions if self.operation == "concat" else 1
            base = 0
            for d, sz, p in zip(self._direct, self.table_sizes, self.parts):
                n = sz[0] * u if d else sum(sz)
                s = self.init_scale if d else self.part_init_scale(p)
                self.weight[base:base + n].uniform_(-s, s)
                base += n

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "num_partitions": self.num_partitions,
                "radix": [None if r is None else list(r) for r in self.radix_list],
                "operation": self.operation,
                "partition": self.partition, "threshold": self.threshold, "sparse": self.sparse,
                "init_scale": self.init_scale}

    @property
    def rows_per_feature(self) -> List[int]:
        return [sum(s) for s in self.table_sizes]

    # ------------------------------------------------------------------ lookup
    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        pf = self.per_field
        x = ids.unsqueeze(-1)
        digits = torch.remainder(torch.div(x, pf(self.place, fields), rounding_mode="floor"),
                                 pf(self.size, fields))
        idx = digits + pf(self.offset, fields)
        coef = None
        if self.slot_coef is not None:
            coef = pf(self.slot_coef, fields)  # [F, k] broadcasts over a dense batch
        return idx, coef

    # ------------------------------------------------------------------ budgets
    @classmethod
    def _budget_radixes(cls, features: Sequence[Feature], total: int, k: int, operation: str,
                        partition: str, threshold: int) -> List[Optional[Radix]]:
        """Per-feature radix for ``total`` D-wide rows split over the compressible features."""
        comp = [i for i, f in enumerate(features) if int(f.num_embeddings) > threshold and k > 1]
        sizes = [int(features[i].num_embeddings) for i in comp]
        alloc = allocate_rows(min(total, sum(sizes)), sizes, minimum=0, exact=False)
        rad: List[Optional[Radix]] = [None] * len(features)
        for i, n, a in zip(comp, sizes, alloc):
            if a >= n:
                continue  # full
            costs, rads = budget_candidates(n, k, partition, operation)
            if not costs:
                continue
            # the most memory that fits the allotment (monotone in it); else the smallest
            j = bisect.bisect_right(costs, a * k) - 1
            rad[i] = rads[max(j, 0)]
        return rad

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any):
        """The budget solve of :meth:`knob_range` with a budget-aware ``threshold``: DLRM's 200
        when small fields kept whole still fit, else the largest threshold that fits (down to 0,
        every field compressed); see :mod:`slimembed.tables.threshold`. An explicit ``threshold``
        is kept as given (a hard floor, named in the error)."""
        return for_budget_with_threshold(cls, super().for_budget, features, budget_bytes, "threshold", kwargs)

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """Knob ``total_rows``: the ``D``-wide rows granted to the compressible features (split
        proportionally to ``N_f``); each feature then takes the radixes with the most memory that
        fits its share (:func:`budget_candidates`), or stays full once its share covers ``N_f``.
        Granularity: a feature's memory moves in steps of one candidate (coarse near 2x for QR:
        ``N/2 + 2`` rows is the largest compressed QR table).
        """
        threshold = int(kwargs.get("threshold", 200))
        return 0, sum(int(f.num_embeddings) for f in features if int(f.num_embeddings) > threshold)

    @classmethod
    def budget_build(cls, features: Sequence[Feature], value: int, **kwargs: Any):
        """The table at knob ``total_rows = value`` (what :meth:`for_budget` solves)."""
        features = list(features)
        kwargs.pop("radix", None)
        kwargs.pop("collisions", None)
        if cls.method == "qr":
            kwargs["num_partitions"] = 2
        k = int(kwargs.get("num_partitions", cls.DEFAULT_PARTITIONS))
        rad = cls._budget_radixes(features, value, k, kwargs.get("operation", "mult"),
                                  kwargs.get("partition", "radix"), int(kwargs.get("threshold", 200)))
        return cls._make(features, k, rad, {key: v for key, v in kwargs.items() if key != "num_partitions"})

    @classmethod
    def _make(cls, features, k, rad, extra):
        return cls(features, num_partitions=k, radix=rad, **extra)


class CompositionalEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by :class:`CompositionalTable` (one feature).

    Args: ``nn.EmbeddingBag``'s, in its order (``max_norm``, ``scale_grad_by_freq``, ``_weight``
    raise ``NotImplementedError``), plus keyword-only ``num_partitions`` (3), ``radix`` (default
    ``ceil(N ** (1/k))``), ``operation`` (``"mult"``), ``partition`` (``"radix"``/``"crt"``),
    ``threshold`` (200). ``forward(input, offsets=None, per_sample_weights=None) -> [B, D]``.
    """

    fixed_method = "compositional"
