"""Generic CSV/TSV/Parquet input with a declared schema, and the Avazu preset.

A :class:`TableSpec` says which column is the label, which are dense floats, which are
categorical (single-valued) and which are multi-valued with a separator (``{"genres": "|"}``),
which to drop, and which categoricals to derive (Avazu's ``hour`` -> hour-of-day, weekday).
:class:`TableReader` streams one file in validated chunks (same bad-row policy and messages as
the Criteo reader: file, 1-based line (CSV/TSV) or row (Parquet), column).

CSV/TSV: a header line gives the column names unless ``header=False`` (then ``column_names``).
Quoted values may hold the delimiter but not a newline (each line is one row; that is what makes
line numbers exact). Empty cells are missing. Parquet: columns are read by name; integer or
string categoricals, and multi-valued columns as ``list<...>`` or separated strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .arrowcols import numeric_column
from .errors import REASONS, BadRows, DataFormatError, RowProblems, check_on_bad_row
from .textio import LineChunk, count_fields, iter_line_chunks, keep_lines, line_bounds, read_first_line

#: Derivations usable in :attr:`TableSpec.derived`: source column text -> category text.
DERIVATIONS = ("yymmddhh_hour", "yymmddhh_weekday")

_FLOAT_RE = r"^\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])\s*$"


@dataclass
class TableSpec:
    """Declared schema of a CSV/TSV/Parquet input.

    Args:
        label: the 0/1 label column.
        dense: dense numeric columns (floats; empty/NaN = missing).
        categorical: single-valued categorical columns; ``None`` = every other column of the file
            (not label, dense, multi-valued, dropped, or only a derivation source).
        multi_valued: multi-valued categorical columns and their separators, e.g.
            ``{"genres": "|"}`` (Parquet ``list`` columns need no separator but still a key).
        drop: columns that are not features (e.g. an id).
        derived: new categorical fields ``name -> (source column, derivation)``, derivation in
            :data:`DERIVATIONS`. A source used only for derivations goes in ``drop``.
        pooling: per multi-valued field ``"sum"`` (default) or ``"mean"``.
        delimiter: CSV/TSV delimiter; default ``"\\t"`` for ``.tsv``/``.txt``, ``","`` otherwise.
        header: whether the first line holds the column names.
        column_names: the names when ``header=False``.
        quote_char: CSV quote character (``None``: no quoting).
        name: dataset name recorded in the schema meta.

    Field order in the processed schema: ``categorical`` (declared, or file order), then
    ``derived``, then ``multi_valued`` (declared order).
    """

    label: str
    dense: Sequence[str] = ()
    categorical: Optional[Sequence[str]] = None
    multi_valued: Mapping[str, str] = field(default_factory=dict)
    drop: Sequence[str] = ()
    derived: Mapping[str, Tuple[str, str]] = field(default_factory=dict)
    pooling: Mapping[str, str] = field(default_factory=dict)
    delimiter: Optional[str] = None
    header: bool = True
    column_names: Optional[Sequence[str]] = None
    quote_char: Optional[str] = '"'
    name: str = "table"

    def __post_init__(self) -> None:
        self.dense = tuple(self.dense)
        self.drop = tuple(self.drop)
        if self.categorical is not None:
            self.categorical = tuple(self.categorical)
        if self.column_names is not None:
            self.column_names = tuple(self.column_names)
        self.multi_valued = dict(self.multi_valued)
        self.pooling = dict(self.pooling)
        self.derived = {k: tuple(v) for k, v in dict(self.derived).items()}
        for new, (src, op) in dict(self.derived).items():
            if op not in DERIVATIONS:
                raise ValueError(f"derived field {new!r}: unknown derivation {op!r}; known: {DERIVATIONS}")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TableSpec":
        """Build from a plain dict (YAML/JSON config), validated by the one config schema
        (:func:`slimembed.ctr.config.load_config`, kind ``table_schema``): unknown or missing keys
        and wrong types fail naming the key.

        >>> TableSpec.from_dict({"label": "click", "dense": ["price"]}).dense
        ('price',)
        """
        from slimembed.ctr.config import load_config

        return TableSpec(**load_config(d, "table_schema"))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label, "dense": list(self.dense),
            "categorical": None if self.categorical is None else list(self.categorical),
            "multi_valued": dict(self.multi_valued), "drop": list(self.drop),
            "derived": {k: list(v) for k, v in self.derived.items()}, "pooling": dict(self.pooling),
            "delimiter": self.delimiter, "header": self.header,
            "column_names": None if self.column_names is None else list(self.column_names),
            "quote_char": self.quote_char, "name": self.name,
        }

    def resolve(self, file_columns: Sequence[str], where: str) -> "TableSpec":
        """Check the declared columns against a file's columns and fill ``categorical``."""
        cols = list(file_columns)
        derived_src = [src for src, _ in self.derived.values()]
        needed = [self.label, *self.dense, *self.multi_valued, *derived_src,
                  *(self.categorical or [])]
        missing = [c for c in needed if c not in cols]
        if missing:
            raise DataFormatError(f"{where}: columns {missing} not found; the file has {cols}",
                                  path=where)
        if self.categorical is not None:
            return self
        taken = {self.label, *self.dense, *self.multi_valued, *self.drop}
        return replace(self, categorical=tuple(c for c in cols if c not in taken))

    @property
    def fields(self) -> List[str]:
        """Output categorical fields in schema order (after :meth:`resolve`)."""
        return [*(self.categorical or []), *self.derived, *self.multi_valued]


