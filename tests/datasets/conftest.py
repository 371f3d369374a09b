"""Shared fixtures for the datasets tests: the real 1,999-row Criteo sample, processed once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from slimembed.datasets import CRITEO_COLUMNS, prepare_criteo

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "criteo_kaggle_head1999.tsv"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    assert SAMPLE.exists(), f"missing test data {SAMPLE}"
    return SAMPLE


@pytest.fixture(scope="session")
def sample_df(sample_path) -> pd.DataFrame:
    """The sample as strings (no coercion), missing = NaN."""
    return pd.read_csv(sample_path, sep="\t", header=None, names=list(CRITEO_COLUMNS), dtype=str,
                       keep_default_na=False, na_values=[""])


@pytest.fixture(scope="session")
def criteo_log(tmp_path_factory, sample_path):
    """Sample -> processed (dense log, vocabulary min_count=2)."""
    out = tmp_path_factory.mktemp("criteo_log")
    rep = prepare_criteo(sample_path, out, min_count=2, chunk_rows=700)
    return out, rep
