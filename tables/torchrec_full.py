"""The ``full`` method as a plain torchrec ``EmbeddingBagCollection``, so that torchrec's
``DistributedModelParallel`` can shard it (``docs/architecture.md`` §3, ``docs/distributed.md``).

Not a registered method: ``make_table("full", ...)`` builds :class:`~slimembed.tables.FullTable`,
and the DMP runtime moves it onto this class (:meth:`TorchrecFullTable.from_full`, same rows)
before sharding. Needs torchrec.

Example::

    >>> import torch
    >>> from slimembed.tables import Feature, TorchrecFullTable, make_table
    >>> full = make_table("full", [Feature("C0", 10, 4), Feature("C1", 6, 4)])
    >>> t = TorchrecFullTable.from_full(full)
    >>> ids = torch.tensor([[3, 5], [0, 1]])
    >>> t(ids).shape, bool(torch.equal(t(ids), full(ids)))
    (torch.Size([2, 2, 4]), True)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import EmbeddingTable


class TorchrecFullTable(EmbeddingTable):
    """One torchrec table per feature (``full_<name>``, ``N_f x D``) in ``self.ebc``: the rows of
    :class:`~slimembed.tables.FullTable`, held where DMP can shard them.

    Dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]`` (unweighted only).
    Every feature must have the same ``embedding_dim``.

    Args:
        features: the features (one torchrec table each).
        init_scale: rows start uniform in ``[-init_scale, init_scale]`` (as ``FullTable``).
    """

    method = "full"
    sparse = False
    not_shardable_reason: Optional[str] = None

    def __init__(self, features: Sequence[Any], init_scale: float = 0.05) -> None:
        super().__init__(features)
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        dims = {int(f.embedding_dim) for f in self.features}
        if len(dims) != 1:
            raise ValueError(f"TorchrecFullTable needs one embedding_dim, got {sorted(dims)}")
        self.init_scale = float(init_scale)
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(num_embeddings=int(f.num_embeddings), embedding_dim=int(f.embedding_dim),
                               name=f"full_{f.name}", feature_names=[f.name],
                               pooling=PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM,
                               weight_init_min=-self.init_scale, weight_init_max=self.init_scale)
            for f in self.features])

    @classmethod
    def from_full(cls, table: nn.Module) -> "TorchrecFullTable":
        """The same rows as ``table`` (a :class:`~slimembed.tables.FullTable`), on its device."""
        new = cls(table.features, init_scale=getattr(table, "init_scale", 0.05))
        with torch.no_grad():
            w = table.weight.detach()
            start = 0
            for f in table.features:
                n = int(f.num_embeddings)
                new.ebc.embedding_bags[f"full_{f.name}"].weight.copy_(w[start:start + n])
                start += n
        return new.to(table.weight.device)

    def why_not_shardable(self) -> Optional[str]:
        """Always shardable: its rows are a plain torchrec ``EmbeddingBagCollection``."""
        return None

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "sparse": False, "init_scale": self.init_scale}

    @property
    def rows_per_feature(self) -> List[int]:
        return [int(f.num_embeddings) for f in self.features]

    def _fields(self, kt: Any, b: int) -> Tensor:
        """The EBC's pooled output as ``[B, F, D]`` in feature order (a sharded EBC returns its
        keys grouped by shard, not in config order)."""
        v = kt.values().view(b, self.num_features, -1)
        keys = kt.keys()
        if keys != self.feature_names:
            v = v[:, [keys.index(n) for n in self.feature_names]]
        return v

    def forward_dense(self, ids: Tensor) -> Tensor:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        b, nf = ids.shape
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names, values=ids.t().reshape(-1),
            lengths=torch.ones(b * nf, dtype=torch.long, device=ids.device))
        return self._fields(self.ebc(kjt), b)

    def forward_kjt(self, kjt: Any) -> Any:
        names = self.feature_names
        if kjt.keys() != names:
            missing = [n for n in names if n not in kjt.keys()]
            if missing:
                raise ValueError(f"KeyedJaggedTensor lacks features {missing}; it has {kjt.keys()}")
            kjt = kjt.permute([kjt.keys().index(n) for n in names])
        if kjt.weights_or_none() is not None:
            raise ValueError("TorchrecFullTable builds an unweighted EmbeddingBagCollection")
        per_key = torch.tensor(kjt.length_per_key(), device=kjt.values().device)
        self.check_ids(kjt.values(), torch.repeat_interleave(torch.arange(len(names), device=per_key.device), per_key))
        from torchrec.sparse.jagged_tensor import KeyedTensor

        b = kjt.stride()
        return KeyedTensor(keys=names, length_per_key=self.output_dims,
                           values=self._fields(self.ebc(kjt), b).reshape(b, -1))

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        raise RuntimeError("TorchrecFullTable has no per-id path; use FullTable for nn.EmbeddingBag drop-ins")


__all__ = ["TorchrecFullTable"]
