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

    The paper initialises the embeddings from a pre-trained FM; this implementation does **not**
    pre-train (as FuxiCTR): the table initialises itself. To reproduce the paper, train an
    :class:`~slimembed.ctr.models.fm.FM` and copy its ``embedding`` state into this model's.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D``).
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.
        hidden_units: MLP hidden widths; default ``(400, 400, 400)``, then ``Linear -> 1``.
        activation: default ``"relu"``. dropout: default ``0.0``. batch_norm: default ``False``.

    Shapes: ``dense [B, n_dense]``, ``sparse LongTensor[B, F]`` or a KJT -> logits ``[B]``.
    """

    name = "fnn"

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
        self.mlp = MLPBlock(self.num_fields * d, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self.hparams = dict(
            hidden_units=list(hidden_units), activation=activation, dropout=dropout, batch_norm=batch_norm
        )

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        return self.mlp(v.flatten(start_dim=1)).squeeze(1)
