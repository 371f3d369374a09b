"""The gather engine shared by the gather-based tables (full, hash, double hash, QR, compositional).

:class:`GatherTable`: a lookup maps each id to ``k`` row indices of one fused weight
(``gather_index``), gathers them and combines them (``sum`` / ``concat`` / ``mult``), for all
fields in one call. The dense path is one ``index_select`` per slot with a custom backward (one
accumulating ``index_put_``, several times faster on CPU than ``embedding_dense_backward``); bags
(KJT, drop-ins) of sum-combined methods are one ``F.embedding_bag`` over all ``N * k`` rows. The
quantized export (:mod:`slimembed.tables.quantized`) reuses ``gather_index`` and ``combine`` over
int8 rows.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import EmbeddingTable
from .feature import Feature

RowsSpec = Union[int, Sequence[int], Mapping[str, int], None]


def common_dim(features: Sequence[Feature], who: str) -> int:
    dims = {int(f.embedding_dim) for f in features}
    if len(dims) != 1:
        raise ValueError(f"{who} needs one embedding_dim for all features, got {sorted(dims)}; "
                         "build one table per dim")
    return dims.pop()


def per_feature(spec: RowsSpec, features: Sequence[Feature], what: str) -> Optional[List[int]]:
    """An int, a list (feature order) or a {name: int} dict -> a list of ints per feature."""
    if spec is None:
        return None
    if isinstance(spec, int):
        return [int(spec)] * len(features)
    if isinstance(spec, Mapping):
        missing = [f.name for f in features if f.name not in spec]
        if missing:
            raise ValueError(f"{what}: no value for features {missing}")
        return [int(spec[f.name]) for f in features]
    vals = [int(v) for v in spec]
    if len(vals) != len(features):
        raise ValueError(f"{what}: got {len(vals)} values for {len(features)} features")
    return vals


def unsupported_bag_args(who: str, max_norm: Optional[float], scale_grad_by_freq: bool,
                         _weight: Optional[Tensor]) -> None:
    """Drop-ins take ``nn.EmbeddingBag``'s arguments; these few have no meaning for a compressed table."""
    if max_norm is not None or scale_grad_by_freq:
        raise NotImplementedError(f"{who} does not support max_norm or scale_grad_by_freq")
    if _weight is not None:
        raise NotImplementedError(f"{who} has no [num_embeddings, dim] weight to initialise from _weight")


def combine_rows(rows: Tensor, coef: Optional[Tensor], mode: str) -> Tensor:
    """Combine gathered ``rows [..., k, w]`` into ``[..., D]``.

    ``coef [..., k]`` (or None = ones): for ``sum``/``concat`` a factor per slot (a sign, or 0 to
    drop the slot); for ``mult`` a mask: a slot with ``coef == 0`` is left out of the product.
    """
    if mode == "mult":
        if coef is not None:
            rows = torch.where(coef.unsqueeze(-1) != 0, rows, torch.ones_like(rows))
        out = rows[..., 0, :]
        for j in range(1, rows.shape[-2]):
            out = out * rows[..., j, :]
        return out
    if coef is not None:
        rows = rows * coef.unsqueeze(-1).to(rows.dtype)
    if mode == "sum":
        return rows.sum(-2)
    if mode == "concat":
        return rows.flatten(-2)
    raise ValueError(f"unknown combine mode {mode!r}")


def _skip_fill(t: Tensor, keep, value: float) -> None:
    """Set the skipped entries of ``t [..., w]`` to ``value`` in place (see ``_GatherCombine``)."""
    kind, what = keep
    if kind == "cols":
        if what.numel():
            t.index_fill_(-2, what, value)
    else:
        t.masked_fill_(what, value)


