"""Criteo raw TSV: column names, Kaggle cardinalities, and a streaming, validating reader.

The raw format (Kaggle ``train.txt``, Criteo 1TB ``day_N``): no header, tab-separated, 40 columns
= ``label`` (0/1), ``I1..I13`` (integers, may be empty), ``C1..C26`` (8-hex-digit hashed
categories, may be empty). Empty means missing.

:class:`CriteoReader` streams a file in chunks of ``chunk_rows`` lines with bounded memory:

* fast path: pyarrow's typed CSV parse of the chunk (``label`` int8, ``I*`` int64, ``C*``
  dictionary-encoded strings), multi-threaded;
* if that parse fails, or the chunk contains a byte pyarrow would silently accept in an integer
  (``x`` of a ``0x`` prefix, a space), a diagnostic re-scan of the same chunk: columns per line
  counted with numpy, every ``I`` value checked against ``^-?[0-9]+$``, every label against
  ``0``/``1``, all vectorized. Labels are checked on the fast path too.

A bad row raises :class:`~slimembed.datasets.errors.DataFormatError` naming file, 1-based line
and column (``on_bad_row="error"``, the default) or is dropped and counted by reason in
:attr:`CriteoReader.bad_rows` (``on_bad_row="skip"``). Nothing is coerced.

Usage (needs a Criteo file, so not a doctest)::

    for chunk in CriteoReader("train.txt", chunk_rows=100_000):
        chunk.labels, chunk.dense, chunk.categorical[0]     # int8[n], int64[n, 13], C1
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from .arrowcols import numeric_column
from .errors import REASONS, BadRows, DataFormatError, RowProblems, check_on_bad_row
from .textio import LineChunk, count_fields, iter_line_chunks, keep_lines, line_bounds

#: Raw cardinalities of C1..C26 in Criteo Kaggle ``train.txt`` (45,840,617 rows).
CRITEO_KAGGLE_CARDINALITIES: Tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
CRITEO_LABEL = "label"
CRITEO_DENSE: Tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL: Tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
#: The 40 columns of a raw Criteo line, in order.
CRITEO_COLUMNS: Tuple[str, ...] = (CRITEO_LABEL,) + CRITEO_DENSE + CRITEO_CATEGORICAL
#: Rows of Criteo Kaggle ``train.txt``.
CRITEO_KAGGLE_ROWS = 45_840_617

DEFAULT_CHUNK_ROWS = 1 << 16

_INT_RE = r"^-?[0-9]+$"
# Bytes on which pyarrow's integer parser is laxer than the format ("0x1f" hex, " 5" padding).
_LAX_BYTES = (b"x", b"X", b" ")


@dataclass
class CriteoChunk:
    """One parsed chunk of a raw Criteo file (bad rows already removed or raised).

    Attributes:
        path: the input file.
        lines: ``int64[n]`` 1-based line of each row in ``path``.
        labels: ``int8[n]`` of 0/1.
        dense: ``int64[n, 13]`` I1..I13, 0 where missing.
        dense_missing: ``bool[n, 13]``.
        categorical: 26 arrow arrays C1..C26 (strings, dictionary-encoded on the fast path),
            null = missing.
    """

    path: str
    lines: np.ndarray
    labels: np.ndarray
    dense: np.ndarray
    dense_missing: np.ndarray
    categorical: List[Union[pa.Array, pa.ChunkedArray]]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _options(column_types: dict, use_threads: bool):
    ro = pcsv.ReadOptions(column_names=list(CRITEO_COLUMNS), use_threads=use_threads,
                          block_size=4 << 20)
    po = pcsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                           newlines_in_values=False, ignore_empty_lines=False)
    co = pcsv.ConvertOptions(column_types=column_types, null_values=[""], true_values=[],
                             false_values=[], strings_can_be_null=True,
                             quoted_strings_can_be_null=False)
    return ro, po, co


_TYPED = {CRITEO_LABEL: pa.int8(), **{c: pa.int64() for c in CRITEO_DENSE},
          **{c: pa.dictionary(pa.int32(), pa.string()) for c in CRITEO_CATEGORICAL}}
_STRINGS = {c: pa.string() for c in CRITEO_COLUMNS}


class CriteoReader:
    """Stream a raw Criteo TSV file in validated chunks.

    Args:
        path: ``train.txt``, ``day_N`` (optionally ``.gz``).
        chunk_rows: lines per chunk (memory ~ ``chunk_rows`` x 250 bytes x a few).
        on_bad_row: ``"error"`` (raise :class:`DataFormatError`) or ``"skip"`` (drop and count
            in :attr:`bad_rows`).
        max_rows: read at most this many lines (bad ones included).
        use_threads: let pyarrow parse with several threads.
        bad_rows: a tally to add to (e.g. shared across files); a new one by default.
        prefetch: read and parse the next chunk in a background thread (one chunk ahead).
        byte_range: read only this line-aligned ``(start, end)`` byte range of an uncompressed
            file (parallel preprocessing, :mod:`.parallel`).
        first_line: 1-based line number of the range's first line (for row positions and errors).

    Iterating yields :class:`CriteoChunk`; :attr:`lines_read` counts the lines consumed.
    """

    def __init__(self, path: Union[str, Path], *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 on_bad_row: str = "error", max_rows: Optional[int] = None,
                 use_threads: bool = True, bad_rows: Optional[BadRows] = None,
                 prefetch: bool = True, byte_range: Optional[Tuple[int, int]] = None,
                 first_line: int = 1):
        self.path = str(path)
        self.byte_range = byte_range
        self.first_line = int(first_line)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"Criteo input not found: {self.path}")
        self.chunk_rows = int(chunk_rows)
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.max_rows = max_rows
        self.use_threads = use_threads
        self.prefetch = prefetch
        self.bad_rows = bad_rows if bad_rows is not None else BadRows()
        self.lines_read = 0

    def __iter__(self) -> Iterator[CriteoChunk]:
        chunks = iter_line_chunks(self.path, self.chunk_rows, max_lines=self.max_rows,
                                  byte_range=self.byte_range, first_line=self.first_line)

        def next_parsed() -> Optional[CriteoChunk]:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            self.lines_read += chunk.n_lines
            return self._parse(chunk)

        if not self.prefetch:
            while (out := next_parsed()) is not None:
                if len(out):
                    yield out
            return
        # Read and parse chunk i+1 in a worker thread while the caller works on chunk i
        # (pyarrow and most numpy work release the GIL).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="criteo-read") as pool:
            fut = pool.submit(next_parsed)
            while True:
                out = fut.result()
                if out is None:
                    return
                fut = pool.submit(next_parsed)
                if len(out):
                    yield out

    # -- one chunk -------------------------------------------------------------------------

    def _parse(self, chunk: LineChunk) -> CriteoChunk:
        table = None
        if not any(b in chunk.data for b in _LAX_BYTES):
            try:
                ro, po, co = _options(_TYPED, self.use_threads)
                table = pcsv.read_csv(pa.BufferReader(chunk.data), read_options=ro,
                                      parse_options=po, convert_options=co)
            except pa.ArrowInvalid:
                table = None
        if table is None:
            return self._slow(chunk)
        if table.num_rows != chunk.n_lines:
            raise DataFormatError(
                f"{self.path} lines {chunk.first_line}..{chunk.first_line + chunk.n_lines - 1}: "
                f"parsed {table.num_rows} rows from {chunk.n_lines} lines (a stray carriage "
                "return?)", path=self.path, line=chunk.first_line)
        lines = np.arange(chunk.first_line, chunk.first_line + chunk.n_lines, dtype=np.int64)
        label = table.column(CRITEO_LABEL)
        lab, lab_missing = numeric_column(label, np.int8)
        bad = ((lab != 0) & (lab != 1)) | lab_missing
        if bad.any():
            idx = np.flatnonzero(bad)
            vals = lab[idx].astype(str).astype(object)
            vals[lab_missing[idx]] = None
            problems = RowProblems(self.path, lines[idx],
                                   np.full(len(idx), REASONS.index("bad_label")),
                                   np.full(len(idx), CRITEO_LABEL, dtype=object), vals,
                                   expected=len(CRITEO_COLUMNS))
            self._handle(problems)
            table = table.filter(pa.array(~bad))
            lines = lines[~bad]
        return self._to_chunk(table, lines)

    def _handle(self, problems: RowProblems) -> None:
        if len(problems) == 0:
            return
        if self.on_bad_row == "error":
            problems.raise_first()
        problems.tally(self.bad_rows)

    def _slow(self, chunk: LineChunk) -> CriteoChunk:
        """Diagnostic re-scan: locate every bad row of the chunk, vectorized."""
        arr = np.frombuffer(chunk.data, dtype=np.uint8)
        starts, ends = line_bounds(arr)
        lines_all = np.arange(chunk.first_line, chunk.first_line + len(ends), dtype=np.int64)
        nfields = count_fields(arr, ends, "\t")
        # A CRLF line's "\r" belongs to the last field; pyarrow strips it, so do we.
        good = nfields == len(CRITEO_COLUMNS)
        parts: List[RowProblems] = []
        if (~good).any():
            idx = np.flatnonzero(~good)
            parts.append(RowProblems(
                self.path, lines_all[idx], np.full(len(idx), REASONS.index("wrong_column_count")),
                np.full(len(idx), None, dtype=object), np.full(len(idx), None, dtype=object),
                nfields[idx], expected=len(CRITEO_COLUMNS)))
        lines = lines_all[good]
        if good.any():
            data = keep_lines(arr, starts, ends, good) if not good.all() else chunk.data
            ro, po, co = _options(_STRINGS, self.use_threads)
            try:
                raw = pcsv.read_csv(pa.BufferReader(data), read_options=ro, parse_options=po,
                                    convert_options=co)
            except pa.ArrowInvalid as e:
                raise DataFormatError(
                    f"{self.path} lines {chunk.first_line}..{chunk.first_line + chunk.n_lines - 1}: "
                    f"unparseable: {e}", path=self.path, line=chunk.first_line) from e
            if raw.num_rows != len(lines):
                raise DataFormatError(
                    f"{self.path} lines {chunk.first_line}..{chunk.first_line + chunk.n_lines - 1}:"
                    f" parsed {raw.num_rows} rows from {len(lines)} lines (a stray carriage "
                    "return?)", path=self.path, line=chunk.first_line)
            invalid = np.zeros((raw.num_rows, 1 + len(CRITEO_DENSE)), dtype=bool)
            reason = np.zeros_like(invalid, dtype=np.int64)
            label = raw.column(CRITEO_LABEL)
            invalid[:, 0] = ~pc.fill_null(pc.is_in(label, pa.array(["0", "1"])), False).to_numpy(
                zero_copy_only=False)
            reason[:, 0] = REASONS.index("bad_label")
            for j, name in enumerate(CRITEO_DENSE, start=1):
                col = raw.column(name)
                ok = pc.fill_null(pc.match_substring_regex(col, _INT_RE), True).to_numpy(
                    zero_copy_only=False)
                invalid[:, j] = ~ok
                reason[:, j] = REASONS.index("dense_not_integer")
                digits = pc.fill_null(pc.utf8_length(pc.utf8_ltrim(col, "-")), 0).to_numpy(
                    zero_copy_only=False)
                long = ok & (digits >= 19)
                if long.any():  # rare: decide int64 range value by value
                    idx = np.flatnonzero(long)
                    for i, v in zip(idx, pc.take(col, pa.array(idx)).to_pylist()):
                        if not (-(1 << 63) <= int(v) < (1 << 63)):
                            invalid[i, j] = True
                            reason[i, j] = REASONS.index("dense_out_of_range")
            bad_row = invalid.any(axis=1)
            if bad_row.any():
                idx = np.flatnonzero(bad_row)
                first = invalid[idx].argmax(axis=1)
                names = np.array((CRITEO_LABEL,) + CRITEO_DENSE, dtype=object)
                vals = np.empty(len(idx), dtype=object)
                for j in np.unique(first):  # loop over columns, not rows
                    sel = first == j
                    vals[sel] = pc.take(raw.column(names[j]), pa.array(idx[sel])).to_numpy(
                        zero_copy_only=False)
                parts.append(RowProblems(self.path, lines[idx], reason[idx, first], names[first],
                                         vals, expected=len(CRITEO_COLUMNS)))
                raw = raw.filter(pa.array(~bad_row))
                lines = lines[~bad_row]
        else:
            raw = None
        if parts:
            self._handle(RowProblems.concat(parts))
        if raw is None or raw.num_rows == 0:
            return CriteoChunk(self.path, np.zeros(0, np.int64), np.zeros(0, np.int8),
                               np.zeros((0, 13), np.int64), np.zeros((0, 13), bool),
                               [pa.array([], pa.string())] * 26)
        typed = pa.table(
            [pc.cast(raw.column(CRITEO_LABEL), pa.int8())]
            + [pc.cast(raw.column(c), pa.int64()) for c in CRITEO_DENSE]
            + [raw.column(c) for c in CRITEO_CATEGORICAL],
            names=list(CRITEO_COLUMNS))
        return self._to_chunk(typed, lines)

    def _to_chunk(self, table: pa.Table, lines: np.ndarray) -> CriteoChunk:
        n = table.num_rows
        dense = np.empty((n, len(CRITEO_DENSE)), dtype=np.int64)
        missing = np.empty((n, len(CRITEO_DENSE)), dtype=bool)
        for j, name in enumerate(CRITEO_DENSE):
            dense[:, j], missing[:, j] = numeric_column(table.column(name), np.int64)
        labels = numeric_column(table.column(CRITEO_LABEL), np.int8)[0]
        return CriteoChunk(self.path, lines, labels, dense, missing,
                           [table.column(c) for c in CRITEO_CATEGORICAL])


def read_criteo(path: Union[str, Path], **kwargs) -> Iterator[CriteoChunk]:
    """Shorthand for ``iter(CriteoReader(path, **kwargs))``."""
    return iter(CriteoReader(path, **kwargs))
