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

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        hidden_units, activation, dropout, batch_norm: the MLP's (:class:`~slimembed.ctr.layers.MLPBlock`,
            then ``Linear -> 1``); defaults ``(400, 400, 400)``, ``"relu"``, ``0.0``, ``False``.

    ``V = [B, F', D]``, ``F' = F + n_dense`` (one numeric field per dense feature), so the MLP
    input width is ``F'·D + F'(F'-1)/2``.
    """

    name = "ipnn"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 hidden_units: Sequence[int] = (400, 400, 400), activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory)
        self.inner_product = InnerProduct(self.num_fields)
        in_dim = self.flat_dim + self.inner_product.output_dim
        self.mlp = MLPBlock(in_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F', D]
        x = torch.cat([v.flatten(start_dim=1), self.inner_product(v)], dim=1)  # [B, F'D + P]
        return self.mlp(x).squeeze(1)
