"""Stable ids for raw categories, and the seeded row hash behind every random split.

Every reader in :mod:`slimembed.datasets` turns a raw category into a *raw id*: a non-negative
63-bit integer (``int64``) that depends only on the value, never on the file, the chunking, the
process or the machine.

* strings: ``pandas.util.hash_array`` (SipHash-2-4) with the fixed 16-byte key :data:`HASH_KEY`,
  masked to 63 bits;
* small integers made by the library itself (dense buckets): :func:`mix64` with a fixed salt;
* the missing value (empty cell / null) is always :data:`MISSING_ID` ``= 0``; a real value whose
  hash is 0 is moved to 1 (probability 2**-63).

The same string gets the same raw id in every field (fields are not salted here: hashing tables
salt per feature themselves). In vocabulary mode the raw ids are only an intermediate: ids become
``1 + rank`` in the field's sorted vocabulary, 0 being OOV. In vocabulary-free mode the raw ids
are the ids (``num_embeddings = 2**63``).

:func:`split_uniform` maps a global row index and a seed to a uniform float in [0, 1) with a
counter-based hash (splitmix64), so a row's split never depends on chunking or on other rows.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

from .arrowcols import numeric_column

#: 16-byte SipHash key for category strings. Changing it changes every vocabulary-free id.
HASH_KEY = "slimembed-ids-v1"
#: Raw id of a missing value (empty cell / null).
MISSING_ID = 0
#: Raw ids are masked to 63 bits so they fit ``int64`` and stay non-negative.
ID_MASK = np.uint64((1 << 63) - 1)
#: Size of the raw id space (``num_embeddings`` of every field in vocabulary-free mode).
ID_SPACE = 1 << 63

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

assert len(HASH_KEY.encode()) == 16


def mix64(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """splitmix64 finaliser of ``x + (seed + 1) * golden``; ``uint64[...]`` -> ``uint64[...]``.

    A bijection of the 64-bit integers for a fixed seed; vectorized, wrapping arithmetic.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x).astype(np.uint64, copy=True)
        z += np.uint64((int(seed) + 1) % (1 << 64)) * _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _finish(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> int64 raw ids in [1, 2**63)."""
    ids = (h & ID_MASK).astype(np.int64)
    ids[ids == MISSING_ID] = 1
    return ids


def hash_strings(values: Union[np.ndarray, pa.Array]) -> np.ndarray:
    """Raw ids of category strings: ``str[n]`` -> ``int64[n]`` in [1, 2**63).

    ``values`` must hold no nulls (map missing values to :data:`MISSING_ID` yourself).
    """
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=object)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    return _finish(hash_array(values, encoding="utf8", hash_key=HASH_KEY, categorize=False))


def hash_ints(values: np.ndarray, salt: int) -> np.ndarray:
    """Raw ids of library-made integer categories (e.g. dense buckets): ``int64[n]`` -> ``int64[n]``."""
    return _finish(mix64(np.asarray(values, dtype=np.int64).view(np.uint64), seed=salt))


def split_uniform(row_index: np.ndarray, seed: int) -> np.ndarray:
    """Uniform floats in [0, 1) from global row indices: ``int64[n]`` -> ``float64[n]``.

    Counter-based (a hash of ``(row_index, seed)``): chunking and skipped rows never move a row
    to another split.
    """
    h = mix64(np.asarray(row_index, dtype=np.int64).view(np.uint64), seed=0x5EED0000 + int(seed))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def encode_arrow(column: Union[pa.Array, pa.ChunkedArray]) -> Tuple[np.ndarray, np.ndarray]:
    """Factorised raw ids of one string (or dictionary) column.

    Returns ``(keys, codes)``: ``keys`` ``int64[U]`` raw ids (may repeat across dictionary
    chunks; the last key is :data:`MISSING_ID`, used by nulls) and ``codes`` ``int32[n]`` with
    ``keys[codes]`` the raw id of each row. Only the dictionary values are hashed, so the cost is
    per distinct value, not per row.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    keys = []
    codes = []
    offset = 0
    for ch in chunks:
        if not (pa.types.is_dictionary(ch.type) and _is_str(ch.type.value_type)):
            if not _is_str(ch.type):
                ch = pc.cast(ch, pa.string())
            ch = pc.dictionary_encode(ch)
        d = ch.dictionary
        k = hash_strings(d)
        # The empty string is a missing value too (e.g. an empty token of a list).
        k[pc.utf8_length(d).to_numpy(zero_copy_only=False) == 0] = MISSING_ID
        c, miss = numeric_column(ch.indices, np.int32)
        c = c.astype(np.int64) + offset
        c[miss] = -1
        keys.append(k)
        codes.append(c)
        offset += len(k)
    keys.append(np.array([MISSING_ID], dtype=np.int64))
    key_arr = np.concatenate(keys)
    code_arr = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    code_arr[code_arr < 0] = len(key_arr) - 1
    return key_arr, code_arr.astype(np.int32)


def encode_ints(keys_int: np.ndarray, missing: np.ndarray, salt: int) -> Tuple[np.ndarray, np.ndarray]:
    """Factorised raw ids of an integer category column (``int64[n]``, ``bool[n]`` missing mask).

    Returns ``(keys int64[U], codes int32[n])`` like :func:`encode_arrow`. Uses a bincount over
    the value range when it is small, ``np.unique`` otherwise.
    """
    v = np.asarray(keys_int, dtype=np.int64)
    present = ~missing
    if present.any():
        lo, hi = int(v[present].min()), int(v[present].max())
    else:
        lo, hi = 0, 0
    if hi - lo < max(1 << 16, 4 * len(v)):
        shifted = np.where(present, v - lo, 0)
        seen = np.bincount(shifted[present], minlength=hi - lo + 1) > 0
        uniq = np.flatnonzero(seen)
        remap = np.cumsum(seen) - 1
        codes = remap[shifted]
        uniq_vals = uniq + lo
    else:
        uniq_vals, codes = np.unique(np.where(present, v, lo), return_inverse=True)
    keys = np.concatenate([hash_ints(uniq_vals, salt), [MISSING_ID]]).astype(np.int64)
    codes = np.where(present, codes, len(keys) - 1)
    return keys, codes.astype(np.int32)


def random_split(row_index: np.ndarray, weights: "Tuple[float, float, float]", seed: int) -> np.ndarray:
    """Deterministic split of rows by a hash of their global index: ``int64[n]`` -> ``int8[n]``
    (0 train, 1 val, 2 test) with probabilities proportional to ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (3,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"split weights must be 3 non-negative numbers, got {weights!r}")
    cum = np.cumsum(w / w.sum())[:2]
    return np.searchsorted(cum, split_uniform(row_index, seed), side="right").astype(np.int8)
