"""The feature contract shared by datasets, tables and models (docs/architecture.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

POOLINGS = ("sum", "mean")


@dataclass(frozen=True)
class Feature:
    """One categorical feature.

    Args:
        name: feature name, the key in a ``KeyedJaggedTensor`` and in outputs.
        num_embeddings: vocabulary rows, OOV row included. For vocabulary-free hashing methods,
            the size of the id space (may be ``2**63``).
        embedding_dim: output dimension of the feature's embedding.
        pooling: how a multi-valued bag is reduced: ``"sum"`` or ``"mean"``.

    Example::

        >>> Feature("C1", num_embeddings=1461, embedding_dim=16)
        Feature(name='C1', num_embeddings=1461, embedding_dim=16, pooling='sum')
    """

    name: str
    num_embeddings: int
    embedding_dim: int = 16
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Feature.name must be a non-empty string, got {self.name!r}")
        if int(self.num_embeddings) < 1:
            raise ValueError(
                f"Feature {self.name!r}: num_embeddings must be >= 1, got {self.num_embeddings}"
            )
        if int(self.embedding_dim) < 1:
            raise ValueError(
                f"Feature {self.name!r}: embedding_dim must be >= 1, got {self.embedding_dim}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"Feature {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}"
            )

    def to_dict(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "num_embeddings": int(self.num_embeddings),
            "embedding_dim": int(self.embedding_dim),
            "pooling": self.pooling,
        }

    @staticmethod
    def from_dict(d: Dict[str, object]) -> "Feature":
        return Feature(
            name=str(d["name"]),
            num_embeddings=int(d["num_embeddings"]),  # type: ignore[arg-type]
            embedding_dim=int(d.get("embedding_dim", 16)),  # type: ignore[arg-type]
            pooling=str(d.get("pooling", "sum")),
        )


def check_features(features: Sequence[Feature]) -> List[Feature]:
    """Validate a feature list: non-empty, unique names. Returns it as a list."""
    features = list(features)
    if not features:
        raise ValueError("a table needs at least one feature, got an empty list")
    for f in features:
        if not isinstance(f, Feature):
            raise TypeError(f"expected slimembed.tables.Feature, got {type(f).__name__}: {f!r}")
    names = [f.name for f in features]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate feature names: {dup}")
    return features


def with_dim(features: Sequence[Feature], dim: int) -> List[Feature]:
    """The same features with another ``embedding_dim`` (e.g. 1 for first-order tables)."""
    return [Feature(f.name, f.num_embeddings, dim, f.pooling) for f in features]
