"""DCN-V2: matrix cross layers, in parallel with (or stacked under) an MLP."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, CrossNetV2, MLPBlock
from .base import CTRModel, SparseInput, TableFactory

STRUCTURES = ("parallel", "stacked", "crossnet_only")


class DCNv2(CTRModel):
    """DCN-V2 (Wang et al. 2021), FuxiCTR's ``DCNv2``:

    * ``"parallel"`` (default): ``logit = Linear([CrossNetV2(x0), MLP(x0)])``;
    * ``"stacked"``: ``logit = Linear(MLP(CrossNetV2(x0)))``;
    * ``"crossnet_only"``: ``logit = Linear(CrossNetV2(x0))``;

    with ``x0 = flatten(V)``, ``V = [B, F + n_dense, D]`` (field embeddings plus one numeric field
    per dense feature) and cross layers ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``.

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        num_cross_layers: default 3.
        low_rank: rank of each ``W_l = U_l V_l^T``; default ``None`` (full rank).
        model_structure: ``"parallel"`` (default), ``"stacked"`` or ``"crossnet_only"``.
        hidden_units, activation, dropout, batch_norm: the MLP's
            (:class:`~slimembed.ctr.layers.MLPBlock`); defaults ``(400, 400, 400)`` (``()``: cross
            only), ``"relu"``, ``0.0``, ``False``.

    The output ``Linear`` and the MLP start xavier-uniform with zero bias.
    """

    name = "dcnv2"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 num_cross_layers: int = 3, low_rank: Optional[int] = None, model_structure: str = "parallel",
                 hidden_units: Sequence[int] = (400, 400, 400), activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        if model_structure not in STRUCTURES:
            raise ValueError(f"model_structure must be one of {STRUCTURES}, got {model_structure!r}")
        super().__init__(features, num_dense, table_factory)
        in_dim = self.flat_dim
        self.model_structure = model_structure
        self.cross = CrossNetV2(in_dim, num_cross_layers, low_rank)
        self.mlp: Optional[MLPBlock] = None
        out_dim = in_dim  # crossnet_only (or no hidden layer): the output reads the cross net
        if model_structure != "crossnet_only" and len(hidden_units) > 0:
            self.mlp = MLPBlock(in_dim, hidden_units, activation, dropout, batch_norm)
            out_dim = self.mlp.output_dim + (in_dim if model_structure == "parallel" else 0)
        self.output = self._logit_layer(out_dim)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        x0 = self.field_inputs(dense, sparse).flatten(start_dim=1)  # [B, F'D]
        h = self.cross(x0)
        if self.mlp is not None:
            if self.model_structure == "stacked":
                h = self.mlp(h)
            else:
                h = torch.cat([h, self.mlp(x0)], dim=1)
        return self.output(h).squeeze(1)
