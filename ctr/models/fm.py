"""Factorization machine: first-order term + pairwise field interactions."""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

from slimembed.tables import Feature

from ..layers import FMInteraction
from .base import CTRModel, SparseInput, TableFactory


class FM(CTRModel):
    """Factorization machine (Rendle 2010):

    ``logit = b + Σ_f w[x_f] + dense @ w_dense + Σ_{i<j} <v_i, v_j>``

    over the ``F`` field embeddings plus one field per dense feature (``x_k * e_k``,
    :class:`~slimembed.ctr.layers.NumericEmbedding`), so dense features interact too (FuxiCTR's
    numeric-as-field convention). Tables: ``self.embedding`` (``D``-dim) and ``self.first_order``
    (1-dim), both from ``table_factory``. No hyper-parameter beyond the features' ``D``.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D``).
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.

    Shapes: ``dense [B, n_dense]``, ``sparse LongTensor[B, F]`` or a KJT -> logits ``[B]``.
    """

    name = "fm"

    def __init__(
        self,
        features: List[Feature],
        num_dense: int,
        table_factory: Optional[TableFactory] = None,
    ) -> None:
        super().__init__(features, num_dense)
        self._build_field_embedding(table_factory)
        self._build_first_order(table_factory)
        self.fm = FMInteraction()

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        return self.first_order_logit(dense, sparse) + self.fm(v).squeeze(1)
