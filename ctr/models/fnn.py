"""FNN: an MLP over the concatenated field embeddings."""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor

from slimembed.tables import Feature

from ..layers import ActivationSpec, MLPBlock
from .base import CTRModel, SparseInput, TableFactory


class FNN(CTRModel):
    """FNN (Zhang et al. 2016): ``logit = MLP(flatten(V))``, ``V = [B, F + n_dense, D]`` (field
    embeddings plus one numeric field per dense feature).

    Args:
        features, num_dense, table_factory: as in :class:`~slimembed.ctr.models.base.CTRModel`.
        hidden_units, activation, dropout, batch_norm: the MLP's (:class:`~slimembed.ctr.layers.MLPBlock`,
            then ``Linear -> 1``); defaults ``(400, 400, 400)``, ``"relu"``, ``0.0``, ``False``.

    The paper initialises the embeddings from a pre-trained FM; this implementation does **not**
    pre-train (as FuxiCTR): the table initialises itself. To reproduce the paper, train an
    :class:`~slimembed.ctr.models.fm.FM` and copy its ``embedding`` state into this model's.
    """

    name = "fnn"

    def __init__(self, features: List[Feature], num_dense: int, table_factory: Optional[TableFactory] = None,
                 hidden_units: Sequence[int] = (400, 400, 400), activation: ActivationSpec = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(features, num_dense, table_factory)
        self.mlp = MLPBlock(self.flat_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self._save_hparams(locals())

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        return self.mlp(self.field_inputs(dense, sparse).flatten(start_dim=1)).squeeze(1)
