"""The table protocol every compressor implements (``docs/architecture.md`` §2).

A method subclasses :class:`EmbeddingTable` and implements one hook, :meth:`EmbeddingTable.embed`
(ids of any fields -> rows). The base class turns that into both input forms:

* dense ids ``LongTensor[B, F]`` -> ``FloatTensor[B, F, D]`` (one call for all fields);
* a torchrec ``KeyedJaggedTensor`` -> a ``KeyedTensor`` pooled per feature (torchrec semantics),

and :class:`TableEmbeddingBag` turns a one-feature table into an ``nn.EmbeddingBag`` drop-in.
Gather-based methods may override :meth:`EmbeddingTable.pool` with a fused ``embedding_bag``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .feature import Feature, check_features

try:  # torchrec is optional at import time; the KJT path needs it.
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

    HAVE_TORCHREC = True
except Exception:  # pragma: no cover - exercised only without torchrec
    HAVE_TORCHREC = False
    KeyedJaggedTensor = KeyedTensor = None  # type: ignore[assignment,misc]

    class EmbeddingBagCollectionInterface(nn.Module):  # type: ignore[no-redef]
        """Stand-in with torchrec's interface when torchrec is not installed."""


DEFAULT_INIT_SCALE = 0.05  # docs/architecture.md §3: uniform ±0.05 trains far better under Adam than N(0, 1)


def device_constant(module: nn.Module, key: str, device: torch.device, values: Sequence[int]) -> Tensor:
    """A constant int64 index tensor of ``values`` on ``device``, built once per device and cached.

    For small fixed index lists a lookup needs on the inputs' device (e.g. the columns of a field
    group): indexing with a Python list, or ``nonzero()`` of a mask buffer, would copy host to
    device (or sync the device) every batch. Not a buffer on purpose: memory accounting (and so
    every budget solve) stays what it was; the cache is a few int64 per device.
    """
    cache = module.__dict__.get("_device_constants")
    if cache is None:
        cache = {}
        module.__dict__["_device_constants"] = cache
    k = (key, str(device))
    t = cache.get(k)
    if t is None:
        t = torch.tensor(list(values), dtype=torch.long, device=device)
        cache[k] = t
    return t


