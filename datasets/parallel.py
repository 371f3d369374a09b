"""Multi-process Criteo preprocessing and TSV generation (``workers=N``, docs/architecture.md §7).

**prepare** (:func:`prepare_criteo_parallel`, behind ``prepare_criteo(..., workers=N)``):

1. *plan*: every uncompressed input is cut into line-aligned byte ranges ("parts", about
   ``part_bytes`` each, at least one per worker; a compressed file is one part); the workers
   count each part's lines, which gives every part its first line and global row position;
2. *pass 1*, one task per part: parse, hash, split and count exactly as the one-process writer
   does, into ``out/.parts/<k>/`` (labels, dense, temporary codes, the part's distinct raw ids
   with their training counts);
3. *vocabulary*: the parent merges the parts' sorted counts into one vocabulary per field (memory
   bounded by the vocabulary, never by the file size);
4. *pass 2*, one task per part: map the part's codes to vocabulary ids and write them, with its
   labels and dense rows, at the part's row offset of the final ``.npy`` files.

The split is a hash of the global row position and vocabulary ids are ranks in sorted raw ids, so
the output is the same bytes for any number of workers and any cut (tested). Workers are forked
before any pyarrow/torch work runs in the parent and import nothing new.

**generate** (:func:`write_tsv_parallel`): each chunk of the TSV is drawn from its own seeded
stream already, so workers write chunk ranges to part files that the parent concatenates.

Example::

    >>> from slimembed.datasets import prepare_criteo
    >>> rep = prepare_criteo(["day_0", "day_1"], "proc", workers=2)   # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BadRows, DataFormatError
from .npyio import HEADER_BYTES, _header
from .writer import (SPLITS, FieldSpec, IdCounter, ProcessedWriter, build_vocab, map_codes,
                     oov_rates, write_schema)

#: Target size of one part of an input file (parts are the unit of work and of memory).
PART_BYTES = 256 << 20
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def default_workers() -> int:
    """The cores this process may use (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: Optional[int]) -> int:
    """``None`` -> :func:`default_workers`; otherwise an integer >= 1."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return int(workers)


@dataclass
class Part:
    """A line-aligned byte range of one input (``end=None``: the whole, compressed, file)."""

    index: int
    file_index: int
    path: str
    start: int
    end: Optional[int]
    lines: int = 0
    first_line: int = 1      # 1-based line of the part's first line in its file
    row_offset: int = 0      # global position of the file's first row

    @property
    def byte_range(self) -> Optional[Tuple[int, int]]:
        return None if self.end is None else (self.start, self.end)


def plan_parts(files: Sequence[str], workers: int, part_bytes: int = PART_BYTES) -> List[Part]:
    """Cut the inputs into parts (without line counts; see :func:`_count_part`)."""
    from .textio import line_aligned_cuts

    parts: List[Part] = []
    total = sum(Path(p).stat().st_size for p in files)
    for fi, path in enumerate(files):
        if path.endswith(_COMPRESSED):
            parts.append(Part(len(parts), fi, path, 0, None))
            continue
        size = Path(path).stat().st_size
        # at least `workers` parts over all inputs, and none much larger than part_bytes
        want = max(-(-size // part_bytes), -(-workers * size // max(total, 1)), 1)
        cuts = line_aligned_cuts(path, want)
        for a, b in zip(cuts[:-1], cuts[1:]):
            parts.append(Part(len(parts), fi, path, a, b))
    return parts


def _count_part(part: Part) -> int:
    from .textio import count_lines

    return count_lines(part.path, part.byte_range)


def _number_parts(parts: List[Part], counts: Sequence[int]) -> None:
    offset, line, fi = 0, 1, None
    for p, n in zip(parts, counts):
        if p.file_index != fi:
            fi, line = p.file_index, 1
            file_offset = offset
        p.lines, p.first_line, p.row_offset = int(n), line, file_offset
        line += n
        offset += n


@dataclass
class _Job:
    """What every worker task needs (pickled once per task; small)."""

    out: str
    files: List[str]
    split: Any
    seed: int
    dense: str
    min_count: int
    vocabulary_free: bool
    on_bad_row: str
    chunk_rows: int


def _fields(dense: str) -> Tuple[List[str], List[FieldSpec]]:
    from .criteo import CRITEO_CATEGORICAL, CRITEO_DENSE

    if dense == "bucket":
        return [], [FieldSpec(c) for c in (*CRITEO_DENSE, *CRITEO_CATEGORICAL)]
    return list(CRITEO_DENSE), [FieldSpec(c) for c in CRITEO_CATEGORICAL]


def _part_dir(job: _Job, part: Part) -> Path:
    return Path(job.out) / ".parts" / f"{part.index:05d}"


def _pass1(job: _Job, part: Part, max_lines: Optional[int]) -> Dict[str, Any]:
    """Parse, encode, split and count one part into its folder; return its bookkeeping."""
    from .criteo import CRITEO_LABEL, CriteoReader
    from .preprocess import criteo_encode, make_splitter

    dense_names, fields = _fields(job.dense)
    d = _part_dir(job, part)
    w = ProcessedWriter(d, label=CRITEO_LABEL, dense=dense_names, fields=fields,
                        min_count=job.min_count, vocabulary_free=job.vocabulary_free)
    splitter = make_splitter(job.split, job.seed, job.files)
    bad = BadRows()
    try:
        reader = CriteoReader(part.path, chunk_rows=job.chunk_rows, on_bad_row=job.on_bad_row,
                              max_rows=max_lines, bad_rows=bad, byte_range=part.byte_range,
                              first_line=part.first_line)
        for chunk in reader:
            enc = criteo_encode(chunk, job.dense)
            enc.row_index = part.row_offset + chunk.lines - 1
            enc.file_index = part.file_index
            w.add(enc, splitter(enc.row_index, part.file_index))
    except DataFormatError as e:  # re-raised by the parent in input order
        return {"error": (str(e), e.path, e.line)}
    w.end_pass1()
    if not job.vocabulary_free:
        for j, c in enumerate(w.counters):
            k, n = c.result()
            np.save(d / ".tmp" / f"count{j}.keys.npy", k)
            np.save(d / ".tmp" / f"count{j}.n.npy", n)
    return {"rows": dict(w.rows), "positives": dict(w.positives), "lines": reader.lines_read,
            "bad": (dict(bad.counts), list(bad.examples)),
            "chunks": None if job.vocabulary_free else pickle.dumps(w._chunks)}


class _OffsetAppender:
    """Appends rows into a preallocated ``.npy`` starting at row ``start`` (pass 2)."""

    def __init__(self, path: Path, row_bytes: int, start: int):
        self.f = open(path, "r+b")
        self.f.seek(HEADER_BYTES + row_bytes * start)

    def append(self, a: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(a).tobytes())

    def close(self) -> None:
        self.f.close()


def _copy_rows(src: Path, dst: Path, offset_bytes: int) -> None:
    """Copy the data of part ``.npy`` ``src`` into ``dst`` at ``offset_bytes`` past the header."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        fi.seek(HEADER_BYTES)
        fo.seek(HEADER_BYTES + offset_bytes)
        shutil.copyfileobj(fi, fo, 16 << 20)


