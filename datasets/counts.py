"""Training-split value counts per field, for frequency-aware tables and the budget planner.

Frequency-aware methods (``adaptive``, ``mgqe``, frequency-aware ``double_hash``) and the
``frequency`` allocation rule of ``hash``/``double_hash`` read how often each value occurs in the
*training* split. :func:`train_counts` computes them from a processed dataset's training arrays
(one ``np.unique`` per field over the memory-mapped column: vectorized, works for vocabulary ids
and for vocabulary-free 64-bit ids alike), so data made by ``prepare`` and by ``generate`` both
have them.

Example::

    >>> import tempfile
    >>> from slimembed.datasets import generate
    >>> out = tempfile.mkdtemp(); _ = generate(out, rows=2_000, seed=0)
    >>> counts = train_counts(out)
    >>> ids, n = counts["C9"]                  # a 3-value field: its distinct ids and their counts
    >>> int(n.sum()) == load_processed(out).splits["train"]
    True
    >>> w = frequency_weights(counts)
    >>> 1.0 <= w["C9"] <= 4.0                  # effective number of values of a tiny field
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from .processed import SplitArrays, load_processed

Counts = Dict[str, Tuple[np.ndarray, np.ndarray]]


def train_counts(data_dir: Union[str, Path]) -> Counts:
    """``{field: (ids int64[V] sorted, counts int64[V])}`` over the training split.

    Multi-valued fields count every value of every bag.
    """
    ds = load_processed(data_dir)
    arrays = SplitArrays(ds.path, "train", ds.schema)
    out: Counts = {}
    col = 0
    for c in ds.schema.categorical:
        if c.multi_valued:
            values = np.asarray(arrays.multi[c.name][0], dtype=np.int64)
        else:
            values = np.asarray(arrays.sparse[:, col], dtype=np.int64)
            col += 1
        ids, n = np.unique(values, return_counts=True)
        out[c.name] = (ids.astype(np.int64), n.astype(np.int64))
    return out


def frequency_weights(counts: Counts) -> Dict[str, float]:
    """Per field, its effective number of values in the training traffic: ``exp(H)`` of the value
    distribution (``H`` the entropy in nats). A field whose traffic is spread over many values
    needs many rows; one whose traffic sits on a few values needs few, whatever its cardinality.
    This is the weight of the ``frequency`` allocation rule (our definition; see
    docs/architecture.md §2)."""
    out: Dict[str, float] = {}
    for name, (_, n) in counts.items():
        total = float(n.sum())
        if total <= 0:
            out[name] = 1.0
            continue
        p = n[n > 0] / total
        out[name] = float(math.exp(-(p * np.log(p)).sum()))
    return out


def dense_counts(counts: Counts, num_embeddings: Dict[str, int]) -> Dict[str, np.ndarray]:
    """Per vocabulary field, ``int64[N_f]``: the count of each id ``0..N_f-1`` (0 where unseen).

    For vocabulary-free fields (ids beyond ``N_f``) use the ``(ids, counts)`` pairs instead.
    """
    out: Dict[str, np.ndarray] = {}
    for name, (ids, n) in counts.items():
        size = int(num_embeddings[name])
        if len(ids) and int(ids[-1]) >= size:
            raise ValueError(f"field {name!r}: id {int(ids[-1])} outside [0, {size}): vocabulary-free ids "
                             "have no dense count array")
        arr = np.zeros(size, dtype=np.int64)
        arr[ids] = n
        out[name] = arr
    return out
