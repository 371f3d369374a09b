"""The processed format and its loader.

Layout of a processed directory (written by :func:`~.preprocess.prepare_criteo`,
:func:`~.preprocess.prepare_table` and :func:`~.synthetic.generate`)::

    schema.json                      Schema.save(): label, dense names, categorical fields with
                                     num_embeddings, vocabulary_free, meta (incl. meta["splits"]:
                                     rows per split, and how the data was made)
    report.json                      the PrepareReport / GenerateReport of the run
    vocab/<field>.npy                int64 [V] sorted raw ids; id = 1 + position (0 = OOV)
    vocab/<field>.counts.npy         int64 [V] training counts            (vocabulary mode only)
    <split>/labels.npy               float32 [N]            split in train, val, test
    <split>/dense.npy                float32 [N, n_dense]   (n_dense may be 0)
    <split>/sparse.npy               int64   [N, F_single]  single-valued fields, schema order
    <split>/multi/<field>.values.npy int64   [nnz]          multi-valued field, CSR layout:
    <split>/multi/<field>.offsets.npy int64  [N + 1]        row i = values[offsets[i]:offsets[i+1]]
    <split>/teacher.npy              float32 [N]            synthetic data only: the teacher's
                                                            click probabilities (not loaded)

All arrays are plain ``.npy`` files, memory-mapped read-only by the loader.

:func:`make_loader` yields :class:`~.batch.Batch` es: ``dense`` ``FloatTensor[B, n_dense]``,
``sparse`` ``LongTensor[B, F]`` (or a torchrec ``KeyedJaggedTensor`` when the schema has
multi-valued fields or ``as_kjt=True``), ``labels`` ``FloatTensor[B]``. Shuffling is by blocks:
each epoch permutes contiguous blocks of ``block_size`` rows (and the rows inside each block), and
batches are consecutive slices of that order, gathered with one vectorized index per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import numpy as np
import torch

from .batch import Batch
from .npyio import open_npy
from .schema import Schema

SPLITS = ("train", "val", "test")
PathLike = Union[str, Path]


@dataclass
class ProcessedDataset:
    """A processed directory: its schema and split sizes.

    Attributes:
        path: the directory.
        schema: the :class:`~.schema.Schema`.
        splits: rows per split.
    """

    path: Path
    schema: Schema
    splits: Dict[str, int]

    def loader(self, split: str, batch_size: int, **kwargs) -> "ProcessedLoader":
        """Shorthand for :func:`make_loader` on this directory."""
        return make_loader(self.path, split, batch_size, **kwargs)


def load_processed(data_dir: PathLike) -> ProcessedDataset:
    """Open a processed directory (reads ``schema.json`` and the split sizes).

    Example::

        >>> ds = load_processed("criteo_proc")  # doctest: +SKIP
        >>> ds.schema.features(16), ds.splits["train"]  # doctest: +SKIP
    """
    path = Path(data_dir)
    if not (path / "schema.json").exists():
        raise FileNotFoundError(f"{path}: not a processed dataset (no schema.json)")
    schema = Schema.load(path / "schema.json")
    splits = {s: int(schema.meta.get("splits", {}).get(s, 0)) for s in SPLITS}
    for s in SPLITS:
        lab = path / s / "labels.npy"
        if lab.exists():
            splits[s] = int(open_npy(lab).shape[0])
    return ProcessedDataset(path, schema, splits)


class SplitArrays:
    """The memory-mapped arrays of one split.

    Attributes:
        labels: ``float32[N]``; dense: ``float32[N, n_dense]``; sparse: ``int64[N, F_single]``;
        multi: ``{field: (values int64[nnz], offsets int64[N + 1])}``.
    """

    def __init__(self, data_dir: PathLike, split: str, schema: Schema):
        d = Path(data_dir) / split
        if not d.exists():
            raise FileNotFoundError(f"{d}: split {split!r} not found")
        self.labels = open_npy(d / "labels.npy")
        self.dense = open_npy(d / "dense.npy")
        self.sparse = open_npy(d / "sparse.npy")
        n = self.labels.shape[0]
        if self.dense.shape != (n, schema.num_dense):
            raise ValueError(f"{d}/dense.npy has shape {self.dense.shape}, expected ({n}, {schema.num_dense})")
        n_single = sum(not c.multi_valued for c in schema.categorical)
        if self.sparse.shape[1:] != (n_single,) or self.sparse.shape[0] not in (n, 0):
            raise ValueError(f"{d}/sparse.npy has shape {self.sparse.shape}, expected ({n}, {n_single})")
        self.multi = {}
        for c in schema.categorical:
            if c.multi_valued:
                off = open_npy(d / "multi" / f"{c.name}.offsets.npy")
                if off.shape != (n + 1,):
                    raise ValueError(f"{d}/multi/{c.name}.offsets.npy: shape {off.shape} != ({n + 1},)")
                self.multi[c.name] = (open_npy(d / "multi" / f"{c.name}.values.npy"), off)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def ragged_take(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple:
    """Gather CSR rows: ``(values[nnz], offsets[N + 1], rows int64[B])`` ->
    ``(values[sum len], lengths int64[B])``, vectorized."""
    starts = np.asarray(offsets[rows], dtype=np.int64)
    lengths = np.asarray(offsets[rows + 1], dtype=np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), lengths
    if len(rows) and (rows[1:] == rows[:-1] + 1).all():  # contiguous: one slice
        return np.asarray(values[starts[0]:starts[0] + total], dtype=np.int64), lengths
    pos = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
    return np.asarray(values[pos], dtype=np.int64), lengths


def _take(a: np.ndarray, rows: Union[slice, np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Rows of a (memory-mapped) array as a fresh, writable, contiguous array."""
    return np.array(a[rows], dtype=dtype, order="C", copy=True)