#: Avazu CTR (Kaggle 2015) ``train.csv``: label ``click``; ``id`` dropped; ``hour``
#: (``YYMMDDHH``) replaced by two categoricals ``hour_of_day`` (00..23) and ``weekday`` (0 =
#: Monday); every other column categorical (C1, banner_pos, site_*, app_*, device_*, C14..C21).
#: The raw timestamp is dropped because its values never recur across a time-based split; put
#: ``"hour"`` back as a categorical by removing it from ``drop``.
AVAZU_SPEC = TableSpec(
    label="click",
    drop=("id", "hour"),
    derived={"hour_of_day": ("hour", "yymmddhh_hour"), "weekday": ("hour", "yymmddhh_weekday")},
    delimiter=",",
    name="avazu",
)


@dataclass
class TableChunk:
    """One validated chunk of a generic table.

    Attributes:
        path: the input file.
        lines: ``int64[n]`` 1-based line (CSV/TSV, header included) or row (Parquet) numbers.
        labels: ``float32[n]`` of 0/1.
        dense: ``float64[n, n_dense]``, 0 where missing.
        dense_missing: ``bool[n, n_dense]``.
        categorical: arrow arrays of the single-valued fields (spec order, derived ones last).
        multi: per multi-valued field an arrow ``list<string>`` array (null = missing).
    """

    path: str
    lines: np.ndarray
    labels: np.ndarray
    dense: np.ndarray
    dense_missing: np.ndarray
    categorical: List[Union[pa.Array, pa.ChunkedArray]]
    multi: List[Union[pa.Array, pa.ChunkedArray]]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def detect_format(path: Union[str, Path]) -> str:
    """``"parquet"`` or ``"csv"`` from the file name (compression suffixes ignored)."""
    name = Path(path).name.lower()
    for ext in (".gz", ".bz2", ".zst", ".lz4"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return "parquet" if name.endswith((".parquet", ".pq")) else "csv"


def _default_delimiter(path: Union[str, Path]) -> str:
    name = Path(path).name.lower()
    return "\t" if any(name.endswith(e) or f"{e}." in name for e in (".tsv", ".txt")) else ","


class TableReader:
    """Stream one CSV/TSV/Parquet file as validated :class:`TableChunk` s.

    Args:
        path: the input.
        spec: the declared schema.
        chunk_rows: rows per chunk.
        on_bad_row: ``"error"`` or ``"skip"`` (counted in :attr:`bad_rows`).
        max_rows: read at most this many data rows.
        bad_rows: a tally to add to.
        file_format: ``"csv"`` or ``"parquet"``; detected from the name by default.
    """

    def __init__(self, path: Union[str, Path], spec: TableSpec, *, chunk_rows: int = 1 << 16,
                 on_bad_row: str = "error", max_rows: Optional[int] = None,
                 bad_rows: Optional[BadRows] = None, file_format: Optional[str] = None):
        self.path = str(path)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"input not found: {self.path}")
        self.format = file_format or detect_format(path)
        if self.format not in ("csv", "parquet"):
            raise ValueError(f"file_format must be 'csv' or 'parquet', got {self.format!r}")
        self.chunk_rows = int(chunk_rows)
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.max_rows = max_rows
        self.bad_rows = bad_rows if bad_rows is not None else BadRows()
        self.rows_read = 0
        if self.format == "parquet":
            self._pf = pq.ParquetFile(self.path)
            self.columns = list(self._pf.schema_arrow.names)
        else:
            self.delimiter = spec.delimiter or _default_delimiter(self.path)
            if spec.header:
                head = read_first_line(self.path).decode("utf-8", errors="replace")
                self.columns = [c.strip().strip(spec.quote_char or "") for c in head.split(self.delimiter)]
            elif spec.column_names:
                self.columns = list(spec.column_names)
            else:
                raise ValueError(f"{self.path}: header=False needs column_names")
        self.spec = spec.resolve(self.columns, self.path)
        s = self.spec
        self._needed = list(dict.fromkeys(
            [s.label, *s.dense, *(s.categorical or []), *s.multi_valued,
             *[src for src, _ in s.derived.values()]]))

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[TableChunk]:
        if self.format == "parquet":
            yield from self._iter_parquet()
        else:
            yield from self._iter_csv()

    def _iter_parquet(self) -> Iterator[TableChunk]:
        row = 1
        left = self.max_rows
        for batch in self._pf.iter_batches(batch_size=self.chunk_rows, columns=self._needed):
            if left is not None:
                if left <= 0:
                    return
                batch = batch.slice(0, left)
                left -= batch.num_rows
            n = batch.num_rows
            self.rows_read += n
            lines = np.arange(row, row + n, dtype=np.int64)
            row += n
            table = pa.Table.from_batches([batch])
            out = self._finish(table, lines, unit="row")
            if len(out):
                yield out

    def _csv_options(self, types: Dict[str, pa.DataType]):
        ro = pcsv.ReadOptions(column_names=self.columns, use_threads=True, block_size=4 << 20)
        po = pcsv.ParseOptions(delimiter=self.delimiter, quote_char=self.spec.quote_char or False,
                               double_quote=bool(self.spec.quote_char), escape_char=False,
                               newlines_in_values=False, ignore_empty_lines=False)
        co = pcsv.ConvertOptions(column_types=types, include_columns=self._needed,
                                 null_values=[""], true_values=[], false_values=[],
                                 strings_can_be_null=True, quoted_strings_can_be_null=True)
        return ro, po, co

    def _iter_csv(self) -> Iterator[TableChunk]:
        s = self.spec
        typed = {c: pa.string() for c in self._needed}
        typed.update({s.label: pa.float64(), **{c: pa.float64() for c in s.dense}})
        typed.update({c: pa.dictionary(pa.int32(), pa.string()) for c in s.categorical or []})
        for chunk in iter_line_chunks(self.path, self.chunk_rows, skip_lines=int(s.header),
                                      max_lines=self.max_rows):
            self.rows_read += chunk.n_lines
            table = None
            try:
                ro, po, co = self._csv_options(typed)
                table = pcsv.read_csv(pa.BufferReader(chunk.data), read_options=ro,
                                      parse_options=po, convert_options=co)
            except pa.ArrowInvalid:
                table = None
            if table is None or table.num_rows != chunk.n_lines:
                table, lines = self._slow(chunk)
            else:
                lines = np.arange(chunk.first_line, chunk.first_line + chunk.n_lines, dtype=np.int64)
            out = self._finish(table, lines, unit="line")
            if len(out):
                yield out

    def _slow(self, chunk: LineChunk) -> Tuple[pa.Table, np.ndarray]:
        """Diagnostic re-scan of a chunk whose typed parse failed."""
        s = self.spec
        arr = np.frombuffer(chunk.data, dtype=np.uint8)
        starts, ends = line_bounds(arr)
        lines = np.arange(chunk.first_line, chunk.first_line + len(ends), dtype=np.int64)
        nf = count_fields(arr, ends, self.delimiter, s.quote_char)
        good = nf == len(self.columns)
        parts: List[RowProblems] = []
        if (~good).any():
            idx = np.flatnonzero(~good)
            parts.append(RowProblems(self.path, lines[idx],
                                     np.full(len(idx), REASONS.index("wrong_column_count")),
                                     np.full(len(idx), None, object), np.full(len(idx), None, object),
                                     nf[idx], expected=len(self.columns)))
        data = keep_lines(arr, starts, ends, good) if not good.all() else chunk.data
        lines = lines[good]
        ro, po, co = self._csv_options({c: pa.string() for c in self._needed})
        try:
            raw = pcsv.read_csv(pa.BufferReader(data), read_options=ro, parse_options=po,
                                convert_options=co) if good.any() else None
        except pa.ArrowInvalid as e:
            raise DataFormatError(f"{self.path} lines {chunk.first_line}.."
                                  f"{chunk.first_line + chunk.n_lines - 1}: unparseable: {e}",
                                  path=self.path, line=chunk.first_line) from e
        if raw is not None and raw.num_rows != len(lines):
            raise DataFormatError(f"{self.path} lines {chunk.first_line}.."
                                  f"{chunk.first_line + chunk.n_lines - 1}: {raw.num_rows} rows "
                                  f"from {len(lines)} lines (a newline inside quotes?)",
                                  path=self.path, line=chunk.first_line)
        if parts:
            self._handle(RowProblems.concat(parts))
        if raw is None:
            raw = pa.table({c: pa.array([], pa.string()) for c in self._needed})
        # Numeric columns: strings that are not numbers are flagged here, in _finish.
        cols = {}
        for c in self._needed:
            col = raw.column(c)
            if c == s.label or c in s.dense:
                ok = pc.fill_null(pc.match_substring_regex(col, _FLOAT_RE), True)
                col = pc.cast(pc.if_else(ok, col, pa.scalar("nan")), pa.float64())
                # remember the non-numbers as NaN-with-text: carry the text separately
                cols[c + "\0text"] = raw.column(c)
                cols[c + "\0ok"] = ok
            cols[c] = col
        return pa.table(cols), lines

    def _handle(self, problems: RowProblems) -> None:
        if len(problems) == 0:
            return
        if self.on_bad_row == "error":
            problems.raise_first()
        problems.tally(self.bad_rows)

    def _finish(self, table: pa.Table, lines: np.ndarray, unit: str) -> TableChunk:
        """Validate label/dense values, derive fields, split multi-valued columns."""
        s = self.spec
        n = table.num_rows
        names = table.column_names
        checks = [s.label, *s.dense]
        invalid = np.zeros((n, len(checks)), dtype=bool)
        reason = np.zeros((n, len(checks)), dtype=np.int64)
        values = []
        for j, c in enumerate(checks):
            col = table.column(c)
            if not pa.types.is_floating(col.type):
                try:
                    col = pc.cast(col, pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise DataFormatError(f"{self.path}, column {c}: type {col.type} is not "
                                          f"numeric ({e})", path=self.path, column=c) from e
            v, miss = numeric_column(col, np.float64)
            text_ok = (table.column(c + "\0ok").to_numpy(zero_copy_only=False)
                       if c + "\0ok" in names else np.ones(n, dtype=bool))
            if j == 0:
                invalid[:, j] = miss | ~np.isin(v, (0.0, 1.0)) | ~text_ok
                reason[:, j] = REASONS.index("bad_label")
            else:
                invalid[:, j] = ~text_ok | np.isinf(v)
                reason[:, j] = REASONS.index("dense_not_numeric")
                miss = miss | np.isnan(v)
                v = np.where(miss, 0.0, v)
            values.append((v, miss))
        bad = invalid.any(axis=1)
        keep = ~bad
        if bad.any():
            idx = np.flatnonzero(bad)
            first = invalid[idx].argmax(axis=1)
            cols = np.array(checks, dtype=object)[first]
            vals = np.empty(len(idx), dtype=object)
            for j in np.unique(first):
                sel = first == j
                name = checks[j] + "\0text" if checks[j] + "\0text" in names else checks[j]
                vals[sel] = pc.cast(pc.take(table.column(name), pa.array(idx[sel])),
                                    pa.string()).to_numpy(zero_copy_only=False)
            self._handle(RowProblems(self.path, lines[idx], reason[idx, first], cols, vals,
                                     expected=len(self.columns), unit=unit))
            table = table.filter(pa.array(keep))
            lines = lines[keep]
            values = [(v[keep], m[keep]) for v, m in values]
        labels = values[0][0].astype(np.float32)
        nd = len(s.dense)
        dense = np.zeros((len(lines), nd), dtype=np.float64)
        dmiss = np.zeros((len(lines), nd), dtype=bool)
        for j in range(nd):
            dense[:, j], dmiss[:, j] = values[1 + j]
        cats = [table.column(c) for c in s.categorical or []]
        for new, (src, op) in s.derived.items():
            cats.append(self._derive(table.column(src), op, new, lines, unit))
        multi = []
        for c, sep in s.multi_valued.items():
            col = table.column(c)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            if pa.types.is_dictionary(col.type):
                col = pc.cast(col, pa.string())
            if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
                col = pc.split_pattern(pc.cast(col, pa.string()), sep)
            multi.append(col)
        return TableChunk(self.path, lines, labels, dense, dmiss, cats, multi)

    def _derive(self, col, op: str, new: str, lines: np.ndarray, unit: str) -> pa.Array:
        text = pc.cast(col, pa.string())
        if op == "yymmddhh_hour":
            ts = pc.strptime(text, format="%y%m%d%H", unit="s", error_is_null=True)
            out = pc.cast(pc.hour(ts), pa.string())
        else:  # yymmddhh_weekday
            ts = pc.strptime(text, format="%y%m%d%H", unit="s", error_is_null=True)
            out = pc.cast(pc.day_of_week(ts), pa.string())
        bad = (ts.is_null() if isinstance(ts, pa.Array) else pc.is_null(ts))
        bad = pc.and_(bad, pc.is_valid(text)).to_numpy(zero_copy_only=False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = pc.take(text, pa.array([i]))[0].as_py()
            raise DataFormatError(f"{self.path} {unit} {int(lines[i])}, column {new} (from "
                                  f"{op}): {v!r} is not a YYMMDDHH timestamp",
                                  path=self.path, line=int(lines[i]), column=new, value=v)
        return out
