"""OptEmbed (Lyu et al., CIKM 2022): learnable row pruning + per-field dimension search.

The supernet table :class:`OptEmbedTable` holds one fused ``[sum_f N_f, D]`` weight for all
fields and, in the variants that prune rows, one learnable threshold per field (init 0). Row
``i`` of field ``f`` is kept iff ``||e_i||_p - t_f > 0`` (``p = 1`` by default, the reference
code's choice; ``p = 2`` is an option). The step function has the *long-tailed* straight-through
derivative of Dynamic Sparse Training (:class:`BinaryStep`)::

    forward  S(x) = 1[x > 0]
    backward dS/dx ~= 2 - 4|x|   for |x| <= 0.4
                      0.4        for 0.4 < |x| <= 1
                      0          for |x| > 1

so the BCE loss trains the thresholds (and pushes the row norms) through the mask, and
:meth:`OptEmbedTable.regularization` adds ``alpha * sum_f exp(-t_f)`` (it raises the thresholds,
i.e. prunes more). Pass it to the trainer as ``regularizer=optembed_regularizer``
(:func:`slimembed.search.optembed.optembed_regularizer`). Pruned rows give zero vectors.

Dimension masks keep the *first* ``k`` dims of a row. While the supernet trains (no dims fixed,
``module.training``), ``k`` is drawn uniformly from ``1..D`` for every sample and every field
of each batch; in evaluation only the row mask applies (full ``D``). :meth:`set_dims` fixes one
``k_f`` per field (the evolutionary search evaluates candidates this way, and retraining keeps
the winner); :meth:`freeze_rows` fixes the row mask (a bool buffer) and stops the thresholds.

Variants (the ``variant`` argument, also registered as their own method names):

* ``"optembed"``   rows and dims (the paper's OptEmbed);
* ``"optembed-e"`` rows only (OptEmbed-E: no dimension sampling, no dim search);
* ``"optembed-d"`` dims only (OptEmbed-D: no thresholds, every row kept).

:func:`export_optembed` turns a trained table (or a whole model) into a
:class:`CompactOptEmbedTable` for inference: pruned rows are removed behind a keep bitmap with a
rank index (1.5 bits per original row; pruned ids read a zero vector), each field stores only its
``k_f`` dims, and the output is zero-padded to ``D`` (OptEmbed's semantics; ``pad=False`` gives
per-field dims instead).

Example::

    >>> import torch
    >>> from slimembed.tables import Feature, OptEmbedTable, export_optembed, memory_report
    >>> feats = [Feature("C1", 1000, 16), Feature("C2", 50, 16)]
    >>> t = OptEmbedTable(feats)                       # variant "optembed"
    >>> t(torch.tensor([[3, 7]])).shape
    torch.Size([1, 2, 16])
    >>> _ = t.freeze_rows(); t.set_dims([4, 16])
    >>> compact = export_optembed(t)                   # same outputs, fewer bytes
    >>> bool(torch.allclose(compact(torch.tensor([[3, 7]])), t(torch.tensor([[3, 7]]))))
    True
    >>> memory_report(t).total_bytes, memory_report(compact).total_bytes
    (68436, 19396)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable
from .feature import Feature
from .gather import common_dim, gather_combine
from .dropin import EmbeddingBag
from .registry import register

VARIANTS = ("optembed", "optembed-e", "optembed-d")
NORMS = (1, 2)
INITS = ("uniform", "xavier")


# ---------------------------------------------------------------------------------------------
# the step function and its long-tailed straight-through derivative
# ---------------------------------------------------------------------------------------------
def long_tailed_grad(x: Tensor) -> Tensor:
    """The surrogate derivative of the step: ``2 - 4|x|`` (|x| <= 0.4), ``0.4`` (<= 1), ``0`` beyond.

    Continuous at ``|x| = 0.4`` (both pieces give 0.4) and dropping to 0 just past ``|x| = 1``.
    """
    a = x.abs()
    return torch.where(a <= 0.4, 2.0 - 4.0 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4),
                                                             torch.zeros_like(a)))


class BinaryStep(torch.autograd.Function):
    """``S(x) = 1[x > 0]`` forward; ``grad * long_tailed_grad(x)`` backward (Liu et al., ICLR 2020)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * long_tailed_grad(x)


def binary_step(x: Tensor) -> Tensor:
    """:class:`BinaryStep` as a function."""
    return BinaryStep.apply(x)


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"OptEmbed variant must be one of {VARIANTS}, got {variant!r}")
    return variant


# ---------------------------------------------------------------------------------------------
# the supernet table
# ---------------------------------------------------------------------------------------------
OPTEMBED_NOT_SWEPT = ("its memory comes from its own supernet -> search -> retrain pipeline, not from "
                      "one budgeted training run: use `slimembed optembed`")