class _GatherCombine(torch.autograd.Function):
    """Gather ``k`` rows per id (one contiguous ``index_select`` per slot) and combine them.

    The weight gradient is accumulated with ``index_put_(accumulate=True)`` per slot: several times
    faster on CPU than ``embedding_dense_backward`` and deterministic (serial on CPU).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, idx: Tensor, coef: Optional[Tensor], mode: str) -> Tensor:  # type: ignore[override]
        k = idx.shape[-1]
        lead = idx.shape[:-1]
        slots = [idx[..., j].reshape(-1) for j in range(k)]
        rows = [weight.index_select(0, s).view(*lead, weight.shape[1]) for s in slots]
        keep = None
        if coef is not None:
            if mode == "mult":
                if (coef.dim() == 2 and idx.dim() == 3 and coef.shape[0] == idx.shape[1]
                        and coef.device.type != "cpu"):
                    # accelerators: the [F, 1] mask broadcasts over [B, F, w] (nonzero() of the
                    # CPU path below would sync the device on every batch)
                    keep = [("mask", (coef[:, j] == 0).unsqueeze(-1)) for j in range(k)]
                elif coef.dim() == 2 and idx.dim() == 3 and coef.shape[0] == idx.shape[1]:
                    # a dense [B, F] batch with a per-field mask [F, k]: fill only the skipped
                    # fields' columns (index_fill_ along F) instead of a broadcast mask over all
                    keep = [("cols", (coef[:, j] == 0).nonzero().squeeze(1)) for j in range(k)]
                else:
                    keep = [("mask", (coef[..., j] == 0).unsqueeze(-1).expand_as(rows[j]))
                            for j in range(k)]
                for j in range(k):
                    _skip_fill(rows[j], keep[j], 1.0)
            else:
                for j in range(k):
                    rows[j].mul_(coef[..., j].unsqueeze(-1))
        ctx.mode = mode
        ctx.weight_shape = weight.shape
        ctx.keep = keep
        ctx.k = k
        if mode == "mult":
            # prefix products; the backward needs prefix_j * suffix_j for each slot
            prefix = [rows[0]]
            for j in range(1, k):
                prefix.append(prefix[-1] * rows[j])
            ctx.save_for_backward(*slots, coef, *rows, *prefix[:-1]) if k > 1 else ctx.save_for_backward(*slots, coef)
            return prefix[-1]
        ctx.save_for_backward(*slots, coef)
        if mode == "concat":
            return torch.cat(rows, -1) if k > 1 else rows[0]
        out = rows[0]
        for j in range(1, k):
            out = out + rows[j] if j == 1 else out.add_(rows[j])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        k, mode = ctx.k, ctx.mode
        grad = grad.contiguous()  # e.g. the expanded gradient of .sum()
        saved = ctx.saved_tensors
        slots, coef = saved[:k], saved[k]
        d = ctx.weight_shape[1]
        gw = grad.new_zeros(ctx.weight_shape)
        if mode == "mult" and k > 1:
            rows = saved[k + 1: 2 * k + 1]
            prefix = saved[2 * k + 1:]
            # g_j = grad * prefix_{j-1} * suffix_{j+1}; walk the suffix from the right
            suffix = grad
            grads = [None] * k
            for j in range(k - 1, -1, -1):
                grads[j] = suffix * prefix[j - 1] if j > 0 else suffix
                if j > 0:
                    suffix = suffix * rows[j]
            for j in range(k):
                g = grads[j]
                if ctx.keep is not None:
                    if g is grad:
                        g = g.clone()
                    _skip_fill(g, ctx.keep[j], 0.0)
                gw.index_put_((slots[j],), g.reshape(-1, d), accumulate=True)
            return gw, None, None, None
        for j in range(k):
            g = grad[..., j * d:(j + 1) * d] if mode == "concat" else grad
            if coef is not None:
                g = g * coef[..., j].unsqueeze(-1)
            gw.index_put_((slots[j],), g.reshape(-1, d), accumulate=True)
        return gw, None, None, None


def gather_combine(weight: Tensor, idx: Tensor, coef: Optional[Tensor], mode: str) -> Tensor:
    """``combine_rows(weight[idx], coef, mode)`` with a fast accumulate-scatter backward.

    Args: ``weight [R, w]``, ``idx LongTensor[..., k]``, ``coef [..., k]`` or None, ``mode``.
    Returns ``[..., w]`` (sum, mult) or ``[..., k * w]`` (concat).
    """
    if coef is not None:
        coef = coef.to(weight.dtype)
    return _GatherCombine.apply(weight, idx, coef, mode)


class GatherTable(EmbeddingTable):
    """Base of tables whose lookup gathers ``k`` rows of one fused ``weight [R, w]`` and combines them.

    Subclasses set ``self.weight``, ``self.combine_mode`` (``"sum"``, ``"concat"``, ``"mult"``),
    ``self.num_slots`` (``k``) and ``self.sparse``, and implement :meth:`gather_index`.

    * ``sum``: ``e = sum_j coef_j * weight[idx_j]`` (``coef`` None means all ones); output dim ``w``.
    * ``concat``: ``e = [coef_1 * weight[idx_1], ..., coef_k * weight[idx_k]]``; output dim ``k * w``.
    * ``mult``: ``e = prod_j weight[idx_j]`` (subclasses may override :meth:`combine`).
    """

    combine_mode: str = "sum"
    num_slots: int = 1
    sparse: bool = False
    weight: nn.Parameter

    # --------------------------------------------------------------- subclass hooks
    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Row indices of each id.

        Args:
            ids: ``LongTensor[...]`` validated ids. ``fields`` is None for a dense batch
                ``[B, F]`` (the field is the last dim), else ``LongTensor`` like ``ids``.
        Returns:
            ``idx LongTensor[..., k]`` into ``weight`` and ``coef FloatTensor[..., k]`` or None
            (a per-slot factor: a sign, or 0 to drop a slot).
        """
        raise NotImplementedError

    def combine(self, rows: Tensor, coef: Optional[Tensor], fields: Optional[Tensor]) -> Tensor:
        """``rows [..., k, w]`` (gathered) -> ``[..., D]`` (the reference path; see :func:`combine_rows`)."""
        return combine_rows(rows, coef, self.combine_mode)

    @staticmethod
    def per_field(buf: Tensor, fields: Optional[Tensor]) -> Tensor:
        """A per-field ``[F]`` buffer, broadcast over a dense ``[B, F]`` batch or gathered."""
        return buf if fields is None else buf[fields]

    # --------------------------------------------------------------- lookups
    def _rows(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        idx, coef = self.gather_index(ids, fields)
        if self.sparse:
            rows = F.embedding(idx, self.weight, sparse=True)
            return self.combine(rows, coef, fields)
        return gather_combine(self.weight, idx, coef, self.combine_mode)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._rows(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        return self._rows(ids, None)

    def _bag_sum(self, ids: Tensor, fields: Optional[Tensor], offsets: Tensor,
                 weights: Optional[Tensor]) -> Tensor:
        """Fused sum-pooling of sum-combined rows: one ``embedding_bag`` over ``N * k`` indices."""
        idx, coef = self.gather_index(ids, fields)
        k = idx.shape[-1]
        if coef is not None:
            coef = coef.to(self.weight.dtype)
            weights = coef if weights is None else coef * weights.to(coef.dtype).unsqueeze(-1)
        elif weights is not None and k > 1:
            weights = weights.unsqueeze(-1).expand(-1, k)
        if weights is not None:
            weights = weights.reshape(-1).to(self.weight.dtype)
        return F.embedding_bag(idx.reshape(-1), self.weight, offsets * k, mode="sum",
                               per_sample_weights=weights, include_last_offset=True,
                               sparse=self.sparse)

    def pool(self, ids: Tensor, fields: Tensor, offsets: Tensor,
             per_sample_weights: Optional[Tensor] = None) -> Tensor:
        if self.combine_mode != "sum":
            return super().pool(ids, fields, offsets, per_sample_weights)
        return self._bag_sum(ids, fields, offsets, per_sample_weights)

    def bag(self, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Optional[Tensor],
            padding_idx: Optional[int]) -> Tensor:
        if self.combine_mode != "sum" or mode == "max":
            return super().bag(ids, offsets, mode, per_sample_weights, padding_idx)
        fields = torch.zeros_like(ids)
        weights = per_sample_weights
        keep = None
        if padding_idx is not None:
            keep = ids != padding_idx
            w = keep.to(self.weight.dtype)
            weights = w if weights is None else weights * w
        out = self._bag_sum(ids, fields, offsets, weights)
        if mode == "mean":
            if keep is None:
                counts = offsets[1:] - offsets[:-1]
            else:
                csum = torch.cat([keep.new_zeros(1, dtype=torch.long), keep.long().cumsum(0)])
                counts = csum[offsets[1:]] - csum[offsets[:-1]]
            out = out / counts.clamp(min=1).unsqueeze(1).to(out.dtype)
        return out

    @property
    def rows_per_feature(self) -> List[int]:
        raise NotImplementedError


def hashed_rows(features: Sequence[Feature], rows: RowsSpec, total_rows: Optional[int], min_rows: int,
                collisionless_max: int, allocation: str, field_weights, default_max: int, who: str) -> List[int]:
    """Rows per feature of a hashed table (hash, double_hash): ``rows`` as given (capped at each
    ``N_f``), or ``total_rows`` split by the ``allocation`` rule (:func:`.budget.allocate_rows`),
    or ``min(N_f, default_max)``. Raises when a feature would get no row."""
    from .budget import allocate_rows, allocation_weights, row_floors

    sizes = [int(f.num_embeddings) for f in features]
    if rows is not None and total_rows is not None:
        raise ValueError("give rows or total_rows, not both")
    if total_rows is not None:
        floors = row_floors(sizes, min_rows, collisionless_max)
        if isinstance(field_weights, Mapping):
            field_weights = [field_weights[f.name] for f in features]
        weights = allocation_weights(allocation, sizes, field_weights)
        out = allocate_rows(int(total_rows), sizes, minimum=floors, exact=True, weights=weights)
    elif rows is not None:
        out = [min(r, n) for r, n in zip(per_feature(rows, features, "rows"), sizes)]
    else:
        out = [min(n, int(default_max)) for n in sizes]
    for f, r in zip(features, out):
        if r < 1:
            raise ValueError(f"{who}: feature {f.name!r} needs at least 1 row, got {r}")
    return out

