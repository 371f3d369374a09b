"""Arrow numeric columns to numpy without pyarrow's slow ``fill_null`` (values + missing mask)."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def numeric_column(col: Union[pa.Array, pa.ChunkedArray], dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
    """A fixed-width numeric arrow column as ``(values dtype[n], missing bool[n])``.

    Nulls become 0 in ``values``. The column's arrow type must have the itemsize of ``dtype``
    (e.g. ``int64`` -> ``np.int64``, ``double`` -> ``np.float64``).
    """
    dtype = np.dtype(dtype)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    n = sum(len(c) for c in chunks)
    out = np.empty(n, dtype=dtype)
    miss = np.zeros(n, dtype=bool)
    o = 0
    for ch in chunks:
        k = len(ch)
        if k == 0:
            continue
        if pa.types.is_boolean(ch.type) or ch.type.bit_width != dtype.itemsize * 8:
            ch = pc.cast(ch, pa.from_numpy_dtype(dtype))
        out[o:o + k] = np.frombuffer(ch.buffers()[1], dtype=dtype, count=k,
                                     offset=ch.offset * dtype.itemsize)
        if ch.null_count:
            miss[o:o + k] = ch.is_null().to_numpy(zero_copy_only=False)
        o += k
    out[miss] = 0
    return out, miss