@register("optembed")
class OptEmbedTable(EmbeddingTable):
    """OptEmbed's supernet embedding table for many fields (see the module docstring).

    Args:
        features: the features; all share ``embedding_dim`` = ``D``.
        variant: ``"optembed"`` (rows + dims), ``"optembed-e"`` (rows), ``"optembed-d"`` (dims).
            Default: the registered method name the class was built under.
        norm: 1 (L1, default) or 2 (L2) row norm for the row mask.
        alpha: weight of the threshold regulariser ``alpha * sum_f exp(-t_f)``.
        threshold_init: initial value of every field's threshold (the paper: 0).
        init: ``"uniform"`` (±``init_scale``, the project default, docs/architecture.md §3) or ``"xavier"``
            (xavier-uniform over the fused ``[sum N_f, D]`` weight, the reference code's init).
        init_scale: bound of the uniform init.
        sparse: sparse gradients for the weight (for sparse embedding optimizers).

    Parameters: ``weight [sum N_f, D]``; ``threshold [F]`` (variants with rows only).
    Buffers (persistent, so ``state_dict`` restores the search/retrain state exactly):
    ``row_keep`` bool ``[sum N_f]`` (the frozen row mask), ``field_dims`` int64 ``[F]`` (the fixed
    per-field dims), ``rows_frozen`` / ``dims_fixed`` (0-d bools saying whether they apply).

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.
    Ids must lie in ``[0, num_embeddings)``.

    Example::

        >>> t = OptEmbedTable([Feature("a", 100, 8), Feature("b", 10, 8)], variant="optembed-e")
        >>> loss = t(torch.tensor([[1, 2]])).sum() + t.regularization()
    """

    method = "optembed"
    supports_sparse = True
    # The supernet stores every row (the full table plus masks), so no supernet lands under a
    # budget below the full table: the budget bounds the *exported* table, in the search.
    budget_refusal = (
        "method {method!r} is not sized by a budget before training (its supernet stores "
        "every row); give the budget ({budget} bytes) to the OptEmbed search instead: "
        "optembed.budget_bytes in `slimembed optembed` / OptEmbedConfig(budget_bytes=...)")
    not_swept_reason = OPTEMBED_NOT_SWEPT
    not_shardable_reason = ("row and dimension masks (learned thresholds) are applied inside the lookup; "
                            "torchrec's sharded kernels cannot apply them")

    def __init__(
        self,
        features: Sequence[Feature],
        variant: Optional[str] = None,
        norm: int = 1,
        alpha: float = 1e-4,
        threshold_init: float = 0.0,
        init: str = "uniform",
        init_scale: float = DEFAULT_INIT_SCALE,
        sparse: bool = False,
    ) -> None:
        super().__init__(features)
        own = type(self).method
        if variant is None:
            variant = own
        _check_variant(variant)
        if own != "optembed" and variant != own:
            raise ValueError(f"table method {own!r} is the variant {own!r}; got variant={variant!r}")
        if int(norm) not in NORMS:
            raise ValueError(f"norm must be 1 or 2, got {norm!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.variant = variant
        self.norm = int(norm)
        self.alpha = float(alpha)
        self.threshold_init = float(threshold_init)
        self.init = init
        self.init_scale = float(init_scale)
        self.sparse = bool(sparse)
        self.dim = common_dim(self.features, "OptEmbedTable")
        rows = [int(f.num_embeddings) for f in self.features]
        if sum(rows) > 2**40:
            raise ValueError("OptEmbedTable stores every row; a vocabulary-free id space needs a hashing method")
        self.rows = rows
        offsets = torch.tensor([0] + rows[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)
        self.register_buffer("_arange_d", torch.arange(self.dim), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(rows), self.dim))
        if self.prunes_rows:
            self.threshold = nn.Parameter(torch.full((len(rows),), self.threshold_init))
        else:
            self.register_parameter("threshold", None)
        self.register_buffer("row_keep", torch.ones(sum(rows), dtype=torch.bool))
        self.register_buffer("field_dims", torch.full((len(rows),), self.dim, dtype=torch.long))
        self.register_buffer("rows_frozen", torch.tensor(False))
        self.register_buffer("dims_fixed", torch.tensor(False))
        # Host mirrors of the two 0-d flags: reading a CUDA buffer with bool() syncs the device,
        # and every lookup asks. Kept in step by freeze/unfreeze/set_dims; None after
        # load_state_dict (re-read from the loaded buffers once).
        self._flags: Optional[tuple] = (False, False)
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    def reset_parameters(self) -> None:
        if self.init == "xavier":
            nn.init.xavier_uniform_(self.weight)
        else:
            nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)
        if self.threshold is not None:
            with torch.no_grad():
                self.threshold.fill_(self.threshold_init)

    @property
    def prunes_rows(self) -> bool:
        return self.variant in ("optembed", "optembed-e")

    @property
    def searches_dims(self) -> bool:
        return self.variant in ("optembed", "optembed-d")

    def config(self) -> Dict[str, Any]:
        # the variant is the method name: make_table_from_config rebuilds the same variant
        return {
            "method": self.variant,
            "features": [f.to_dict() for f in self.features],
            "norm": self.norm,
            "alpha": self.alpha,
            "threshold_init": self.threshold_init,
            "init": self.init,
            "init_scale": self.init_scale,
            "sparse": self.sparse,
        }

    def dense_rows(self) -> Optional[Tensor]:
        return self.weight if self.num_features == 1 else None

    # ------------------------------------------------------------------ masks
    def _host_flags(self) -> tuple:
        flags = getattr(self, "_flags", None)
        if flags is None:
            flags = (bool(self.rows_frozen), bool(self.dims_fixed))
            self._flags = flags
        return flags

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._flags = None  # the buffers may have changed: re-read them on the next lookup

    @property
    def is_rows_frozen(self) -> bool:
        return self._host_flags()[0]

    @property
    def is_dims_fixed(self) -> bool:
        return self._host_flags()[1]

    def field_of_rows(self) -> Tensor:
        """``LongTensor[sum N_f]``: the field of every row of the fused weight."""
        return torch.repeat_interleave(
            torch.arange(self.num_features, device=self.weight.device),
            torch.tensor(self.rows, device=self.weight.device),
        )

    def row_norms(self) -> Tensor:
        """``[sum N_f]``: the ``norm`` of every row (L1 or L2), no gradient."""
        with torch.no_grad():
            w = self.weight.detach()
            return w.abs().sum(1) if self.norm == 1 else w.norm(dim=1)

    @torch.no_grad()
    def threshold_row_mask(self) -> Tensor:
        """``BoolTensor[sum N_f]``: rows kept by the current thresholds (all for optembed-d)."""
        if not self.prunes_rows:
            return torch.ones(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)
        t = self.threshold.detach()[self.field_of_rows()]
        return (self.row_norms() - t) > 0

    @torch.no_grad()
    def current_row_mask(self) -> Tensor:
        """The row mask in force: the frozen one, else the thresholds'."""
        return self.row_keep.clone() if self.is_rows_frozen else self.threshold_row_mask()

    def current_dims(self) -> List[int]:
        """Per-field dims in force at inference: the fixed ones, else ``D`` for every field."""
        if self.is_dims_fixed:
            return [int(d) for d in self.field_dims.tolist()]
        return [self.dim] * self.num_features

    @torch.no_grad()
    def freeze_rows(self, row_keep: Optional[Tensor] = None) -> Tensor:
        """Fix the row mask (default: the thresholds' current mask) and stop training thresholds.

        Returns the frozen ``BoolTensor[sum N_f]``.
        """
        keep = self.threshold_row_mask() if row_keep is None else row_keep
        keep = torch.as_tensor(keep).to(device=self.row_keep.device, dtype=torch.bool).reshape(-1)
        if keep.numel() != self.row_keep.numel():
            raise ValueError(f"row_keep has {keep.numel()} entries, the table {self.row_keep.numel()} rows")
        if not self.prunes_rows and not bool(keep.all()):
            raise ValueError("variant 'optembed-d' prunes no rows; row_keep must be all True")
        self.row_keep.copy_(keep)
        self.rows_frozen.fill_(True)
        self._flags = None
        if self.threshold is not None:
            self.threshold.requires_grad_(False)
        return self.row_keep.clone()

    @torch.no_grad()
    def unfreeze_rows(self) -> None:
        """Back to the supernet: the row mask follows the (trainable) thresholds again."""
        self.row_keep.fill_(True)
        self.rows_frozen.fill_(False)
        self._flags = None
        if self.threshold is not None:
            self.threshold.requires_grad_(True)

    @torch.no_grad()
    def set_dims(self, dims: Optional[Sequence[int]]) -> None:
        """Fix per-field dims ``k_f`` in ``1..D`` (train and eval); ``None`` = supernet sampling."""
        if dims is None:
            self.field_dims.fill_(self.dim)
            self.dims_fixed.fill_(False)
            self._flags = None
            return
        d = torch.as_tensor(dims, dtype=torch.long).reshape(-1)
        if d.numel() != self.num_features:
            raise ValueError(f"dims has {d.numel()} values for {self.num_features} features")
        if bool((d < 1).any()) or bool((d > self.dim).any()):
            raise ValueError(f"dims must lie in [1, {self.dim}], got {d.tolist()}")
        if not self.searches_dims and bool((d != self.dim).any()):
            raise ValueError("variant 'optembed-e' searches no dims; every dim must be D")
        self.field_dims.copy_(d.to(self.field_dims.device))
        self.dims_fixed.fill_(True)
        self._flags = None

    def regularization(self) -> Tensor:
        """``alpha * sum_f exp(-t_f)`` while the thresholds train; 0 otherwise (a scalar)."""
        if self.threshold is None or self.is_rows_frozen:
            return self.weight.new_zeros(())
        return self.alpha * torch.exp(-self.threshold).sum()

    @torch.no_grad()
    def kept_rows(self) -> List[int]:
        """Rows kept per field by the mask in force."""
        keep = self.current_row_mask()
        counts = torch.zeros(self.num_features, dtype=torch.long, device=keep.device)
        return [int(c) for c in counts.index_add_(0, self.field_of_rows(), keep.long()).tolist()]

    def sparsity(self) -> float:
        """The paper's sparsity: ``1 - sum_f kept_f * k_f / (sum_f N_f * D)``."""
        kept = self.kept_rows()
        dims = self.current_dims()
        used = sum(k * d for k, d in zip(kept, dims))
        return 1.0 - used / float(sum(self.rows) * self.dim)

    # ------------------------------------------------------------------ lookups
    def _lookup(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        """Masked rows of ``ids`` (``fields`` None: a dense ``[B, F]`` batch) -> ``[..., D]``."""
        off = self.row_offsets if fields is None else self.row_offsets[fields]
        idx = ids + off
        if self.sparse:
            e = F.embedding(idx, self.weight, sparse=True)
        else:
            e = gather_combine(self.weight, idx.unsqueeze(-1), None, "sum")
        out = e
        if self.prunes_rows:
            if self.is_rows_frozen:
                m = self.row_keep[idx].to(e.dtype)
            else:
                norm = e.abs().sum(-1) if self.norm == 1 else torch.linalg.vector_norm(e, dim=-1)
                t = self.threshold if fields is None else self.threshold[fields]
                m = binary_step(norm - t)
            out = out * m.unsqueeze(-1)
        if self.searches_dims:
            if self.is_dims_fixed:
                k = self.field_dims if fields is None else self.field_dims[fields]
                out = out * (self._arange_d < k.unsqueeze(-1)).to(e.dtype)
            elif self.training:
                # k ~ U{1..D} per sample and per field, fresh every batch (uniform sampling)
                k = torch.randint(1, self.dim + 1, ids.shape, device=ids.device)
                out = out * (self._arange_d < k.unsqueeze(-1)).to(e.dtype)
        return out

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._lookup(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        return self._lookup(ids, None)

    @property
    def rows_per_feature(self) -> List[int]:
        return list(self.rows)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, features={self.num_features}, dim={self.dim}, "
                f"norm=L{self.norm}, alpha={self.alpha:g}, rows_frozen={self.is_rows_frozen}, "
                f"dims_fixed={self.is_dims_fixed}")


@register("optembed-e")
class OptEmbedETable(OptEmbedTable):
    """OptEmbed-E: row pruning only (learnable thresholds, full dims). See :class:`OptEmbedTable`."""

    method = "optembed-e"


@register("optembed-d")
class OptEmbedDTable(OptEmbedTable):
    """OptEmbed-D: dimension search only (every row kept). See :class:`OptEmbedTable`."""

    method = "optembed-d"


class OptEmbedEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in (same constructor and forward) backed by :class:`OptEmbedTable`.

    ``mode`` is ``nn.EmbeddingBag``'s pooling mode; OptEmbed's own choice is ``variant``.
    ``_weight`` initialises the rows. The table is ``self.table`` (thresholds, masks,
    :meth:`OptEmbedTable.regularization`).

    Example::

        >>> bag = OptEmbedEmbeddingBag(100, 8, mode="sum", variant="optembed-e")
        >>> bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 8])
    """

    fixed_method = "optembed"


# the compact inference table lives in optembed_compact.py (re-exported here)
from .optembed_compact import (  # noqa: E402
    CompactOptEmbedTable, compact_bytes, compact_from_table, export_optembed, pack_row_masks,
)

__all__ = [
    "VARIANTS",
    "BinaryStep",
    "binary_step",
    "long_tailed_grad",
    "OptEmbedTable",
    "OptEmbedETable",
    "OptEmbedDTable",
    "OptEmbedEmbeddingBag",
    "CompactOptEmbedTable",
    "compact_from_table",
    "pack_row_masks",
    "export_optembed",
    "compact_bytes",
]