def _pass2(job: _Job, part: Part, offsets: Dict[str, int], chunks: Optional[bytes],
           vocab_dir: Optional[str]) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
    """Write one part's rows at its offsets of the final files (mapping ids in vocabulary mode)."""
    dense_names, fields = _fields(job.dense)
    d = _part_dir(job, part)
    out = Path(job.out)
    F = len(fields)
    for s in SPLITS:
        _copy_rows(d / s / "labels.npy", out / s / "labels.npy", offsets[s] * 4)
        _copy_rows(d / s / "dense.npy", out / s / "dense.npy", offsets[s] * 4 * len(dense_names))
        if job.vocabulary_free:
            _copy_rows(d / s / "sparse.npy", out / s / "sparse.npy", offsets[s] * 8 * F)
    result = None
    if not job.vocabulary_free:
        vocabs = [np.load(Path(vocab_dir) / f"{f.name}.npy") for f in fields]
        sparse = {s: _OffsetAppender(out / s / "sparse.npy", 8 * F, offsets[s]) for s in SPLITS}
        result = map_codes(d / ".tmp", fields, [], pickle.loads(chunks), vocabs, sparse, {})
        for a in sparse.values():
            a.close()
    shutil.rmtree(d, ignore_errors=True)
    return result


def _call(args: Tuple[Callable, tuple]) -> Any:
    fn, a = args
    return fn(*a)


def _map_ordered(pool, fn: Callable, args: List[tuple]) -> List[Any]:
    if pool is None:
        return [fn(*a) for a in args]
    return pool.map(_call, [(fn, a) for a in args], chunksize=1)


