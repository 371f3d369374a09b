"""Raw data -> processed directory: :func:`prepare_criteo` and :func:`prepare_table`.

Conventions (docs/architecture.md §5), shared by both:

* **Vocabulary** (default): per field, the values seen at least ``min_count`` times in the
  **training** part get ids ``1..V`` (sorted by raw id, see :mod:`.ids`); id 0 is the OOV row
  (rare, unseen, and any value of the val/test parts missing from the vocabulary). The missing
  value is a value of its own (raw id 0): it gets a row (id 1) when frequent, like any value.
  ``num_embeddings = V + 1``. The vocabulary is written to ``vocab/<field>.npy`` (sorted raw ids)
  with training counts in ``vocab/<field>.counts.npy``.
* **Vocabulary-free** (``vocabulary_free=True``): ids are the raw 63-bit ids themselves, no
  vocabulary pass; ``num_embeddings = 2**63`` for every field (for hashing tables).
* **Dense** ``"log"``: ``log(x + 1)`` as float32, negative values clamped to 0 first (Criteo's I2
  has a few -1..-3; this is DLRM's convention), missing -> 0. ``"bucket"``: each dense column
  becomes a categorical field of the same name: ``floor(ln(v)**2)`` for ``v > 2``; every
  ``v <= 2`` is a bucket of its own (key ``floor(v) - 3``, so they never merge with a log bucket:
  unlike Criteo_x4, which maps v=1 and v in {3, 4} to the same string); missing is its own
  category. Then ``n_dense = 0`` (Criteo: 39 categorical fields, I1..I13 first).
  ``prepare_table`` also offers ``"none"`` (raw floats, missing -> 0).
* **Split**: ``(8, 1, 1)`` (any 3 weights): each row goes to train/val/test by a seeded
  counter-based hash of its global position in the inputs (:func:`.ids.random_split`) —
  deterministic, independent of chunking and of skipped rows. ``"by_file"``: every input but the
  last is training, the last is split into val/test halves by the same hash (the Criteo 1TB
  convention: days 0..22 train, day 23 val/test). A dict ``{"train": [...], "val": [...],
  "test": [...]}`` assigns each input file to a split explicitly.
* **Bad rows**: ``on_bad_row="error"`` raises a :class:`~.errors.DataFormatError` naming file,
  line and column; ``"skip"`` drops the row and counts it by reason in the report.

Both run two passes: one over the input (parse, count, write labels/dense/codes) and one over the
compact temporary codes (map to vocabulary ids). Memory is bounded by one chunk plus the distinct
training values per field.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .criteo import (CRITEO_CATEGORICAL, CRITEO_DENSE, CRITEO_LABEL, DEFAULT_CHUNK_ROWS,
                     CriteoChunk, CriteoReader)
from .errors import BadRows, check_on_bad_row
from .ids import encode_arrow, encode_ints, random_split, split_uniform
from .tabular import TableChunk, TableReader, TableSpec
from .writer import SPLITS, EncodedChunk, FieldSpec, ProcessedWriter, staged_dir

PathLike = Union[str, Path]
SplitArg = Union[Tuple[float, float, float], Sequence[float], str, Mapping[str, Sequence[PathLike]]]

#: Salt of the raw ids of dense buckets (see :func:`.ids.hash_ints`).
BUCKET_SALT = 0xB0C4E7


@dataclass
class PrepareReport:
    """What a preprocessing run did (JSON-serialisable; also ``out_dir/report.json``).

    Attributes:
        out_dir: the processed directory.
        inputs: input files.
        rows: rows written per split.
        rows_read: input rows consumed (bad ones included).
        bad_rows: skipped rows by reason (``on_bad_row="skip"``).
        bad_row_examples: the first few skip messages.
        label_rate: mean label per split.
        vocabulary_sizes: ``num_embeddings`` per field (OOV row included; ``2**63`` when
            vocabulary-free).
        oov_rate: per split and field, the fraction of ids that are 0 (OOV/rare).
        seconds: wall time.
        rows_per_s: ``rows_read / seconds``.
        peak_rss_mb: the process's peak resident memory so far (``getrusage``; it includes
            whatever the process held before the call).
        options: the arguments of the run.
    """

    out_dir: str
    inputs: List[str]
    rows: Dict[str, int]
    rows_read: int
    bad_rows: Dict[str, int]
    bad_row_examples: List[str]
    label_rate: Dict[str, float]
    vocabulary_sizes: Dict[str, int]
    oov_rate: Dict[str, Dict[str, float]]
    seconds: float
    rows_per_s: float
    peak_rss_mb: float
    options: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def save(self, path: PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _as_list(inputs: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    out = [str(p) for p in inputs]
    if not out:
        raise ValueError("no input files given")
    return out


def make_splitter(split: SplitArg, seed: int, inputs: Sequence[str]) -> Callable[[np.ndarray, int], np.ndarray]:
    """``(row_index int64[n], file_index) -> int8[n]`` split ids for a split argument."""
    if isinstance(split, str):
        if split != "by_file":
            raise ValueError(f"split must be 3 weights, 'by_file' or a dict, got {split!r}")
        if len(inputs) < 2:
            raise ValueError("split='by_file' needs at least 2 inputs (the last one is val/test)")
        last = len(inputs) - 1

        def by_file(row_index: np.ndarray, file_index: int) -> np.ndarray:
            if file_index < last:
                return np.zeros(len(row_index), dtype=np.int8)
            return np.where(split_uniform(row_index, seed) < 0.5, 1, 2).astype(np.int8)

        return by_file
    if isinstance(split, Mapping):
        unknown = set(split) - set(SPLITS)
        if unknown:
            raise ValueError(f"split dict keys must be in {SPLITS}, got {sorted(unknown)}")
        where: Dict[str, int] = {}
        for i, s in enumerate(SPLITS):
            for p in _as_list(split.get(s, [])) if split.get(s) else []:
                if str(p) in where:
                    raise ValueError(f"input {p} is assigned to two splits")
                where[str(p)] = i
        unassigned = [p for p in inputs if p not in where]
        if unassigned:
            raise ValueError(f"inputs not assigned to any split: {unassigned}")
        file_split = [where[p] for p in inputs]
        return lambda row_index, fi: np.full(len(row_index), file_split[fi], dtype=np.int8)
    weights = tuple(float(w) for w in split)

    def rand(row_index: np.ndarray, file_index: int) -> np.ndarray:
        return random_split(row_index, weights, seed)  # type: ignore[arg-type]

    random_split(np.zeros(1, np.int64), weights, seed)  # validate now
    return rand


def split_repr(split: SplitArg) -> Any:
    if isinstance(split, str):
        return split
    if isinstance(split, Mapping):
        return {k: [str(p) for p in _as_list(v)] for k, v in split.items()}
    return [float(w) for w in split]


def log_dense(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``log(max(x, 0) + 1)`` as float32, 0 where missing: ``[n, d]`` -> ``float32[n, d]``."""
    x = np.maximum(values.astype(np.float64), 0.0)
    out = np.log1p(x)
    out[missing] = 0.0
    return out.astype(np.float32)


