"""Dataset schema (docs/architecture.md §2): which columns are the label, dense floats and
categorical fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from slimembed.tables.feature import Feature


def fold_size(num_embeddings: int, fold: Optional[int], min_rows: int = 0) -> int:
    """``ceil(num_embeddings / fold)`` (at least 1); ``num_embeddings`` when ``fold`` is None or
    ``num_embeddings <= min_rows`` (small fields left whole)."""
    if fold is None or int(num_embeddings) <= int(min_rows):
        return int(num_embeddings)
    if int(fold) < 1:
        raise ValueError(f"fold must be a positive integer, got {fold!r}")
    return max(1, -(-int(num_embeddings) // int(fold)))


@dataclass(frozen=True)
class CategoricalColumn:
    """One categorical column.

    Args:
        name: column / feature name.
        num_embeddings: rows after preprocessing (OOV row included), or the id space size
            (``2**63``) in vocabulary-free mode.
        separator: for a multi-valued column, the separator between values (e.g. ``"|"``);
            ``None`` for single-valued columns.
        pooling: how a multi-valued bag is reduced (``"sum"`` | ``"mean"``).
    """

    name: str
    num_embeddings: int = 0
    separator: Optional[str] = None
    pooling: str = "sum"

    @property
    def multi_valued(self) -> bool:
        return self.separator is not None


@dataclass
class Schema:
    """What a dataset holds: label, dense columns, categorical columns.

    ``features(dim)`` yields the :class:`~slimembed.tables.Feature` list that tables and models
    are built from, in column order.

    Example::

        >>> s = Schema("label", ["I1"], [CategoricalColumn("C1", 100)])
        >>> s.features(8)
        [Feature(name='C1', num_embeddings=100, embedding_dim=8, pooling='sum')]
    """

    label: str
    dense: List[str]
    categorical: List[CategoricalColumn]
    vocabulary_free: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_dense(self) -> int:
        return len(self.dense)

    @property
    def categorical_names(self) -> List[str]:
        return [c.name for c in self.categorical]

    @property
    def multi_valued(self) -> bool:
        return any(c.multi_valued for c in self.categorical)

    def features(self, embedding_dim: int = 16, fold: Optional[int] = None,
                 fold_min_rows: int = 0) -> List[Feature]:
        """One :class:`~slimembed.tables.Feature` per categorical column, in column order.

        ``fold=k`` gives the folded sizes ``ceil(num_embeddings / k)`` that a loader with the same
        ``fold`` (and ``fold_min_rows``) produces ids for (see :meth:`fold_sizes`).
        """
        out = []
        for c in self.categorical:
            if c.num_embeddings < 1:
                raise ValueError(f"column {c.name!r} has no vocabulary size yet (num_embeddings=0)")
        sizes = self.fold_sizes(fold, fold_min_rows)
        for c, n in zip(self.categorical, sizes):
            out.append(Feature(c.name, int(n), embedding_dim, c.pooling))
        return out

    def fold_sizes(self, fold: Optional[int] = None, min_rows: int = 0) -> List[int]:
        """``num_embeddings`` per column after folding ids modulo ``ceil(num_embeddings / fold)``
        (the "ids folded to 1/10, 1/100 of the rows" experiment); unchanged for ``None`` and for
        columns with at most ``min_rows`` rows."""
        return [fold_size(c.num_embeddings, fold, min_rows) for c in self.categorical]

    def folded(self, fold: Optional[int], min_rows: int = 0) -> "Schema":
        """A copy whose ``num_embeddings`` are the folded sizes."""
        cats = [CategoricalColumn(c.name, n, c.separator, c.pooling)
                for c, n in zip(self.categorical, self.fold_sizes(fold, min_rows))]
        meta = dict(self.meta)
        if fold is not None:
            meta["fold"] = int(fold)
            meta["fold_min_rows"] = int(min_rows)
        return Schema(self.label, list(self.dense), cats, self.vocabulary_free, meta)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label,
            "dense": list(self.dense),
            "categorical": [
                {"name": c.name, "num_embeddings": int(c.num_embeddings), "separator": c.separator,
                 "pooling": c.pooling}
                for c in self.categorical
            ],
            "vocabulary_free": self.vocabulary_free,
            "meta": self.meta,
        }

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Schema":
        return Schema(
            label=d["label"],
            dense=list(d.get("dense", [])),
            categorical=[CategoricalColumn(**c) for c in d.get("categorical", [])],
            vocabulary_free=bool(d.get("vocabulary_free", False)),
            meta=dict(d.get("meta", {})),
        )

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def load(path: Union[str, Path]) -> "Schema":
        return Schema.from_dict(json.loads(Path(path).read_text()))
