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
    (1-dim), both from ``table_factory``. No hyper-parameter beyond the features' ``D``;
    ``features``, ``num_dense`` and ``table_factory`` are
    :class:`~slimembed.ctr.models.base.CTRModel`'s.
    """

    name = "fm"

    def __init__(self, features: List[Feature], num_dense: int,
                 table_factory: Optional[TableFactory] = None) -> None:
        super().__init__(features, num_dense, table_factory, first_order=True)
        self.fm = FMInteraction()

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        return self.first_order_logit(dense, sparse) + self.fm(v).squeeze(1)
