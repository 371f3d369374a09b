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

    where ``V = [B, F + n_dense, D]`` stacks the field embeddings and one numeric field per dense
    feature (``x_k * e_k``). The FM and the MLP share ``self.embedding``; the first-order weights
    are a separate 1-dim table ``self.first_order``, both from ``table_factory``.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D``).
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.
        hidden_units: MLP hidden widths; default ``(400, 400, 400)``; a final ``Linear -> 1``
            follows.
        activation: MLP activation; default ``"relu"``.
        dropout: MLP dropout; default ``0.0``.
        batch_norm: MLP batch norm; default ``False``.

    MLP layers start xavier-uniform with zero bias.

    Shapes: ``dense [B, n_dense]``, ``sparse LongTensor[B, F]`` or a KJT -> logits ``[B]``.
    """

    name = "deepfm"

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
        self._build_first_order(table_factory)
        self.fm = FMInteraction()
        self.mlp = MLPBlock(self.num_fields * d, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self.hparams = dict(
            hidden_units=list(hidden_units), activation=activation, dropout=dropout, batch_norm=batch_norm
        )

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        v = self.field_inputs(dense, sparse)  # [B, F + n_dense, D]
        out = self.first_order_logit(dense, sparse) + self.fm(v).squeeze(1)
        return out + self.mlp(v.flatten(start_dim=1)).squeeze(1)
