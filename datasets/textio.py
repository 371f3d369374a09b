"""Line-aligned chunks of delimited text files, and the vectorized pieces of bad-row diagnosis.

A chunk is a ``bytes`` object of whole lines (ending in ``\\n``) plus the 1-based number of its
first line, so a row's position inside a parsed chunk gives its exact line in the file. Files
ending in ``.gz``/``.bz2``/``.zst``/``.lz4`` are decompressed on the fly (pyarrow streams).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

_NL = 10


@dataclass
class LineChunk:
    """``data``: whole lines, each ending in ``\\n``; ``first_line``: 1-based line of the first;
    ``n_lines``: number of lines."""

    data: bytes
    first_line: int
    n_lines: int


def _open(path: Union[str, Path]) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="detect")


def read_first_line(path: Union[str, Path], limit: int = 1 << 20) -> bytes:
    """The first line of a file without its newline (up to ``limit`` bytes)."""
    with _open(path) as f:
        head = f.read(limit)
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    return line[:-1] if line.endswith(b"\r") else line


def iter_line_chunks(path: Union[str, Path], chunk_rows: int, *, skip_lines: int = 0,
                     max_lines: Optional[int] = None, read_bytes: int = 8 << 20,
                     byte_range: Optional[Tuple[int, int]] = None,
                     first_line: int = 1) -> Iterator[LineChunk]:
    """Yield chunks of ``chunk_rows`` whole lines (the last one shorter).

    Args:
        path: text file (optionally compressed).
        chunk_rows: lines per chunk.
        skip_lines: lines to skip first (a header); they still count in line numbers.
        max_lines: stop after this many lines (after the skipped ones).
        read_bytes: bytes per read call.
        byte_range: ``(start, end)`` byte offsets of an uncompressed file to read instead of the
            whole file; both must lie on line starts (see :func:`line_aligned_cuts`).
        first_line: 1-based line number of the first line read (the range's start line).

    Memory is bounded by one chunk plus one read.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    remaining = None if max_lines is None else int(max_lines)
    line = int(first_line)
    pieces: List = []
    counts: List[int] = []
    total = 0  # newlines held in pieces
    to_skip = int(skip_lines)
    eof = False
    left = None if byte_range is None else int(byte_range[1]) - int(byte_range[0])
    with (_open(path) if byte_range is None else pa.OSFile(str(path), "rb")) as f:
        if byte_range is not None:
            f.seek(int(byte_range[0]))
        while not eof:
            piece = f.read(read_bytes if left is None else min(read_bytes, left))
            if left is not None:
                left -= len(piece)
            if not piece:
                eof = True
                if pieces and bytes(pieces[-1][-1:]) != b"\n":
                    pieces.append(b"\n")
                    counts.append(1)
                    total += 1
            else:
                pieces.append(piece)
                counts.append(piece.count(b"\n"))
                total += counts[-1]
            while to_skip and total:
                k = min(to_skip, total)
                _, pieces, counts = _cut(pieces, counts, k)
                total -= k
                to_skip -= k
                line += k
            while not to_skip:
                want = chunk_rows if remaining is None else min(chunk_rows, remaining)
                if want <= 0 or not (total >= want or (eof and total)):
                    break
                k = min(want, total)
                data, pieces, counts = _cut(pieces, counts, k)
                total -= k
                yield LineChunk(data, line, k)
                line += k
                if remaining is not None:
                    remaining -= k
            if remaining is not None and remaining <= 0:
                return


def line_aligned_cuts(path: Union[str, Path], pieces: int) -> List[int]:
    """Byte offsets ``[0, c_1, ..., size]`` cutting an uncompressed file into about ``pieces``
    equal byte ranges, each cut just after a newline (so each range holds whole lines)."""
    size = Path(path).stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, max(int(pieces), 1)):
            at = max(size * i // pieces, cuts[-1])
            f.seek(at)
            while True:  # find the next newline at or after `at` (lines are short)
                block = f.read(1 << 16)
                if not block:
                    at = size
                    break
                nl = block.find(b"\n")
                if nl >= 0:
                    at += nl + 1
                    break
                at += len(block)
            if cuts[-1] < at < size:
                cuts.append(at)
    cuts.append(size)
    return cuts


def count_lines(path: Union[str, Path], byte_range: Optional[Tuple[int, int]] = None,
                read_bytes: int = 16 << 20) -> int:
    """Lines in a file (or a line-aligned byte range of it); a last line without a newline counts."""
    n, last = 0, b"\n"
    left = None if byte_range is None else int(byte_range[1]) - int(byte_range[0])
    with (_open(path) if byte_range is None else pa.OSFile(str(path), "rb")) as f:
        if byte_range is not None:
            f.seek(int(byte_range[0]))
        while left is None or left > 0:
            piece = f.read(read_bytes if left is None else min(read_bytes, left))
            if not piece:
                break
            if left is not None:
                left -= len(piece)
            n += piece.count(b"\n")
            last = bytes(piece[-1:])
    return n + (last != b"\n")


def _cut(pieces: List, counts: List[int], k: int) -> Tuple[bytes, List, List[int]]:
    """Split off the first ``k`` lines of ``pieces`` (holding at least ``k`` newlines).

    Pieces are ``bytes`` or ``memoryview`` s of them: the cut piece is sliced without copying,
    so each byte is copied once (by the join).
    """
    cum = 0
    for i, c in enumerate(counts):
        if cum + c >= k:
            break
        cum += c
    local = k - cum  # the cut is after the local-th newline of pieces[i]
    p = memoryview(pieces[i])
    pos = int(np.flatnonzero(np.frombuffer(p, dtype=np.uint8) == _NL)[local - 1])
    head = b"".join(pieces[:i] + [p[: pos + 1]])
    rest = p[pos + 1:]
    keep = len(rest) > 0
    return head, ([rest] if keep else []) + pieces[i + 1:], ([counts[i] - local] if keep else []) + counts[i + 1:]


def line_bounds(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, before ``\\n``) byte offsets of each line: ``uint8[bytes]`` ->
    two ``int64[n_lines]``; ``arr`` ends with a newline."""
    nl = np.flatnonzero(arr == _NL)
    starts = np.empty(len(nl), dtype=np.int64)
    starts[:1] = 0
    starts[1:] = nl[:-1] + 1
    return starts, nl.astype(np.int64)


def count_fields(arr: np.ndarray, ends: np.ndarray, delimiter: str,
                 quote: Optional[str] = None) -> np.ndarray:
    """Fields per line: ``int64[n_lines]``. With ``quote``, delimiters inside quotes don't count
    (a doubled quote inside a quoted value toggles twice, so it is handled too)."""
    delim = np.flatnonzero(arr == ord(delimiter))
    if quote is not None and len(delim):
        q = (arr == ord(quote)).astype(np.int64)
        parity = np.cumsum(q)
        starts = np.concatenate([[0], ends[:-1] + 1])
        before = parity[starts] - q[starts]  # quotes before each line start
        line_of = np.searchsorted(ends, delim)
        inside = ((parity[delim] - before[line_of]) & 1).astype(bool)
        delim = delim[~inside]
    line_of = np.searchsorted(ends, delim)
    return np.bincount(line_of, minlength=len(ends)).astype(np.int64) + 1


def keep_lines(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, keep: np.ndarray) -> bytes:
    """The bytes of the kept lines (with their newlines): ``keep`` is ``bool[n_lines]``."""
    lengths = ends - starts + 1
    mask = np.repeat(keep, lengths)
    return arr[mask].tobytes()
