"""The quotient-remainder trick (Shi, Mudigere, Naumov, Yang, "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", KDD 2020, arXiv 1909.02107).

``e(x) = Wq[x // c] ∘ Wr[x % c]`` with ``c`` collisions per feature: a quotient table of
``ceil(N / c)`` rows and a remainder table of ``c`` rows; ``∘`` is element-wise ``mult`` (default),
``add`` or ``concat``. The pair ``(x // c, x % c)`` is unique for every id, so every id gets its own
vector. As in DLRM (``--qr-threshold``), features with at most ``threshold = 200`` rows keep a plain
table. It is the two-partition case of :class:`slimembed.tables.CompositionalTable`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .base import DEFAULT_INIT_SCALE
from .compositional import CompositionalTable
from .feature import Feature
from .dropin import EmbeddingBag
from .registry import register


@register("qr")
class QRTable(CompositionalTable):
    """Quotient-remainder embeddings for every feature above ``threshold`` rows, in one fused weight.

    Args:
        features: the features (one ``embedding_dim``; even for concat). Ids must lie in
            ``[0, N_f)``; others raise a ``ValueError`` naming the feature and the value.
        collisions: ``c`` per feature: an int (DLRM's default 4), a list, or ``{name: c}``
            (``None`` keeps a feature full). Memory per feature ``(ceil(N/c) + c) * D`` floats,
            smallest at ``c ~ sqrt(N)``.
        operation: ``"mult"`` (default), ``"add"`` or ``"concat"`` (two ``D/2`` halves, so the
            output stays ``D``; DLRM's concat gives ``2D`` instead).
        threshold: features with at most this many rows stay full (200).
        sparse: sparse row gradients.
        init_scale: see :class:`CompositionalTable`: for ``mult`` both tables are uniform
            ``±sqrt(3) * sqrt(s / sqrt(3))`` (about ±0.29 for ``s = 0.05``), so the product has the
            spread of uniform ``±s``; DLRM's ``U(sqrt(1/N), 1)`` quirk is not reproduced.

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = QRTable([Feature("C1", 10**6, 16), Feature("C2", 100, 16)], collisions=1000)
        >>> t.rows_per_feature        # 1000 quotient + 1000 remainder rows; C2 stays full
        [2000, 100]
    """

    method = "qr"
    solved_knobs = ("collisions",)
    search_space = {"operation": ["mult", "add", "concat"]}
    not_shardable_reason = ("the quotient and remainder rows are combined per id (mult by default) before "
                            "pooling; torchrec pools each table separately, so no EmbeddingBagCollection "
                            "can express it")

    def __init__(
        self,
        features: Sequence[Feature],
        collisions: Union[int, Sequence[Optional[int]], Dict[str, Optional[int]], None] = 4,
        operation: str = "mult",
        threshold: int = 200,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features, num_partitions=2, radix=collisions, operation=operation,
                         partition="radix", threshold=threshold, sparse=sparse,
                         init_scale=init_scale)

    @property
    def collisions(self):
        """``c`` per feature (``None`` for a full feature)."""
        return [None if r is None else r[0] for r in self.radix_list]

    def config(self) -> Dict[str, Any]:
        return {"method": self.method, "features": [f.to_dict() for f in self.features],
                "collisions": self.collisions, "operation": self.operation,
                "threshold": self.threshold, "sparse": self.sparse, "init_scale": self.init_scale}

    @classmethod
    def _make(cls, features, k, rad, extra):
        extra = {key: v for key, v in extra.items() if key not in ("partition",)}
        return cls(features, collisions=rad, **extra)


class QREmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by :class:`QRTable` (one feature), like DLRM's
    ``QREmbeddingBag`` but with ``nn.EmbeddingBag``'s constructor.

    Args: ``nn.EmbeddingBag``'s (same order; ``max_norm``, ``scale_grad_by_freq`` and ``_weight``
    raise ``NotImplementedError``) plus, keyword-only, ``num_collisions`` (4), ``operation``
    (``"mult"``), ``threshold`` (200: a smaller vocabulary keeps a plain table).
    ``forward(input, offsets=None, per_sample_weights=None) -> [B, embedding_dim]``.

    Example::

        >>> bag = QREmbeddingBag(10**5, 16, num_collisions=300, mode="sum")
        >>> bag(torch.tensor([0, 99_999, 5]), torch.tensor([0, 1])).shape
        torch.Size([2, 16])
    """

    fixed_method = "qr"
    renamed = {"num_collisions": "collisions"}