def prepare_criteo_parallel(files: List[str], out_dir: str, *, workers: int, split: Any, seed: int,
                            dense: str, min_count: int, vocabulary_free: bool, on_bad_row: str,
                            max_rows: Optional[int], chunk_rows: int, meta: Dict[str, Any],
                            part_bytes: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The multi-process body of :func:`~.preprocess.prepare_criteo` (see the module docstring).

    Returns ``(stats, extra)``: the writer's stats and ``{"rows_read", "bad_counts",
    "bad_examples"}``.
    """
    from .criteo import CRITEO_LABEL

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*SPLITS, "vocab", ".tmp", ".parts"):
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    job = _Job(str(out), list(files), split, seed, dense, min_count, vocabulary_free, on_bad_row,
               chunk_rows)
    dense_names, fields = _fields(dense)
    parts = plan_parts(files, workers, PART_BYTES if part_bytes is None else part_bytes)
    ctx = mp.get_context("fork")
    pool = ctx.Pool(min(workers, len(parts))) if workers > 1 else None
    try:
        _number_parts(parts, _map_ordered(pool, _count_part, [(p,) for p in parts]))
        limits: List[Optional[int]] = []
        left = max_rows
        for p in parts:
            limits.append(None if left is None else max(0, min(left, p.lines)))
            if left is not None:
                left -= limits[-1]
        todo = [(p, lim) for p, lim in zip(parts, limits) if lim is None or lim > 0]
        res = _map_ordered(pool, _pass1, [(job, p, lim) for p, lim in todo])
        for r in res:  # the first bad row in input order, like one process
            if "error" in r:
                msg, path, line = r["error"]
                raise DataFormatError(msg, path=path, line=line)
        rows = {s: sum(r["rows"][s] for r in res) for s in SPLITS}
        positives = {s: sum(r["positives"][s] for r in res) for s in SPLITS}
        # final files, preallocated; each part writes its rows at its offset
        offsets: List[Dict[str, int]] = []
        acc = {s: 0 for s in SPLITS}
        for r in res:
            offsets.append(dict(acc))
            for s in SPLITS:
                acc[s] += r["rows"][s]
        F = len(fields)
        for s in SPLITS:
            (out / s).mkdir(parents=True, exist_ok=True)
            for name, dtype, shape in (("labels", np.float32, ()),
                                       ("dense", np.float32, (len(dense_names),)),
                                       ("sparse", np.int64, (F,))):
                with open(out / s / f"{name}.npy", "wb") as fh:
                    fh.write(_header(np.dtype(dtype), (rows[s],) + shape))
                    fh.truncate(HEADER_BYTES + rows[s] * np.dtype(dtype).itemsize * int(np.prod(shape)))
        oov: Dict[str, Dict[str, float]] = {}
        if vocabulary_free:
            from .ids import ID_SPACE

            sizes = {f.name: ID_SPACE for f in fields}
            _map_ordered(pool, _pass2, [(job, p, o, None, None) for (p, _), o in zip(todo, offsets)])
        else:
            counted = []
            for j in range(len(fields)):
                c = IdCounter()
                for p, _ in todo:
                    t = _part_dir(job, p) / ".tmp"
                    c.add(np.load(t / f"count{j}.keys.npy"), np.load(t / f"count{j}.n.npy"))
                counted.append(c.result())
                del c
            vocabs, sizes = build_vocab(out, fields, counted, min_count)
            del vocabs, counted
            got = _map_ordered(pool, _pass2, [(job, p, o, r["chunks"], str(out / "vocab"))
                                              for (p, _), o, r in zip(todo, offsets, res)])
            zeros = {s: sum(g[0][s] for g in got) for s in SPLITS}
            total = {s: sum(g[1][s] for g in got) for s in SPLITS}
            oov = oov_rates(fields, zeros, total)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    shutil.rmtree(out / ".parts", ignore_errors=True)
    _, stats = write_schema(out, label=CRITEO_LABEL, dense=dense_names, fields=fields,
                            vocabulary_free=vocabulary_free, min_count=min_count, rows=rows,
                            positives=positives, sizes=sizes, oov=oov, meta=meta)
    bad = BadRows()
    for r in res:
        counts, examples = r["bad"]
        for reason, n in counts.items():
            bad.counts[reason] = bad.counts.get(reason, 0) + n
        bad.examples.extend(examples[:max(0, bad.max_examples - len(bad.examples))])
    return stats, {"rows_read": sum(r["lines"] for r in res), "bad_counts": dict(bad.counts),
                   "bad_examples": list(bad.examples)}


# -- generate --format tsv ----------------------------------------------------------------------

def write_tsv_parallel(make_chunk: Callable[[int], Any], n_chunks: int, files: Sequence[str],
                       workers: int, tmp: Path) -> List[Any]:
    """Write chunks ``0..n_chunks-1`` of TSV files in ``workers`` forked processes.

    ``make_chunk(c) -> ([(file index, arrow table)], extra)``; each table's TSV text goes to a
    part file under ``tmp``, and the parts are appended to ``files`` in chunk order (the same
    bytes as one process writing chunk after chunk). Returns every chunk's ``extra``, in order.
    """
    global _MAKE_TABLE, _TMP
    tmp = Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _MAKE_TABLE, _TMP = make_chunk, tmp  # inherited by the forked workers
    outs = [open(p, "wb") for p in files]
    extras: List[Any] = []
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            # imap keeps the order; the parent appends each chunk's parts as they arrive
            for c, (ks, extra) in enumerate(pool.imap(_tsv_chunk, range(n_chunks), chunksize=1)):
                for k in ks:
                    part = tmp / f"{c:07d}.{k}"
                    with open(part, "rb") as fi:
                        shutil.copyfileobj(fi, outs[k], 16 << 20)
                    part.unlink()
                extras.append(extra)
    finally:
        _MAKE_TABLE = _TMP = None
        for f in outs:
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return extras


_MAKE_TABLE: Optional[Callable] = None
_TMP: Optional[Path] = None


def tsv_bytes(table) -> bytes:
    """Raw Criteo TSV text of an arrow table (no header, no quoting)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    sink = pa.BufferOutputStream()
    pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(
        include_header=False, delimiter="\t", quoting_style="none"))
    return sink.getvalue().to_pybytes()


def _tsv_chunk(c: int) -> Tuple[List[int], Any]:
    slices, extra = _MAKE_TABLE(c)
    for k, table in slices:
        (_TMP / f"{c:07d}.{k}").write_bytes(tsv_bytes(table))
    return [k for k, _ in slices], extra