class ProcessedLoader:
    """Iterable of :class:`~.batch.Batch` over one split of a processed directory.

    See :func:`make_loader` for the arguments. ``len(loader)`` is the number of batches this rank
    yields per epoch; call :meth:`set_epoch` before each epoch for a new shuffle.
    """

    def __init__(self, data_dir: PathLike, split: str, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, block_size: int = 1 << 16, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, fold: Optional[int] = None, fold_min_rows: int = 0,
                 as_kjt: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = load_processed(data_dir)
        self.schema = self.dataset.schema
        self.split = split
        self.arrays = SplitArrays(data_dir, split, self.schema)
        self.n = len(self.arrays)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.block_size = int(block_size)
        self.drop_last = drop_last
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.fold = fold
        self.as_kjt = as_kjt or self.schema.multi_valued
        self.epoch = 0
        names = self.schema.categorical_names
        self._single_names = [c.name for c in self.schema.categorical if not c.multi_valued]
        self._multi_names = [c.name for c in self.schema.categorical if c.multi_valued]
        self._keys = names
        if fold is not None:
            sizes = self.schema.fold_sizes(fold, fold_min_rows)
            self._mod_single = np.array([sizes[names.index(c)] for c in self._single_names], dtype=np.int64)
            self._mod = dict(zip(names, sizes))
        n_batches = self.n // self.batch_size if drop_last else math.ceil(self.n / self.batch_size)
        if drop_last:
            n_batches -= n_batches % self.world_size
        self._n_batches = n_batches

    def set_epoch(self, epoch: int) -> None:
        """Shuffle seed for the next iteration is ``(seed, epoch)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(range(self.rank, self._n_batches, self.world_size))

    # -- order -----------------------------------------------------------------------------

    def _block_order(self) -> np.ndarray:
        n_blocks = math.ceil(self.n / self.block_size)
        rng = np.random.default_rng([self.seed, self.epoch, 0xB10C])
        return rng.permutation(n_blocks)

    def _rows(self, b: int, perm: np.ndarray, cum: np.ndarray, cache: Dict[int, np.ndarray]) -> Union[slice, np.ndarray]:
        """Row indices of batch ``b`` in this epoch's order (a slice when not shuffling)."""
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, self.n)
        if not self.shuffle:
            return slice(lo, hi)
        parts = []
        k = int(np.searchsorted(cum, lo, side="right")) - 1
        pos = lo
        while pos < hi:
            blk = int(perm[k])
            start = blk * self.block_size
            size = min(self.block_size, self.n - start)
            inner = cache.get(blk)
            if inner is None:
                cache.clear()
                rng = np.random.default_rng([self.seed, self.epoch, blk])
                inner = start + rng.permutation(size)
                cache[blk] = inner
            a = pos - int(cum[k])
            e = min(size, hi - int(cum[k]))
            parts.append(inner[a:e])
            pos = int(cum[k]) + e
            k += 1
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return np.sort(rows)  # locality for the memory map; order inside a batch is irrelevant

    def iter_rows(self) -> Iterator[Union[slice, np.ndarray]]:
        """The row indices of each batch this rank yields this epoch (a ``slice`` when not
        shuffling, else sorted ``int64[B]``), without reading any data."""
        perm = cum = None
        if self.shuffle:
            perm = self._block_order()
            sizes = np.minimum(self.block_size, self.n - perm * self.block_size)
            cum = np.concatenate([[0], np.cumsum(sizes)])
        cache: Dict[int, np.ndarray] = {}
        for b in range(self.rank, self._n_batches, self.world_size):
            yield self._rows(b, perm, cum, cache)

    def __iter__(self) -> Iterator[Batch]:
        for rows in self.iter_rows():
            yield self._batch(rows)

    def _batch(self, rows: Union[slice, np.ndarray]) -> Batch:
        a = self.arrays
        labels = torch.from_numpy(_take(a.labels, rows, np.float32))
        dense = torch.from_numpy(_take(a.dense, rows, np.float32))
        sparse_np = _take(a.sparse, rows, np.int64)
        if self.fold is not None and sparse_np.size:
            sparse_np %= self._mod_single
        if not self.as_kjt:
            return Batch(dense, torch.from_numpy(sparse_np), labels)
        return Batch(dense, self._kjt(sparse_np, rows, len(labels)), labels)

    def _kjt(self, sparse_np: np.ndarray, rows: Union[slice, np.ndarray], B: int):
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        idx = (np.arange(rows.start, rows.stop, dtype=np.int64) if isinstance(rows, slice)
               else np.asarray(rows, dtype=np.int64))
        values: List[np.ndarray] = []
        lengths: List[np.ndarray] = []
        for name in self._keys:
            if name in self.arrays.multi:
                v, ln = ragged_take(*self.arrays.multi[name], idx)
                if self.fold is not None:
                    v = v % self._mod[name]
            else:
                v = sparse_np[:, self._single_names.index(name)]
                ln = np.ones(B, dtype=np.int64)
            values.append(v)
            lengths.append(ln)
        return KeyedJaggedTensor(
            keys=list(self._keys),
            values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
        )


