"""slimembed.datasets: Criteo/Avazu/generic readers, preprocessing, synthetic data, loaders."""

from .batch import Batch
from .schema import CategoricalColumn, Schema

__all__ = ["Batch", "CategoricalColumn", "Schema"]
