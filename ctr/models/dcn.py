"""DCN: a vector cross network in parallel with an MLP."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, CrossNet, MLPBlock
from .base import CTRModel, SparseInput, TableFactory


class DCN(CTRModel):
    """Deep & Cross Network (Wang et al. 2017):

    ``x0 = flatten(V)``, ``logit = Linear([CrossNet(x0), MLP(x0)])``

    with ``V = [B, F + n_dense, D]`` (field embeddings plus one numeric field per dense feature)
    and cross layers ``x_{l+1} = x0 * (w_l^T x_l) + b_l + x_l``. With ``hidden_units=()`` the
    model is the cross network alone.

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        num_cross_layers: default 3.
        hidden_units, activation, dropout, batch_norm: the parallel MLP's
            (:class:`~slimembed.ctr.layers.MLPBlock`); defaults ``(400, 400, 400)``, ``"relu"``,
            ``0.0``, ``False``.

    The output ``Linear`` and the MLP start xavier-uniform with zero bias.
    """

    name = "dcn"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 num_cross_layers: int = 3, hidden_units: Sequence[int] = (400, 400, 400),
                 activation: ActivationSpec = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory)
        self.cross = CrossNet(self.flat_dim, num_cross_layers)
        self.mlp: Optional[MLPBlock] = None
        if len(hidden_units) > 0:
            self.mlp = MLPBlock(self.flat_dim, hidden_units, activation, dropout, batch_norm)
        # parallel: the output layer reads [cross(x0), mlp(x0)]
        self.output = self._logit_layer(self.flat_dim + (0 if self.mlp is None else self.mlp.output_dim))
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        x0 = self.field_inputs(dense, sparse).flatten(start_dim=1)  # [B, F'D]
        h = self.cross(x0)
        if self.mlp is not None:
            h = torch.cat([h, self.mlp(x0)], dim=1)
        return self.output(h).squeeze(1)
