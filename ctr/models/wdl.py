"""Wide & Deep: a logistic-regression wide part + an MLP deep part."""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, MLPBlock
from .base import CTRModel, SparseInput, TableFactory


class WDL(CTRModel):
    """Wide & Deep (Cheng et al. 2016), FuxiCTR's ``WideDeep``:

    ``logit = [b + Σ_f w[x_f] + dense @ w_dense] + MLP(flatten(V))``

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        hidden_units, activation, dropout, batch_norm: the deep MLP's
            (:class:`~slimembed.ctr.layers.MLPBlock`, then ``Linear -> 1``); defaults
            ``(400, 400, 400)``, ``"relu"``, ``0.0``, ``False``.

    The wide part is LR (first-order table ``self.first_order`` + dense linear term; no hand-made
    cross-product features); ``V = [B, F + n_dense, D]`` is the field embeddings plus one numeric
    field per dense feature.
    """

    name = "wdl"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 hidden_units: Sequence[int] = (400, 400, 400), activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory, first_order=True)
        self.mlp = MLPBlock(self.flat_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        return self.first_order_logit(dense, sparse) + self.mlp(v.flatten(start_dim=1)).squeeze(1)