def bucket_keys(values: np.ndarray) -> np.ndarray:
    """Bucket keys of dense values (``[n]`` -> ``int64[n]``): ``floor(ln(v)**2)`` (>= 0) for
    ``v > 2``, ``floor(v) - 3`` (<= -1) for ``v <= 2``."""
    v = values.astype(np.float64)
    big = v > 2
    out = np.floor(v) - 3
    out[big] = np.floor(np.log(v[big]) ** 2)
    return out.astype(np.int64)


def _dense_parts(values: np.ndarray, missing: np.ndarray, mode: str) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Dense columns -> (float32 dense block, bucket fields)."""
    n, d = values.shape
    if mode == "log":
        return log_dense(values, missing), []
    if mode == "none":
        out = values.astype(np.float32)
        out[missing] = 0.0
        return out, []
    fields = [encode_ints(bucket_keys(values[:, j]), missing[:, j], BUCKET_SALT) for j in range(d)]
    return np.zeros((n, 0), dtype=np.float32), fields


class _Run:
    """Shared driver: iterate readers, encode, split, write; build the report."""

    def __init__(self, inputs: List[str], out_dir: PathLike, split: SplitArg, seed: int,
                 max_rows: Optional[int], on_bad_row: str, progress: bool):
        self.inputs = inputs
        self.out = Path(out_dir)
        self.work = self.out  # where files go; a staged_dir while the run writes
        self.splitter = make_splitter(split, seed, inputs)
        self.max_rows = max_rows
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.bad = BadRows()
        self.progress = progress
        self.t0 = time.perf_counter()
        self.rows_read = 0

    def drive(self, writer: ProcessedWriter, open_reader: Callable[[str, Optional[int]], Any],
              encode: Callable[[Any], EncodedChunk], header_lines: int) -> None:
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(unit="rows", unit_scale=True, desc="prepare")
        offset = 0
        for fi, path in enumerate(self.inputs):
            left = None if self.max_rows is None else self.max_rows - self.rows_read
            if left is not None and left <= 0:
                break
            reader = open_reader(path, left)
            for chunk in reader:
                enc = encode(chunk)
                enc.row_index = offset + chunk.lines - 1 - header_lines
                enc.file_index = fi
                writer.add(enc, self.splitter(enc.row_index, fi))
                if bar is not None:
                    bar.update(len(chunk))
            n = getattr(reader, "lines_read", None)
            n = reader.rows_read if n is None else n
            self.rows_read += n
            offset += n
        if bar is not None:
            bar.close()

    def report(self, stats: Dict, options: Dict[str, Any]) -> PrepareReport:
        secs = time.perf_counter() - self.t0
        rows = stats["rows"]
        rep = PrepareReport(
            out_dir=str(self.out), inputs=list(self.inputs), rows=rows, rows_read=self.rows_read,
            bad_rows=dict(self.bad.counts), bad_row_examples=list(self.bad.examples),
            label_rate={s: (stats["positives"][s] / rows[s] if rows[s] else 0.0) for s in SPLITS},
            vocabulary_sizes=stats["vocabulary_sizes"], oov_rate=stats["oov_rate"],
            seconds=round(secs, 3), rows_per_s=round(self.rows_read / max(secs, 1e-9), 1),
            peak_rss_mb=round(peak_rss_mb(), 1), options=options)
        rep.save(self.work / "report.json")
        return rep


def prepare_criteo(inputs: Union[PathLike, Sequence[PathLike]], out_dir: PathLike, *,
                   min_count: int = 10, dense: str = "log", split: SplitArg = (8, 1, 1),
                   seed: int = 0, vocabulary_free: bool = False, on_bad_row: str = "error",
                   max_rows: Optional[int] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   progress: bool = False, workers: Optional[int] = 1) -> PrepareReport:
    """Preprocess raw Criteo TSV (Kaggle ``train.txt``, 1TB ``day_N``) into a processed directory.

    Args:
        inputs: one file or a list (read in order; row positions run on across files).
        out_dir: output directory (see :mod:`.processed` for the layout).
        min_count: vocabulary threshold on training counts (Criteo_x4 convention: 10).
        dense: ``"log"`` (13 dense floats) or ``"bucket"`` (39 categorical fields, no dense).
        split: ``(8, 1, 1)``-style weights, ``"by_file"`` or ``{"train": [...], ...}``.
        seed: split seed.
        vocabulary_free: raw 63-bit ids, no vocabulary.
        on_bad_row: ``"error"`` or ``"skip"``.
        max_rows: read at most this many input lines in total.
        chunk_rows: lines per chunk (working memory ~ 4 KB x chunk_rows: ~0.3 GB at the
            default 65536, on top of ~0.4 GB of torch/torchrec imports).
        progress: show a tqdm bar (one process only).
        workers: processes (``None``: every core). Above 1, inputs are cut into line-aligned
            byte ranges counted and encoded in parallel (:mod:`.parallel`); the output files are
            the same bytes for any value.

    Returns:
        a :class:`PrepareReport` (also written to ``out_dir/report.json``).

    Usage (needs a Criteo file, so not a doctest)::

        rep = prepare_criteo("train.txt", "criteo_proc", min_count=10)
        rep.rows, rep.rows_per_s
    """
    if dense not in ("log", "bucket"):
        raise ValueError(f"dense must be 'log' or 'bucket', got {dense!r}")
    files = _as_list(inputs)
    from .parallel import resolve_workers

    n_workers = resolve_workers(workers)
    run = _Run(files, out_dir, split, seed, max_rows, on_bad_row, progress and n_workers == 1)
    options = {"dataset": "criteo", "min_count": min_count, "dense": dense,
               "split": split_repr(split), "seed": seed, "vocabulary_free": vocabulary_free,
               "on_bad_row": on_bad_row, "max_rows": max_rows, "chunk_rows": chunk_rows}
    # written aside and swapped in when complete: a failure leaves out_dir as it was
    with staged_dir(out_dir) as run.work:
        return _prepare_criteo(run, files, options, n_workers, min_count=min_count, dense=dense,
                               split=split, seed=seed, vocabulary_free=vocabulary_free,
                               on_bad_row=on_bad_row, max_rows=max_rows, chunk_rows=chunk_rows)


def _prepare_criteo(run: _Run, files: List[str], options: Dict[str, Any], n_workers: int, *,
                    min_count: int, dense: str, split: SplitArg, seed: int, vocabulary_free: bool,
                    on_bad_row: str, max_rows: Optional[int], chunk_rows: int) -> PrepareReport:
    if n_workers > 1:
        from .parallel import prepare_criteo_parallel

        stats, extra = prepare_criteo_parallel(
            files, str(run.work), workers=n_workers, split=split, seed=seed, dense=dense,
            min_count=min_count, vocabulary_free=vocabulary_free, on_bad_row=run.on_bad_row,
            max_rows=max_rows, chunk_rows=chunk_rows,
            meta={"source": "criteo", "inputs": files, **options})
        run.rows_read = extra["rows_read"]
        run.bad.counts.update(extra["bad_counts"])
        run.bad.examples.extend(extra["bad_examples"])
        # `workers` is left out of schema.json so the output is the same for any value
        return run.report(stats, {**options, "workers": n_workers})
    bucket = dense == "bucket"
    fields = [FieldSpec(c) for c in ((*CRITEO_DENSE, *CRITEO_CATEGORICAL) if bucket else CRITEO_CATEGORICAL)]
    writer = ProcessedWriter(run.work, label=CRITEO_LABEL,
                             dense=[] if bucket else list(CRITEO_DENSE), fields=fields,
                             min_count=min_count, vocabulary_free=vocabulary_free)
    run.drive(writer, lambda p, left: CriteoReader(p, chunk_rows=chunk_rows, on_bad_row=on_bad_row,
                                                   max_rows=left, bad_rows=run.bad),
              lambda ch: criteo_encode(ch, dense), header_lines=0)
    _, stats = writer.finish({"source": "criteo", "inputs": files, **options})
    return run.report(stats, {**options, "workers": 1})


def criteo_encode(ch: CriteoChunk, dense: str) -> EncodedChunk:
    """One parsed Criteo chunk -> :class:`EncodedChunk` (``dense``: ``"log"`` or ``"bucket"``);
    ``row_index``/``file_index`` are left for the caller."""
    dense_block, bucket_fields = _dense_parts(ch.dense, ch.dense_missing, dense)
    single = bucket_fields + [encode_arrow(c) for c in ch.categorical]
    return EncodedChunk(np.zeros(0, np.int64), 0, ch.labels.astype(np.float32), dense_block, single)


def _multi_encode(col) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``list<...>`` column -> ``(keys, codes over values, lengths)``; an empty or null list
    becomes one missing token."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(col)
    keys, codes = encode_arrow(flat)
    missing_code = len(keys) - 1
    if (lengths > 0).all():
        return keys, codes, lengths.astype(np.int32)
    new_len = np.maximum(lengths, 1)
    out = np.full(int(new_len.sum()), missing_code, dtype=np.int32)
    new_start = np.cumsum(new_len) - new_len
    old_start = np.cumsum(lengths) - lengths
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(codes)) - old_start[row_of]
    out[new_start[row_of] + within] = codes
    return keys, out, new_len.astype(np.int32)


def prepare_table(inputs: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                  spec: Union[TableSpec, Mapping[str, Any]], *, min_count: int = 1,
                  dense: str = "log", split: SplitArg = (8, 1, 1), seed: int = 0,
                  vocabulary_free: bool = False, on_bad_row: str = "error",
                  max_rows: Optional[int] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                  file_format: Optional[str] = None, progress: bool = False) -> PrepareReport:
    """Preprocess CSV/TSV/Parquet files with a declared schema (e.g. :data:`.tabular.AVAZU_SPEC`).

    Args:
        inputs: one file or a list (same columns in each).
        out_dir: output directory.
        spec: a :class:`~.tabular.TableSpec` or its dict form.
        min_count: vocabulary threshold on training counts (default 1: keep every value seen in
            training).
        dense: ``"log"``, ``"none"`` (raw floats) or ``"bucket"`` (dense columns become
            categorical fields, placed before the other fields).
        split, seed, vocabulary_free, on_bad_row, max_rows, chunk_rows, progress: as in
            :func:`prepare_criteo`.
        file_format: ``"csv"`` or ``"parquet"``; detected from each file name by default.

    Multi-valued fields are stored as ``values``/``offsets`` arrays (see :mod:`.processed`); an
    empty or missing cell is one missing token; empty tokens are missing tokens too.

    Usage (needs an input table, so not a doctest)::

        spec = TableSpec(label="rating", categorical=["user", "item"], multi_valued={"genres": "|"})
        prepare_table("ratings.csv", "ml_proc", spec)
    """
    if dense not in ("log", "none", "bucket"):
        raise ValueError(f"dense must be 'log', 'none' or 'bucket', got {dense!r}")
    if not isinstance(spec, TableSpec):
        spec = TableSpec.from_dict(spec)
    files = _as_list(inputs)
    run = _Run(files, out_dir, split, seed, max_rows, on_bad_row, progress)
    # written aside and swapped in when complete: a failure leaves out_dir as it was
    with staged_dir(out_dir) as run.work:
        return _prepare_table(run, files, spec, min_count=min_count, dense=dense, split=split,
                              seed=seed, vocabulary_free=vocabulary_free, on_bad_row=on_bad_row,
                              max_rows=max_rows, chunk_rows=chunk_rows, file_format=file_format)


def _prepare_table(run: _Run, files: List[str], spec: TableSpec, *, min_count: int, dense: str,
                   split: SplitArg, seed: int, vocabulary_free: bool, on_bad_row: str,
                   max_rows: Optional[int], chunk_rows: int, file_format: Optional[str]) -> PrepareReport:
    first = TableReader(files[0], spec, chunk_rows=chunk_rows, file_format=file_format)
    rspec = first.spec
    bucket = dense == "bucket"
    fields = ([FieldSpec(c) for c in rspec.dense] if bucket else []) + [
        FieldSpec(c) for c in (*(rspec.categorical or []), *rspec.derived)] + [
        FieldSpec(c, sep or ",", rspec.pooling.get(c, "sum")) for c, sep in rspec.multi_valued.items()]
    writer = ProcessedWriter(run.work, label=rspec.label,
                             dense=[] if bucket else list(rspec.dense), fields=fields,
                             min_count=min_count, vocabulary_free=vocabulary_free)
    header_lines = 1 if (rspec.header and first.format == "csv") else 0

    def encode(ch: TableChunk) -> EncodedChunk:
        dense_block, bucket_fields = _dense_parts(ch.dense, ch.dense_missing, dense)
        single = bucket_fields + [encode_arrow(c) for c in ch.categorical]
        multi = [_multi_encode(c) for c in ch.multi]
        return EncodedChunk(np.zeros(0, np.int64), 0, ch.labels, dense_block, single, multi)

    def open_reader(path: str, left: Optional[int]) -> TableReader:
        r = TableReader(path, spec, chunk_rows=chunk_rows, on_bad_row=on_bad_row, max_rows=left,
                        bad_rows=run.bad, file_format=file_format)
        if r.spec.fields != rspec.fields:
            raise ValueError(f"{path}: columns differ from {files[0]}")
        return r

    run.drive(writer, open_reader, encode, header_lines=header_lines)
    options = {"dataset": rspec.name, "spec": rspec.to_dict(), "min_count": min_count,
               "dense": dense, "split": split_repr(split), "seed": seed,
               "vocabulary_free": vocabulary_free, "on_bad_row": on_bad_row,
               "max_rows": max_rows, "chunk_rows": chunk_rows}
    _, stats = writer.finish({"source": rspec.name, "inputs": files, **options})
    return run.report(stats, options)
