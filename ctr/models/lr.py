"""Logistic regression: the first-order term alone."""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

from slimembed.tables import Feature

from .base import CTRModel, SparseInput, TableFactory


class LR(CTRModel):
    """Logistic regression over one-hot fields and dense features:

    ``logit = b + Σ_f w[x_f] + dense @ w_dense``.

    The per-value weights ``w`` are a 1-dim table ``self.first_order =
    table_factory(with_dim(features, 1))`` (compressible like any table); ``w_dense`` is a
    ``Linear(n_dense, 1, bias=False)`` (xavier-uniform), ``b`` starts at 0. There is no
    ``self.embedding`` and no hyper-parameter; ``features``, ``num_dense`` and ``table_factory``
    are :class:`~slimembed.ctr.models.base.CTRModel`'s.

    Example::

        >>> import torch
        >>> m = LR([Feature("C1", 100, 8)], num_dense=2)
        >>> m(torch.randn(4, 2), torch.randint(0, 100, (4, 1))).shape
        torch.Size([4])
    """

    name = "lr"

    def __init__(self, features: List[Feature], num_dense: int,
                 table_factory: Optional[TableFactory] = None) -> None:
        super().__init__(features, num_dense, table_factory, embedding=False, first_order=True)

    def forward(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``dense [B, n_dense]``, ``sparse [B, F]`` ids or KJT -> logits ``[B]``."""
        return self.first_order_logit(dense, sparse)
