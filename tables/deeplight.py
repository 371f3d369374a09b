"""DeepLight: magnitude pruning of embedding values on a damped schedule (``deeplight``).

Deng et al., "DeepLight: Deep Lightweight Feature Interactions for Accelerating CTR Predictions in
Ad Serving", WSDM 2021; reference code Hsword/Hetu ``tools/EmbeddingMemoryCompression/methods/
layers/deeplight.py``, ``scheduler/deeplight.py`` and ``python/hetu/gpu_ops/Prune.py``.

Training is dense; every ``prune_every`` (10) optimizer steps the smallest-magnitude values of the
whole table are set to zero so that a fraction ``rate(n) = target * (1 - 0.99 ** (n / decay_steps))``
of them is zero (``decay_steps`` 100 in the reference). Pruned values are not frozen: the optimizer
may move them again and the next pruning step decides afresh (as the reference's
``set_less_than``). The schedule ends at ``stop_step = ceil(decay_steps * log(stop_deviation) /
log(0.99))`` (``stop_deviation`` 1e-3, the benchmark's), where ``rate`` is within
``stop_deviation * target`` of the target; from there on pruning uses the target itself.

:func:`export_deeplight` (or :meth:`DeepLightTable.export`) keeps exactly the ``kept`` largest
values in CSR form (:class:`DeepLightCSRTable`): fp32 values, ``uint8`` column indices (``int16``
when ``D > 256``) and ``int32`` row offsets (``int64`` past 2**31 values). Its lookups equal the
dense table with everything else zeroed.

Example::

    >>> from slimembed.tables import Feature
    >>> from slimembed.tables.deeplight import DeepLightTable
    >>> t = DeepLightTable([Feature("a", 100, 8)], kept=200)
    >>> t.export().inference_bytes() == 200 * (4 + 1) + 4 * 101
    True
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, device_constant
from .feature import Feature
from .inference_budget import InferenceBudget
from .registry import register


def csr_bytes(rows: int, dim: int, kept: int) -> int:
    """Bytes of a CSR table: ``kept`` fp32 values + their column indices + ``rows + 1`` offsets."""
    col = 1 if dim <= 256 else 2
    ptr = 4 if kept < 2**31 else 8
    return int(kept) * (4 + col) + (int(rows) + 1) * ptr


class _FusedRows:
    """Shared bits: features of one dim in one fused ``[R, D]`` id space."""

    def _setup_rows(self, features: Sequence[Feature]) -> int:
        dims = {f.embedding_dim for f in features}
        if len(dims) != 1:
            raise ValueError(f"{type(self).__name__} needs one embedding_dim for all features, got "
                             f"{sorted(dims)}; build one table per dim")
        rows = [int(f.num_embeddings) for f in features]
        self._row_offset_list = [0] + list(itertools.accumulate(rows))[:-1]  # Python ints: meta builds too
        self.num_rows = sum(rows)
        return dims.pop()

    def rows_of(self, ids: Tensor, fields: Tensor) -> Tensor:
        """Fused row of each id: ``[N]``."""
        offs = device_constant(self, "row_offsets", ids.device, self._row_offset_list)  # type: ignore[arg-type]
        return ids + offs[fields]


@register("deeplight")
class DeepLightTable(InferenceBudget, _FusedRows, EmbeddingTable):
    """DeepLight (WSDM 2021): a dense table pruned by magnitude to ``kept`` values while training.

    Args:
        features: the features (one shared ``embedding_dim``).
        kept: values kept after the schedule and in the export (the budget's knob); default
            ``density`` of all values.
        density: kept fraction when ``kept`` is not given (default 0.25).
        stop_deviation: 1e-3 (benchmark): the schedule ends when ``rate`` is this close
            (relatively) to the target.
        decay_steps: the schedule's time constant, 100 steps (reference). ``end_step`` instead
            sets it so the schedule ends at that step (the reference's ~68.7k steps are more than
            a small dataset trains for).
        prune_every: prune every this many steps (10, reference).
        sparse: sparse row gradients. init_scale: uniform init half-width (``docs/architecture.md``
            §3; the reference uses Xavier-normal).

    Memory: ``memory_report`` counts the dense fp32 ``weight`` a training table holds (all of it
    is :meth:`training_only_bytes`); :meth:`inference_bytes` is the CSR export's
    (:func:`csr_bytes`), what budgets bound. Trainer contract: call :meth:`post_step` after
    every optimizer step (it advances the schedule and prunes).

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.
    """

    method = "deeplight"
    budget_knob: ClassVar[Optional[str]] = "kept"
    solved_knobs: ClassVar[Tuple[str, ...]] = ("kept", "density")
    search_space: ClassVar[Dict[str, Any]] = {"prune_every": [10, 100]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False  # the export is a CSR table, not a gather table
    supports_sparse: ClassVar[bool] = True
    not_shardable_reason: ClassVar[Optional[str]] = (
        "global magnitude pruning needs every shard's values to pick the threshold")

    def __init__(self, features: Sequence[Feature], kept: Optional[int] = None, density: float = 0.25,
                 stop_deviation: float = 1e-3, decay_steps: float = 100.0, end_step: Optional[int] = None,
                 prune_every: int = 10, sparse: bool = False, init_scale: float = DEFAULT_INIT_SCALE) -> None:
        super().__init__(features)
        d = self._setup_rows(self.features)
        total = self.num_rows * d
        if kept is None:
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"density must be in [0, 1], got {density!r}")
            kept = int(round(density * total))
        if not 0 <= int(kept) <= total:
            raise ValueError(f"kept must be in [0, {total}] (values of the table), got {kept!r}")
        if not 0.0 < stop_deviation < 1.0:
            raise ValueError(f"stop_deviation must be in (0, 1), got {stop_deviation!r}")
        if int(prune_every) < 1:
            raise ValueError(f"prune_every must be >= 1, got {prune_every!r}")
        self.kept = int(kept)
        self.stop_deviation = float(stop_deviation)
        self.end_step = None if end_step is None else int(end_step)
        if end_step is not None:
            if int(end_step) < 1:
                raise ValueError(f"end_step must be >= 1, got {end_step!r}")
            decay_steps = int(end_step) * math.log(0.99) / math.log(self.stop_deviation)
        if not decay_steps > 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps!r}")
        self.decay_steps = float(decay_steps)
        self.prune_every = int(prune_every)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        self.weight = nn.Parameter(torch.empty(self.num_rows, d))
        self.register_buffer("prune_step", torch.zeros((), dtype=torch.long))
        if not self.weight.is_meta:
            nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    @property
    def target_sparsity(self) -> float:
        """Fraction of values zero at the end: ``1 - kept / (R * D)``."""
        return 1.0 - self.kept / self.weight.numel() if self.weight.numel() else 0.0

    @property
    def stop_step(self) -> int:
        """The step where ``1 - 0.99 ** (n / decay_steps) >= 1 - stop_deviation``."""
        return math.ceil(self.decay_steps * math.log(self.stop_deviation) / math.log(0.99))

    def rate_at(self, step: int) -> float:
        """The scheduled pruned fraction after ``step`` optimizer steps."""
        if step >= self.stop_step:
            return self.target_sparsity
        return self.target_sparsity * (1.0 - 0.99 ** (step / self.decay_steps))

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return F.embedding(self.rows_of(ids, fields), self.weight, sparse=self.sparse)

    @torch.no_grad()
    def prune_to(self, rate: float) -> None:
        """Zero the ``round(rate * R * D)`` smallest-magnitude values (ties: lowest index first)."""
        flat = self.weight.view(-1)
        k = int(round(rate * flat.numel()))
        if k <= 0:
            return
        drop = torch.topk(flat.abs(), k, largest=False, sorted=False).indices
        flat.index_fill_(0, drop, 0.0)

    @torch.no_grad()
    def post_step(self) -> None:
        """Call after each optimizer step (the trainer does): advance the schedule and, every
        ``prune_every`` steps (and at ``stop_step``), prune to the scheduled rate."""
        self.prune_step += 1
        n = int(self.prune_step)
        if n % self.prune_every == 0 or n == self.stop_step:
            self.prune_to(self.rate_at(n))

    @torch.no_grad()
    def masked_weight(self) -> Tensor:
        """``[R, D]``: the ``kept`` largest-magnitude values, every other value zero (what the
        export stores)."""
        flat = self.weight.detach().reshape(-1)
        out = torch.zeros_like(flat)
        if self.kept:
            keep = torch.topk(flat.abs(), self.kept, largest=True, sorted=False).indices
            out[keep] = flat[keep]
        return out.view_as(self.weight)

    def export(self) -> "DeepLightCSRTable":
        """The CSR inference table of :meth:`masked_weight` (eval mode)."""
        return DeepLightCSRTable.from_dense(self.features, self.masked_weight()).eval()

    # ------------------------------------------------------------------ memory and budgets
    def training_only_bytes(self) -> int:
        """The dense fp32 ``weight`` (+ the step counter): none of it is needed after export."""
        return self.weight.numel() * self.weight.element_size() + self.prune_step.element_size()

    def inference_bytes(self) -> int:
        """Bytes of the CSR export: :func:`csr_bytes`."""
        return csr_bytes(self.num_rows, self.weight.shape[1], self.kept)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "kept": self.kept, "stop_deviation": self.stop_deviation,
                "decay_steps": self.decay_steps, "prune_every": self.prune_every, "sparse": self.sparse,
                "init_scale": self.init_scale}

    @classmethod
    def knob_range(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        return 0, sum(int(f.num_embeddings) * int(f.embedding_dim) for f in features)

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        """``kept -> csr_bytes``: budgets bound the CSR export (:meth:`inference_bytes`)."""
        rows, dim = sum(int(f.num_embeddings) for f in features), int(features[0].embedding_dim)
        return lambda v: csr_bytes(rows, dim, v)


@register("deeplight-csr")
class DeepLightCSRTable(_FusedRows, EmbeddingTable):
    """The exported DeepLight table: kept values in CSR form, inference only.

    Buffers: ``values`` fp32 ``[nnz]``, ``cols`` ``uint8``/``int16`` ``[nnz]``, ``row_ptr``
    ``int32``/``int64`` ``[R + 1]``; :func:`csr_bytes` is their size (``memory_report`` adds the
    base class's 8-byte-per-feature id limits). Built by :meth:`DeepLightTable.export` (or
    :meth:`from_dense`); ``DeepLightCSRTable(features, nnz)`` builds an empty one of that shape
    that ``load_state_dict`` fills (config round trip).
    """

    method = "deeplight-csr"
    budget_knob: ClassVar[Optional[str]] = None
    solved_knobs: ClassVar[Tuple[str, ...]] = ()
    search_space: ClassVar[Dict[str, Any]] = {}
    not_swept_reason: ClassVar[Optional[str]] = "export-only: built from a trained deeplight table"
    trainable: ClassVar[bool] = False
    quantizable: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    not_shardable_reason: ClassVar[Optional[str]] = "CSR rows are not a torchrec-shardable weight"

    def __init__(self, features: Sequence[Feature], nnz: int) -> None:
        super().__init__(features)
        self.dim = self._setup_rows(self.features)
        self.nnz = int(nnz)
        col_t = torch.uint8 if self.dim <= 256 else torch.int16
        ptr_t = torch.int32 if self.nnz < 2**31 else torch.int64
        self.register_buffer("values", torch.zeros(self.nnz))
        self.register_buffer("cols", torch.zeros(self.nnz, dtype=col_t))
        self.register_buffer("row_ptr", torch.zeros(self.num_rows + 1, dtype=ptr_t))

    @classmethod
    def from_dense(cls, features: Sequence[Feature], dense: Tensor) -> "DeepLightCSRTable":
        """CSR of ``dense [R, D]`` (its non-zero values)."""
        nz = dense.nonzero()  # row-major order: rows ascending, columns ascending within a row
        table = cls(features, nz.shape[0]).to(dense.device)
        counts = torch.bincount(nz[:, 0], minlength=dense.shape[0])
        table.values.copy_(dense[nz[:, 0], nz[:, 1]])
        table.cols.copy_(nz[:, 1].to(table.cols.dtype))
        table.row_ptr[1:] = counts.cumsum(0).to(table.row_ptr.dtype)
        return table

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "DeepLightCSRTable":
        raise ValueError("method 'deeplight-csr' is exported from a trained deeplight table; "
                         "size 'deeplight' with the budget instead")

    def inference_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.values, self.cols, self.row_ptr))

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "nnz": self.nnz}

    def dense_rows(self, rows: Tensor) -> Tensor:
        """Rows ``rows [N]`` expanded from CSR: ``[N, D]`` (vectorized, no per-row loop)."""
        ptr = self.row_ptr.long()
        start = ptr.index_select(0, rows)
        cnt = ptr.index_select(0, rows + 1) - start
        out = self.values.new_zeros(rows.numel(), self.dim)
        total = int(cnt.sum())
        if total == 0:
            return out
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), cnt)
        first = torch.cumsum(cnt, 0) - cnt  # where each row's entries begin in the gathered list
        pos = start.index_select(0, owner) + torch.arange(total, device=rows.device) - first.index_select(0, owner)
        out[owner, self.cols.index_select(0, pos).long()] = self.values.index_select(0, pos)
        return out

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self.dense_rows(self.rows_of(ids, fields))


def export_deeplight(table: DeepLightTable) -> DeepLightCSRTable:
    """:meth:`DeepLightTable.export`: the CSR inference table of a trained DeepLight table."""
    if not isinstance(table, DeepLightTable):
        raise TypeError(f"export_deeplight takes a DeepLightTable, got {type(table).__name__}")
    return table.export()
