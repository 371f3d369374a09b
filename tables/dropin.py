"""One ``nn.EmbeddingBag`` drop-in for every table method (``docs/architecture.md`` §3).

:class:`EmbeddingBag` takes ``nn.EmbeddingBag``'s constructor (same positional order) plus,
keyword-only, ``method``, ``budget_bytes`` / ``compression`` and the method's own arguments under
the TABLE's names (``rows`` for hash, ``collisions`` for qr, ...); its forward is
``nn.EmbeddingBag``'s (:class:`~slimembed.tables.base.TableEmbeddingBag`). The named drop-ins
(``HashEmbeddingBag``, ``QREmbeddingBag``, ...) are subclasses that fix ``method`` and accept
their historical keyword names (``num_rows``, ``num_collisions``, ...) through ``renamed``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch
from torch import Tensor, nn

from .base import TableEmbeddingBag
from .feature import Feature
from .registry import get_table_class, make_table


class EmbeddingBag(TableEmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by any registered table method (one feature, ``"input"``).

    Args:
        num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
            _weight, include_last_offset, padding_idx, device, dtype: ``nn.EmbeddingBag``'s, in
            its order. ``num_embeddings`` may be the id space (e.g. ``2**63``) for hashing
            methods. ``max_norm`` / ``scale_grad_by_freq`` raise ``NotImplementedError``;
            ``sparse=True`` needs a method with ``supports_sparse``; ``_weight [N, D]`` needs a
            method that stores the rows as such (``full``, ``optembed``, ``mde`` at full dim).
        method: the table method (:func:`slimembed.tables.available_methods`), default ``full``.
        budget_bytes, compression: size the method's knob to a budget (as :func:`make_table`).
        **method_kwargs: the table's own arguments, under the table's names.

    ``forward(input, offsets=None, per_sample_weights=None) -> [B, embedding_dim]``. Differences
    from ``nn.EmbeddingBag``, on purpose: rows start uniform ±0.05 and ids outside
    ``[0, num_embeddings)`` raise a ``ValueError`` naming the value.

    Example::

        >>> import torch
        >>> from slimembed.tables import EmbeddingBag
        >>> bag = EmbeddingBag(10**5, 16, mode="sum", method="qr", collisions=300)
        >>> bag(torch.tensor([0, 99_999, 5]), torch.tensor([0, 1])).shape
        torch.Size([2, 16])
        >>> EmbeddingBag(10**5, 16, method="hash", compression=100).table.budget_solution["knob"]
        'total_rows'
    """

    #: set by a named drop-in: the method it is fixed to (then ``method=`` is not accepted)
    fixed_method: ClassVar[Optional[str]] = None
    #: a named drop-in's historical keyword -> the table's keyword
    renamed: ClassVar[Dict[str, str]] = {}
    #: a named drop-in may refuse ``sparse=True`` although its table takes it (None: the table decides)
    sparse_ok: ClassVar[Optional[bool]] = None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        method: str = "full",
        budget_bytes: Optional[int] = None,
        compression: Optional[float] = None,
        **method_kwargs: Any,
    ) -> None:
        who = type(self).__name__
        if max_norm is not None or scale_grad_by_freq:
            raise NotImplementedError(f"{who} does not support max_norm or scale_grad_by_freq")
        method = self.fixed_method or method
        table_cls = get_table_class(method)
        kwargs = self.table_kwargs(int(num_embeddings), int(embedding_dim),
                                   {self.renamed.get(k, k): v for k, v in method_kwargs.items()})
        if sparse:
            ok = table_cls.supports_sparse if self.sparse_ok is None else self.sparse_ok
            if not ok:
                raise NotImplementedError(f"{who}: method {method!r} has no sparse row gradients; "
                                          "sparse=True is not supported")
            kwargs["sparse"] = True
        table = make_table(method, [Feature("input", num_embeddings, embedding_dim)],
                           budget_bytes=budget_bytes, compression=compression, **kwargs)
        super().__init__(table, mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx)
        rows = table.dense_rows()
        if _weight is not None and rows is None:
            raise NotImplementedError(f"{who} has no [num_embeddings, dim] weight to initialise from _weight")
        with torch.no_grad():
            if _weight is not None:
                if tuple(_weight.shape) != tuple(rows.shape) or rows.shape[1] != embedding_dim:
                    raise ValueError(f"_weight shape {tuple(_weight.shape)} != ({num_embeddings}, "
                                     f"{embedding_dim}) rows of {who}'s table {tuple(rows.shape)}")
                rows.copy_(_weight)
            if padding_idx is not None and rows is not None:
                rows[self.padding_idx].zero_()  # as nn.EmbeddingBag: the padding row starts at zero
        table.to(device=device, dtype=dtype)

    def table_kwargs(self, num_embeddings: int, embedding_dim: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The table's arguments from the drop-in's (a named drop-in adapts its defaults here)."""
        return kwargs

    @property
    def weight(self) -> nn.Parameter:
        """The table's stored rows (``dense_rows()``, else its fused ``weight``)."""
        rows = self.table.dense_rows()
        return self.table.weight if rows is None else rows
