"""DeepFM: first-order term + FM + an MLP over the same field embeddings."""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, FMInteraction, MLPBlock
from .base import CTRModel, SparseInput, TableFactory


class DeepFM(CTRModel):
    """DeepFM (Guo et al. 2017), FuxiCTR's definition:

    ``logit = [b + Σ_f w[x_f] + dense @ w_dense] + FM(V) + MLP(flatten(V))``

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        hidden_units, activation, dropout, batch_norm: the MLP's (:class:`~slimembed.ctr.layers.MLPBlock`,
            then ``Linear -> 1``); defaults ``(400, 400, 400)``, ``"relu"``, ``0.0``, ``False``.

    ``V = [B, F + n_dense, D]`` stacks the field embeddings and one numeric field per dense
    feature (``x_k * e_k``). The FM and the MLP share ``self.embedding``; the first-order weights
    are a separate 1-dim table ``self.first_order``, both from ``table_factory``.
    """

    name = "deepfm"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 hidden_units: Sequence[int] = (400, 400, 400), activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory, first_order=True)
        self.fm = FMInteraction()
        self.mlp = MLPBlock(self.flat_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        out = self.first_order_logit(dense, sparse) + self.fm(v).squeeze(1)
        return out + self.mlp(v.flatten(start_dim=1)).squeeze(1)
