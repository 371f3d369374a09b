"""Dataset schema (DESIGN §2): which columns are the label, dense floats and categorical fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from slimembed.tables.feature import Feature


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

    def features(self, embedding_dim: int = 16) -> List[Feature]:
        out = []
        for c in self.categorical:
            if c.num_embeddings < 1:
                raise ValueError(f"column {c.name!r} has no vocabulary size yet (num_embeddings=0)")
            out.append(Feature(c.name, int(c.num_embeddings), embedding_dim, c.pooling))
        return out

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