class EmbeddingTable(EmbeddingBagCollectionInterface):
    """Base of every slimembed table: a collection of features with one ``forward``.

    Subclasses set ``method`` (the registry name) and implement :meth:`embed`.
    ``needs_range`` says whether ids must lie in ``[0, num_embeddings)`` of their feature
    (vocabulary methods) or may be any int64 (hashing methods); out-of-range ids raise a
    ``ValueError`` naming the feature and the value.

    Everything the rest of the package needs to know about a method lives on its class
    (``docs/architecture.md`` §3), so adding a method is one file in ``tables/``:

    * budgets: ``budget_knob`` (the constructor argument :meth:`for_budget` solves; ``None``: not
      budgetable), ``solved_knobs`` (arguments a budget sets; passing them to ``for_budget`` is
      ignored, or refused with ``TypeError`` when ``refuse_solved_knobs``), ``knob_increasing``,
      and the hooks :meth:`knob_range`, :meth:`budget_build`, optionally :meth:`knob_bytes_fn`;
    * sweeps: ``search_space`` (default knobs, :mod:`slimembed.search.space` format) and
      ``not_swept_reason`` (why sweeps leave the method out);
    * ``trainable`` (``False``: an export-only kind, left out of ``available_methods()``),
      ``quantizable`` (``tables.quantized.export`` takes it), ``supports_sparse`` (the
      constructor takes ``sparse=True``), ``not_shardable_reason`` (``None``: DMP shards it).

    Example::

        >>> from slimembed.tables import Feature, make_table
        >>> t = make_table("full", [Feature("a", 10, 4), Feature("b", 20, 4)])
        >>> t(torch.tensor([[1, 2], [3, 19]])).shape
        torch.Size([2, 2, 4])
    """

    method: ClassVar[str] = "base"
    needs_range: ClassVar[bool] = True
    # ---- method facts (read by search/, ctr/ and the quantizer; docs/architecture.md §3)
    budget_knob: ClassVar[Optional[str]] = None
    solved_knobs: ClassVar[Tuple[str, ...]] = ()
    refuse_solved_knobs: ClassVar[bool] = False
    knob_increasing: ClassVar[bool] = True
    #: why :meth:`for_budget` refuses when ``budget_knob`` is None ({method}, {budget} filled in)
    budget_refusal: ClassVar[str] = "method {method!r} is not sized by a budget (budget {budget} bytes)"
    search_space: ClassVar[Dict[str, Any]] = {}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    not_shardable_reason: ClassVar[Optional[str]] = None
    #: which bytes a budget bounds: "memory" (memory_report) or "inference" (budgeted_bytes())
    budget_counts: ClassVar[str] = "memory"

    def __init__(self, features: Sequence[Feature]) -> None:
        nn.Module.__init__(self)
        self.features: List[Feature] = check_features(features)
        self.validate_ids = True
        # Row limits for validation; int64 holds 2**63 - 1 at most, which is "any id".
        limits = [min(int(f.num_embeddings), 2**63 - 1) for f in self.features]
        self.register_buffer("_id_limits", torch.tensor(limits, dtype=torch.long), persistent=False)
        self._pool_modes = [f.pooling for f in self.features]

    # ------------------------------------------------------------------ contract
    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.features]

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def output_dims(self) -> List[int]:
        """Output dimension per feature (after any padding/projection the table applies)."""
        return [f.embedding_dim for f in self.features]

    @property
    def embedding_dim(self) -> int:
        """The common output dim ``D`` of the dense form; errors if features differ."""
        dims = set(self.output_dims)
        if len(dims) != 1:
            raise ValueError(f"{type(self).__name__} has per-feature dims {self.output_dims}")
        return dims.pop()

    def full_bytes(self) -> int:
        """Bytes of the uncompressed fp32 table with the same features and dims."""
        return sum(int(f.num_embeddings) * int(f.embedding_dim) * 4 for f in self.features)

    def config(self) -> Dict[str, Any]:
        """A plain dict that :func:`slimembed.tables.make_table_from_config` rebuilds."""
        return {"method": self.method, "features": [f.to_dict() for f in self.features]}

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        """Rows for ids of any fields.

        Args:
            ids: ``LongTensor[N]`` ids (already validated).
            fields: ``LongTensor[N]`` field index of each id, in ``[0, F)``.
        Returns:
            ``FloatTensor[N, D]``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ budgets
    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """``(lo, hi)`` of ``budget_knob`` for ``features`` under ``budget_bytes``; ``lo`` (``hi``
        when not ``knob_increasing``) is the cheapest setting."""
        raise NotImplementedError(f"{cls.__name__} sets budget_knob but not knob_range")

    @classmethod
    def budget_build(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> "EmbeddingTable":
        """The table at ``budget_knob = value`` (what :meth:`for_budget` solves)."""
        return cls(list(features), **{cls.budget_knob or "": value}, **kwargs)

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Optional[Callable[[int], int]]:
        """A closed-form ``knob -> memory_report(table).total_bytes``, or ``None`` (then the
        solver measures meta-device builds)."""
        return None

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "EmbeddingTable":
        """The table whose ``budget_knob`` gives the most memory ``<= budget_bytes``.

        The one budget solver of every method (``docs/architecture.md`` §2): the method gives
        its knob's range (:meth:`knob_range`), how to build at a knob value
        (:meth:`budget_build`) and, where it has one, a closed-form byte count
        (:meth:`knob_bytes_fn`); :func:`slimembed.tables.budget.solve_knob` bisects. The result
        carries ``budget_solution`` (``value``, ``bytes``, ``next_bytes``).

        Raises:
            ValueError: the method is not budgetable, or the budget is below its minimum.
            TypeError: a solved knob was passed and the method refuses it.
        """
        from .budget import solve_knob

        if cls.budget_knob is None:
            raise ValueError(cls.budget_refusal.format(method=cls.method, budget=int(budget_bytes)))
        features = list(features)
        for k in cls.solved_knobs:
            if k in kwargs:
                if cls.refuse_solved_knobs:
                    solved = " and ".join(repr(s) for s in cls.solved_knobs)
                    raise TypeError(f"for_budget solves {solved}; do not pass {k!r}")
                kwargs.pop(k)
        lo, hi = cls.knob_range(features, int(budget_bytes), **kwargs)
        bytes_of = cls.knob_bytes_fn(features, **kwargs)
        by_memory = cls.budget_counts == "memory"
        if bytes_of is None and not by_memory:  # measure budgeted_bytes of meta-device builds
            def bytes_of(v: int) -> int:
                with torch.device("meta"):
                    return cls.budget_build(features, v, **kwargs).budgeted_bytes()
        table = solve_knob(lambda v: cls.budget_build(features, v, **kwargs), budget_bytes, lo, hi,
                           method=cls.method, knob=cls.budget_knob, bytes_of=bytes_of,
                           increasing=cls.knob_increasing, check=by_memory)
        if not by_memory and table.budgeted_bytes() > budget_bytes:  # guards a wrong knob_bytes_fn
            raise AssertionError(f"{cls.method}: {table.budgeted_bytes()} inference bytes > budget "
                                 f"{int(budget_bytes)}")
        return table

    def budgeted_bytes(self) -> int:
        """The bytes a budget bounds: parameters + buffers (``budget_counts = "memory"``), or the
        inference footprint for tables that train with more (:class:`.inference_budget.InferenceBudget`)."""
        from .budget import module_bytes

        return module_bytes(self)

    # ------------------------------------------------------------------ distribution
    def why_not_shardable(self) -> Optional[str]:
        """``None`` when torchrec's DMP can shard this table, else why not, in words."""
        return type(self).not_shardable_reason

    @classmethod
    def why_not_shardable_config(cls, cfg: Mapping[str, Any]) -> Optional[str]:
        """:meth:`why_not_shardable` from a table config (before any data is read)."""
        return cls.not_shardable_reason

    def dense_rows(self) -> Optional[Tensor]:
        """The ``[N, d]`` row parameter of a one-feature table that stores one row per id (the
        drop-in's ``weight`` and ``_weight``), or ``None`` when rows are not stored that way."""
        return None

    # ------------------------------------------------------------------ validation
    def check_ids(self, ids: Tensor, fields: Optional[Tensor] = None) -> None:
        """Raise ``ValueError`` naming the feature and value of the first bad id.

        ``ids`` is ``[B, F]`` (then ``fields`` is None) or ``[N]`` with ``fields[N]``.
        """
        if not self.validate_ids or ids.numel() == 0:
            return
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be an integer tensor (int64), got dtype {ids.dtype}")
        limits = self._id_limits if fields is None else self._id_limits[fields]
        if self.needs_range:
            bad = (ids < 0) | (ids >= limits)
        else:
            bad = ids < 0
        if bool(bad.any()):
            pos = int(bad.reshape(-1).nonzero()[0, 0])
            value = int(ids.reshape(-1)[pos])
            f = pos % self.num_features if fields is None else int(fields[pos])
            feat = self.features[f]
            allowed = (
                f"[0, {feat.num_embeddings})" if self.needs_range else "non-negative int64 ids"
            )
            raise ValueError(
                f"{type(self).__name__}: feature {feat.name!r} got id {value}; allowed: {allowed}"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, features: Union[Tensor, "KeyedJaggedTensor"]) -> Any:
        """Dense ids ``LongTensor[B, F]`` -> ``[B, F, D]``; a ``KeyedJaggedTensor`` -> ``KeyedTensor``."""
        if isinstance(features, Tensor):
            if features.dim() != 2 or features.shape[1] != self.num_features:
                raise ValueError(
                    f"dense ids must be LongTensor[B, {self.num_features}] "
                    f"(features {self.feature_names}), got shape {tuple(features.shape)}"
                )
            self.check_ids(features)
            return self.forward_dense(features)
        if HAVE_TORCHREC and isinstance(features, KeyedJaggedTensor):
            return self.forward_kjt(features)
        raise TypeError(
            f"{type(self).__name__}.forward takes LongTensor[B, F] or a KeyedJaggedTensor, "
            f"got {type(features).__name__}"
        )

    def field_index(self, batch_size: int, device: torch.device) -> Tensor:
        """``LongTensor[B * F]``: the field of each element of a flattened ``[B, F]`` id batch."""
        return torch.arange(self.num_features, device=device).repeat(batch_size)

    def forward_dense(self, ids: Tensor) -> Tensor:
        """``LongTensor[B, F]`` -> ``FloatTensor[B, F, D]`` in one call for all fields."""
        b, f = ids.shape
        rows = self.embed(ids.reshape(-1), self.field_index(b, ids.device))
        return rows.view(b, f, rows.shape[-1])  # explicit D: B = 0 has no -1 to infer

    def pool(
        self,
        ids: Tensor,
        fields: Tensor,
        offsets: Tensor,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """Sum-pool the rows of ``ids`` into bags.

        Args:
            ids: ``[N]``; fields: ``[N]``; offsets: ``[n_bags + 1]`` (last offset included);
            per_sample_weights: ``[N]`` or None.
        Returns:
            ``[n_bags, D]``; empty bags give zeros.
        """
        rows = self.embed(ids, fields)
        index = torch.arange(ids.numel(), device=ids.device)
        return F.embedding_bag(
            index, rows, offsets, mode="sum", per_sample_weights=per_sample_weights,
            include_last_offset=True,
        )

    def forward_kjt(self, kjt: "KeyedJaggedTensor") -> "KeyedTensor":
        """Pool each feature's bags with torchrec's semantics; output keyed by feature name.

        Returns a ``KeyedTensor`` with values ``[B, sum(output_dims)]``.
        """
        names = self.feature_names
        keys = kjt.keys()
        if keys != names:
            missing = [n for n in names if n not in keys]
            if missing:
                raise ValueError(f"KeyedJaggedTensor lacks features {missing}; it has {keys}")
            kjt = kjt.permute([keys.index(n) for n in names])
        values = kjt.values()
        lengths = kjt.lengths()
        b = kjt.stride()
        nf = self.num_features
        per_key = torch.tensor(kjt.length_per_key(), device=values.device)
        fields = torch.repeat_interleave(torch.arange(nf, device=values.device), per_key)
        self.check_ids(values, fields)
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=values.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        pooled = self.pool(values, fields, offsets, kjt.weights_or_none())  # [F * B, D]
        if "mean" in self._pool_modes:
            mean_bag = torch.tensor(
                [m == "mean" for m in self._pool_modes], device=values.device
            ).repeat_interleave(b)
            denom = torch.where(mean_bag, lengths.clamp(min=1), torch.ones_like(lengths))
            pooled = pooled / denom.unsqueeze(1).to(pooled.dtype)
        out = self.bags_to_keyed(pooled, b)
        return KeyedTensor(keys=names, length_per_key=self.output_dims, values=out)

    def bags_to_keyed(self, pooled: Tensor, batch_size: int) -> Tensor:
        """``[F * B, D]`` key-major bags -> ``[B, F * D]`` (equal dims)."""
        d = pooled.shape[1]
        return pooled.view(self.num_features, batch_size, d).transpose(0, 1).reshape(batch_size, self.num_features * d)

    def bag(
        self,
        ids: Tensor,
        offsets: Tensor,
        mode: str,
        per_sample_weights: Optional[Tensor],
        padding_idx: Optional[int],
    ) -> Tensor:
        """``nn.EmbeddingBag`` semantics over :meth:`embed` for a one-feature table.

        ``offsets`` includes the last offset. Padding ids are pointed at an appended zero row that
        ``embedding_bag`` skips, so they count neither in sums nor in means.
        """
        rows = self.embed(ids, torch.zeros_like(ids))
        index = torch.arange(ids.numel(), device=ids.device)
        pad = None
        if padding_idx is not None:
            pad = rows.shape[0]
            rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
            index = torch.where(ids == padding_idx, torch.full_like(index, pad), index)
        return F.embedding_bag(
            index, rows, offsets, mode=mode, per_sample_weights=per_sample_weights,
            include_last_offset=True, padding_idx=pad,
        )

    # ------------------------------------------------------------------ torchrec interface
    def embedding_bag_configs(self) -> List["EmbeddingBagConfig"]:
        """One logical config per feature, with the output dims models see."""
        if not HAVE_TORCHREC:  # pragma: no cover
            raise RuntimeError("torchrec is not installed")
        return [
            EmbeddingBagConfig(
                num_embeddings=min(int(f.num_embeddings), 2**62),
                embedding_dim=d,
                name=f"t_{f.name}",
                feature_names=[f.name],
                pooling=PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM,
            )
            for f, d in zip(self.features, self.output_dims)
        ]

    def is_weighted(self) -> bool:
        return False

    def extra_repr(self) -> str:
        return f"method={self.method!r}, features={len(self.features)}, dims={sorted(set(self.output_dims))}"


class TableEmbeddingBag(nn.Module):
    """``nn.EmbeddingBag`` drop-in over a one-feature :class:`EmbeddingTable`.

    Forward signature and semantics follow ``nn.EmbeddingBag``: ``input`` is ``[B, L]`` (fixed
    bags, ``offsets=None``) or ``[N]`` with ``offsets[B]`` (``[B + 1]`` with
    ``include_last_offset``); modes ``sum``/``mean``/``max``; ``per_sample_weights`` only with
    ``sum``; ids equal to ``padding_idx`` are left out of their bag; empty bags give zeros.
    Returns ``[B, D]``.
    """

    def __init__(
        self,
        table: EmbeddingTable,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
    ) -> None:
        super().__init__()
        if table.num_features != 1:
            raise ValueError("TableEmbeddingBag wraps a one-feature table")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        n = table.features[0].num_embeddings
        if padding_idx is not None:
            if padding_idx < 0:
                padding_idx += n
            if not 0 <= padding_idx < n:
                raise ValueError(f"padding_idx must be within num_embeddings={n}, got {padding_idx}")
        self.table = table
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.padding_idx = padding_idx

    @property
    def num_embeddings(self) -> int:
        return int(self.table.features[0].num_embeddings)

    @property
    def embedding_dim(self) -> int:
        return self.table.output_dims[0]

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2D [B, L]")
            b, length = input.shape
            offsets = torch.arange(0, b * length, max(length, 1), device=input.device)[:b]
            input = input.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
            include_last = False
        elif input.dim() == 1:
            if offsets is None or offsets.dim() != 1:
                raise ValueError("offsets has to be a 1D Tensor when input is 1D")
            include_last = self.include_last_offset
        else:
            raise ValueError(f"input has to be 1D or 2D, got shape {tuple(input.shape)}")
        if per_sample_weights is not None and self.mode != "sum":
            raise NotImplementedError(
                f"per_sample_weights was provided with mode={self.mode!r}; only 'sum' supports it"
            )
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(
                f"per_sample_weights shape {tuple(per_sample_weights.shape)} must match input "
                f"shape {tuple(input.shape)}"
            )
        offsets = offsets.to(torch.long)
        if not include_last:
            offsets = torch.cat([offsets, offsets.new_tensor([input.numel()])])
        fields = torch.zeros_like(input, dtype=torch.long)
        self.table.check_ids(input.to(torch.long), fields)
        return self.table.bag(
            input.to(torch.long), offsets, self.mode, per_sample_weights, self.padding_idx
        )