def make_loader(data_dir: PathLike, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0, block_size: int = 1 << 16, drop_last: bool = False, rank: int = 0,
                world_size: int = 1, fold: Optional[int] = None, fold_min_rows: int = 0,
                as_kjt: bool = False) -> ProcessedLoader:
    """A batch iterable over one split of a processed directory.

    Args:
        data_dir: the processed directory.
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: rows per batch (the last one may be smaller unless ``drop_last``).
        shuffle: block shuffle (contiguous blocks permuted, rows permuted inside each block),
            new order per :meth:`~ProcessedLoader.set_epoch`.
        seed: shuffle seed.
        block_size: rows per shuffle block.
        drop_last: drop the last incomplete batch, and with ``world_size > 1`` the trailing
            batches that would give ranks unequal counts (so every rank has the same ``len``).
        rank, world_size: batch ``b`` goes to rank ``b % world_size`` (for DDP; same seed and
            epoch on every rank).
        fold: fold each field's ids modulo ``ceil(num_embeddings / fold)`` (see
            :meth:`~.schema.Schema.fold_sizes` and ``schema.features(dim, fold=fold)``).
        fold_min_rows: fields with at most this many rows are not folded (0: fold every field;
            note a 3-value field folded 10x keeps 1 row, i.e. loses all its information).
        as_kjt: yield a torchrec ``KeyedJaggedTensor`` (keys = field names, ``values`` int64,
            ``lengths`` int32) even for single-valued data. Always on with multi-valued fields.

    Example::

        >>> loader = make_loader("criteo_proc", "train", 4096, shuffle=True)  # doctest: +SKIP
        >>> for epoch in range(2):  # doctest: +SKIP
        ...     loader.set_epoch(epoch)
        ...     for batch in loader: ...   # batch.sparse: LongTensor[B, 26]
    """
    return ProcessedLoader(data_dir, split, batch_size, shuffle=shuffle, seed=seed,
                           block_size=block_size, drop_last=drop_last, rank=rank,
                           world_size=world_size, fold=fold, fold_min_rows=fold_min_rows,
                           as_kjt=as_kjt)
