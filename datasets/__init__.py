"""slimembed.datasets: Criteo/Avazu/generic readers, preprocessing, synthetic data, loaders.

Example::

    >>> from slimembed.datasets import generate, make_loader, load_processed
    >>> generate("synth", rows=200_000)                       # processed format, teacher AUC ~0.80  # doctest: +SKIP
    >>> ds = load_processed("synth"); features = ds.schema.features(16)  # doctest: +SKIP
    >>> for batch in make_loader("synth", "train", 4096, shuffle=True): ...  # doctest: +SKIP

Raw data: :func:`prepare_criteo` (Kaggle ``train.txt`` / 1TB ``day_N``), :func:`prepare_table`
(CSV/TSV/Parquet with a :class:`TableSpec`; :data:`AVAZU_SPEC`).
"""

from .batch import Batch
from .criteo import (CRITEO_CATEGORICAL, CRITEO_COLUMNS, CRITEO_DENSE,
                     CRITEO_KAGGLE_CARDINALITIES, CRITEO_LABEL, CriteoChunk, CriteoReader,
                     read_criteo)
from .errors import BadRows, DataFormatError
from .ids import HASH_KEY, ID_SPACE, MISSING_ID, hash_strings, random_split
from .preprocess import PrepareReport, prepare_criteo, prepare_table
from .processed import ProcessedDataset, ProcessedLoader, load_processed, make_loader
from .schema import CategoricalColumn, Schema, fold_size
from .synthetic import DEFAULT_PROFILE, PROFILES, GenerateReport, generate, synthetic_cardinalities
from .tabular import AVAZU_SPEC, TableReader, TableSpec

__all__ = [
    "Batch", "CategoricalColumn", "Schema", "fold_size",
    "CRITEO_CATEGORICAL", "CRITEO_COLUMNS", "CRITEO_DENSE", "CRITEO_KAGGLE_CARDINALITIES",
    "CRITEO_LABEL", "CriteoChunk", "CriteoReader", "read_criteo",
    "BadRows", "DataFormatError",
    "HASH_KEY", "ID_SPACE", "MISSING_ID", "hash_strings", "random_split",
    "PrepareReport", "prepare_criteo", "prepare_table",
    "ProcessedDataset", "ProcessedLoader", "load_processed", "make_loader",
    "DEFAULT_PROFILE", "PROFILES", "GenerateReport", "generate", "synthetic_cardinalities",
    "AVAZU_SPEC", "TableReader", "TableSpec",
]
