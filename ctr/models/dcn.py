"""DCN: a vector cross network in parallel with an MLP."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from slimembed.tables import Feature

from ..layers import ActivationSpec, CrossNet, MLPBlock, init_linear
from .base import CTRModel, SparseInput, TableFactory


class DCN(CTRModel):
    """Deep & Cross Network (Wang et al. 2017):

    ``x0 = flatten(V)``, ``logit = Linear([CrossNet(x0), MLP(x0)])``

    with ``V = [B, F + n_dense, D]`` (field embeddings plus one numeric field per dense feature)
    and cross layers ``x_{l+1} = x0 * (w_l^T x_l) + b_l + x_l``. With ``hidden_units=()`` the
    model is the cross network alone.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D``).
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.
        num_cross_layers: default 3.
        hidden_units: parallel MLP hidden widths; default ``(400, 400, 400)``.
        activation: default ``"relu"``. dropout: default ``0.0``. batch_norm: default ``False``.

    The output ``Linear`` and the MLP start xavier-uniform with zero bias.

    Shapes: ``dense [B, n_dense]``, ``sparse LongTensor[B, F]`` or a KJT -> logits ``[B]``.
    """

    name = "dcn"

    def __init__(
        self,
        features: List[Feature],
        num_dense: int,
        table_factory: Optional[TableFactory] = None,
        num_cross_layers: int = 3,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: ActivationSpec = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(features, num_dense)
        d = self._build_field_embedding(table_factory)
        in_dim = self.num_fields * d
        self.cross = CrossNet(in_dim, num_cross_layers)
        self.mlp: Optional[MLPBlock] = None
        out_dim = in_dim
        if len(hidden_units) > 0:
            self.mlp = MLPBlock(in_dim, hidden_units, activation, dropout, batch_norm)
            out_dim += self.mlp.output_dim
        self.output = nn.Linear(out_dim, 1)
        init_linear(self.output)
        self.hparams = dict(
            num_cross_layers=num_cross_layers, hidden_units=list(hidden_units), activation=activation,
            dropout=dropout, batch_norm=batch_norm,
        )

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        x0 = self.field_inputs(dense, sparse).flatten(start_dim=1)  # [B, F'D]
        h = self.cross(x0)
        if self.mlp is not None:
            h = torch.cat([h, self.mlp(x0)], dim=1)
        return self.output(h).squeeze(1)
