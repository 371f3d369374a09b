"""DLRM: bottom MLP on dense features, dot interactions with the embeddings, top MLP."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, DotInteraction, MLPBlock
from .base import CTRModel, SparseInput, TableFactory, field_embeddings


class DLRM(CTRModel):
    """DLRM (Naumov et al. 2019):

    ``z = BottomMLP(dense)`` ``[B, D]``; ``E = [z, e_1..e_F]`` ``[B, F + 1, D]``;
    ``logit = TopMLP([z, (<E_i, E_j>)_{i<j}])``.

    Dense features are **not** numeric fields here: the bottom MLP
    ``n_dense -> bottom_hidden_units -> D`` (ReLU after every layer, the last included, as in
    DLRM) maps them to one vector of the embedding dim. With ``num_dense=0`` there is no bottom
    MLP: the top MLP sees the ``F(F-1)/2`` dot products among the embeddings alone (then ``F``
    must be at least 2).

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        bottom_hidden_units: bottom hidden widths before the final layer to ``D``; default
            ``(64,)``, i.e. ``n_dense -> 64 -> D``.
        top_hidden_units: top hidden widths; default ``(256, 128)``, then ``Linear -> 1``.
        self_interaction: include ``<E_i, E_i>`` in the interactions; default ``False``.
        activation, dropout, batch_norm: of both MLPs (:class:`~slimembed.ctr.layers.MLPBlock`);
            defaults ``"relu"``, ``0.0``, ``False``.

    MLP layers start xavier-uniform with zero bias.
    """

    name = "dlrm"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 bottom_hidden_units: Sequence[int] = (64,), top_hidden_units: Sequence[int] = (256, 128),
                 self_interaction: bool = False, activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory, numeric_fields=False)
        d = self.embedding_dim
        self.bottom: Optional[MLPBlock] = None
        n_inputs = len(self.features)
        if self.num_dense > 0:
            self.bottom = MLPBlock(
                self.num_dense, [*bottom_hidden_units, d], activation, dropout, batch_norm
            )
            n_inputs += 1
        self.interaction = DotInteraction(n_inputs, self_interaction)
        top_in = self.interaction.output_dim + (d if self.bottom is not None else 0)
        if top_in == 0:
            raise ValueError("DLRM with num_dense=0 and one feature has no interaction to learn from")
        self.top = MLPBlock(top_in, top_hidden_units, activation, dropout, batch_norm, output_dim=1)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        emb = field_embeddings(self.embedding, sparse)  # [B, F, D]
        dense = self._check_dense(dense, emb.shape[0])
        if self.bottom is None or dense is None:
            return self.top(self.interaction(emb)).squeeze(1)
        z = self.bottom(dense.to(emb.dtype))  # [B, D]
        inter = self.interaction(torch.cat([z.unsqueeze(1), emb], dim=1))  # [B, (F+1)F/2]
        return self.top(torch.cat([z, inter], dim=1)).squeeze(1)
