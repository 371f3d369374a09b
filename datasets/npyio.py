"""Streaming ``.npy`` files: append rows without knowing the final length, read row ranges.

:class:`NpyAppender` reserves a fixed 128-byte header, appends C-ordered rows with plain file
writes (no memory map, so the writer's resident memory stays bounded), and writes the real
header on :meth:`~NpyAppender.close`. The result is an ordinary ``.npy`` (format 1.0) that
``np.load(path, mmap_mode="r")`` opens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np

HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def _header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    text = repr(d).encode("latin1")
    room = HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > room:
        raise ValueError(f"npy header too long for shape {shape}")
    text = text + b" " * (room - len(text) - 1) + b"\n"
    return _MAGIC + int(room).to_bytes(2, "little") + text


class NpyAppender:
    """Append-only writer of one ``.npy`` array of shape ``[N, *row_shape]``.

    Args:
        path: output file (``.npy``).
        dtype: element type.
        row_shape: trailing shape of one row (``()`` for a vector).

    Example::

        >>> w = NpyAppender("/tmp/x.npy", np.float32, (3,))
        >>> w.append(np.zeros((5, 3), np.float32)); w.append(np.ones((2, 3), np.float32))
        >>> w.close()
        >>> np.load("/tmp/x.npy").shape
        (7, 3)
    """

    def __init__(self, path: Union[str, Path], dtype: np.dtype, row_shape: Tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "wb")
        self._f.write(b"\0" * HEADER_BYTES)

    def append(self, a: np.ndarray) -> None:
        """Append rows ``a`` of shape ``[n, *row_shape]`` (cast to ``dtype``)."""
        a = np.ascontiguousarray(a, dtype=self.dtype)
        if tuple(a.shape[1:]) != self.row_shape:
            raise ValueError(f"{self.path}: row shape {a.shape[1:]} != {self.row_shape}")
        self._f.write(a.tobytes())
        self.rows += int(a.shape[0])

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(_header(self.dtype, (self.rows,) + self.row_shape))
        self._f.close()


def write_npy(path: Union[str, Path], a: np.ndarray) -> None:
    """Write a whole array as ``.npy`` (same header layout as :class:`NpyAppender`)."""
    w = NpyAppender(path, a.dtype, tuple(a.shape[1:]))
    w.append(a)
    w.close()


def _read_header(f) -> Tuple[Tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


def npy_shape(path: Union[str, Path]) -> Tuple[int, ...]:
    """Shape of an ``.npy`` file, from its header."""
    with open(path, "rb") as f:
        return _read_header(f)[0]


def open_npy(path: Union[str, Path]) -> np.ndarray:
    """Memory-map an ``.npy`` read-only; empty arrays (no bytes to map) are returned in memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"processed array missing: {path}")
    with open(path, "rb") as f:
        shape, dtype = _read_header(f)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r")


def read_rows(path: Union[str, Path], start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of an ``.npy`` with plain reads (no memory map)."""
    with open(path, "rb") as f:
        shape, dtype = _read_header(f)
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        base = f.tell()
        f.seek(base + start * row * dtype.itemsize, os.SEEK_SET)
        a = np.fromfile(f, dtype=dtype, count=(stop - start) * row)
    return a.reshape((stop - start,) + tuple(shape[1:]))
