"""The uncompressed baseline: one fused fp32 table for all features (``nn.EmbeddingBag`` semantics)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE
from .feature import Feature
from .gather import GatherTable
from .dropin import EmbeddingBag
from .registry import register


@register("full")
class FullTable(GatherTable):
    """All features' rows in one fused ``[sum_f N_f, D]`` parameter; a lookup is one gather.

    A :class:`~slimembed.tables.gather.GatherTable` with one slot: row = id + the field's offset.

    Args:
        features: the features; all must share ``embedding_dim``.
        sparse: produce sparse row gradients (for ``torch.optim.SparseAdam`` / row-wise Adagrad).
        init_scale: rows start uniform in ``[-init_scale, init_scale]`` (docs/architecture.md §3: ±0.05).

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.
    """

    method = "full"
    quantizable = True
    supports_sparse = True
    not_swept_reason = "the uncompressed reference (1x): run once per study/seed as the reference"

    def __init__(
        self, features: Sequence[Feature], sparse: bool = False, init_scale: float = DEFAULT_INIT_SCALE
    ) -> None:
        super().__init__(features)
        dims = {f.embedding_dim for f in self.features}
        if len(dims) != 1:
            raise ValueError(
                f"FullTable needs one embedding_dim for all features, got {sorted(dims)}; "
                "build one table per dim"
            )
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        rows = [int(f.num_embeddings) for f in self.features]
        if sum(rows) > 2**40:
            raise ValueError(
                f"FullTable would hold {sum(rows)} rows; a vocabulary-free id space needs a hashing method"
            )
        offsets = torch.tensor([0] + rows[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(rows), dims.pop()))
        self.reset_parameters()

    def dense_rows(self) -> Optional[Tensor]:
        return self.weight if self.num_features == 1 else None

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "sparse": self.sparse, "init_scale": self.init_scale}

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "FullTable":
        table = cls(features, **kwargs)
        need = table.full_bytes()
        if budget_bytes < need:
            raise ValueError(
                f"method 'full' cannot compress: it needs {need} bytes, budget is {budget_bytes}"
            )
        return table

    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, None]:
        offsets = self.row_offsets if fields is None else self.row_offsets[fields]
        return (ids + offsets).unsqueeze(-1), None

    @property
    def rows_per_feature(self) -> List[int]:
        return [int(f.num_embeddings) for f in self.features]

    def bag(
        self, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Optional[Tensor],
        padding_idx: Optional[int],
    ) -> Tensor:
        # one feature, no offsets: exactly nn.EmbeddingBag's kernel (every mode, padding_idx)
        return F.embedding_bag(
            ids, self.weight, offsets, mode=mode, per_sample_weights=per_sample_weights,
            include_last_offset=True, padding_idx=padding_idx, sparse=self.sparse,
        )


class FullEmbeddingBag(EmbeddingBag):
    """Drop-in for ``nn.EmbeddingBag`` (same constructor and forward) backed by :class:`FullTable`.

    Differences from ``nn.EmbeddingBag``, on purpose: rows start uniform ±0.05 (docs/architecture.md §3) and
    ids outside ``[0, num_embeddings)`` raise a ``ValueError`` instead of reading garbage.
    ``max_norm`` and ``scale_grad_by_freq`` are not supported (they raise).

    Example::

        >>> bag = FullEmbeddingBag(100, 8, mode="sum")
        >>> bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 8])
    """

    fixed_method = "full"
