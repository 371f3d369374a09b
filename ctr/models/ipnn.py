"""IPNN: pairwise inner products of field embeddings + an MLP."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, InnerProduct, MLPBlock
from .base import CTRModel, SparseInput, TableFactory


class IPNN(CTRModel):
    """Inner-product PNN (Qu et al. 2016), FuxiCTR's ``PNN(product_type="inner")``:

    ``logit = MLP([flatten(V), (<v_i, v_j>)_{i<j}])``

    with ``V = [B, F', D]``, ``F' = F + n_dense`` (one numeric field per dense feature), so the
    MLP input width is ``F'·D + F'(F'-1)/2``.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D``).
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.
        hidden_units: MLP hidden widths; default ``(400, 400, 400)``, then ``Linear -> 1``.
        activation: default ``"relu"``. dropout: default ``0.0``. batch_norm: default ``False``.

    Shapes: ``dense [B, n_dense]``, ``sparse LongTensor[B, F]`` or a KJT -> logits ``[B]``.
    """

    name = "ipnn"

    def __init__(
        self,
        features: List[Feature],
        num_dense: int,
        table_factory: Optional[TableFactory] = None,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: ActivationSpec = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(features, num_dense)
        d = self._build_field_embedding(table_factory)
        self.inner_product = InnerProduct(self.num_fields)
        in_dim = self.num_fields * d + self.inner_product.output_dim
        self.mlp = MLPBlock(in_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self.hparams = dict(
            hidden_units=list(hidden_units), activation=activation, dropout=dropout, batch_norm=batch_norm
        )

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F', D]
        x = torch.cat([v.flatten(start_dim=1), self.inner_product(v)], dim=1)  # [B, F'D + P]
        return self.mlp(x).squeeze(1)
