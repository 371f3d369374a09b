"""Criteo sample -> prepare_criteo -> loader; bad rows; split conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimembed.datasets import (CRITEO_KAGGLE_CARDINALITIES, DataFormatError, ID_SPACE,
                                 CriteoReader, hash_strings, load_processed, make_loader,
                                 prepare_criteo, random_split)
from slimembed.datasets.preprocess import bucket_keys

N = 1999
POSITIVES = 418  # label rate 0.209


def _split_of_rows(seed=0):
    return random_split(np.arange(N, dtype=np.int64), (8, 1, 1), seed)


def test_constants():
    assert len(CRITEO_KAGGLE_CARDINALITIES) == 26
    assert sum(CRITEO_KAGGLE_CARDINALITIES) == 33762577


def test_reader_chunks(sample_path):
    r = CriteoReader(sample_path, chunk_rows=600)
    chunks = list(r)
    assert [len(c) for c in chunks] == [600, 600, 600, 199]
    assert r.lines_read == N
    c = chunks[0]
    assert c.labels.dtype == np.int8 and c.dense.shape == (600, 13) and c.dense.dtype == np.int64
    assert c.lines[0] == 1 and chunks[1].lines[0] == 601
    assert int(sum(ch.labels.sum() for ch in chunks)) == POSITIVES
    # first row of the file: 0 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2
    assert c.dense[0].tolist() == [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 0, 2]
    assert c.dense_missing[0, 11] and not c.dense_missing[0, :11].any()


def test_prepare_log_splits_and_labels(criteo_log):
    out, rep = criteo_log
    assert sum(rep.rows.values()) == N and rep.rows_read == N
    np.testing.assert_array_equal(
        [rep.rows[s] for s in ("train", "val", "test")], np.bincount(_split_of_rows(), minlength=3))
    assert 0.75 < rep.rows["train"] / N < 0.85 and 0.07 < rep.rows["val"] / N < 0.13
    pos = sum(rep.label_rate[s] * rep.rows[s] for s in rep.rows)
    assert round(pos) == POSITIVES and abs(pos / N - 0.209) < 0.001
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"] == rep.rows and saved["peak_rss_mb"] > 0 and saved["rows_per_s"] > 0
    ds = load_processed(out)
    assert ds.splits == rep.rows
    assert ds.schema.num_dense == 13 and len(ds.schema.categorical) == 26
    assert [f.num_embeddings for f in ds.schema.features(8)] == list(rep.vocabulary_sizes.values())


def test_loader_shapes_and_ranges(criteo_log):
    out, rep = criteo_log
    ds = load_processed(out)
    sizes = np.array([c.num_embeddings for c in ds.schema.categorical])
    for split in ("train", "val", "test"):
        loader = make_loader(out, split, 256)
        n = 0
        for b in loader:
            assert b.dense.dtype == torch_float() and b.dense.shape[1] == 13
            assert b.sparse.dtype == torch_long() and b.sparse.shape[1] == 26
            assert b.labels.shape == (b.sparse.shape[0],)
            ids = b.sparse.numpy()
            assert (ids >= 0).all() and (ids < sizes).all()
            assert set(np.unique(b.labels.numpy())) <= {0.0, 1.0}
            assert (b.dense.numpy() >= 0).all()
            n += len(b)
        assert n == rep.rows[split] and len(loader) == -(-rep.rows[split] // 256)


def torch_float():
    import torch
    return torch.float32


def torch_long():
    import torch
    return torch.int64


def test_vocabulary_matches_pandas_reference(criteo_log, sample_df):
    """Ids against a reference built with pandas: min-count on train rows, OOV = 0."""
    out, _ = criteo_log
    split = _split_of_rows()
    ds = load_processed(out)
    for field in ("C2", "C3", "C19", "C22"):  # C19/C22 have many missing values
        j = ds.schema.categorical_names.index(field)
        raw = sample_df[field].fillna("<missing>").to_numpy()
        counts = sample_df[field].fillna("<missing>")[split == 0].value_counts()
        frequent = set(counts[counts >= 2].index)
        assert ds.schema.categorical[j].num_embeddings == len(frequent) + 1
        for s_i, s in enumerate(("train", "val", "test")):
            ids = np.load(out / s / "sparse.npy")[:, j]
            vals = raw[split == s_i]
            is_freq = np.isin(vals, list(frequent))
            assert (ids[~is_freq] == 0).all() and (ids[is_freq] > 0).all()
            # one id per value, one value per id
            pairs = {(v, i) for v, i in zip(vals[is_freq], ids[is_freq])}
            assert len(pairs) == len({v for v, _ in pairs}) == len({i for _, i in pairs})
        # the missing value sorts first (raw id 0) -> id 1 when frequent
        if "<missing>" in frequent:
            tr = np.load(out / "train" / "sparse.npy")[:, j]
            assert (tr[raw[split == 0] == "<missing>"] == 1).all()


def test_dense_log_values(criteo_log, sample_df):
    out, _ = criteo_log
    split = _split_of_rows()
    x = sample_df[[f"I{i}" for i in range(1, 14)]].astype(float).to_numpy()[split == 0]
    want = np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0)).astype(np.float32)
    np.testing.assert_allclose(np.load(out / "train" / "dense.npy"), want, rtol=1e-6)


def test_chunking_and_runs_are_deterministic(tmp_path, sample_path, criteo_log):
    out, _ = criteo_log
    other = tmp_path / "again"
    prepare_criteo(sample_path, other, min_count=2, chunk_rows=128)
    for s in ("train", "val", "test"):
        for name in ("labels", "dense", "sparse"):
            np.testing.assert_array_equal(np.load(out / s / f"{name}.npy"),
                                          np.load(other / s / f"{name}.npy"))
    seeded = tmp_path / "seed1"
    rep = prepare_criteo(sample_path, seeded, min_count=2, seed=1)
    assert rep.rows["val"] == int((_split_of_rows(1) == 1).sum())
    assert not np.array_equal(np.load(out / "val" / "labels.npy"),
                              np.load(seeded / "val" / "labels.npy"))


def test_bucket_mode(tmp_path, sample_path, sample_df):
    rep = prepare_criteo(sample_path, tmp_path, min_count=1, dense="bucket", split=(1, 0, 0))
    ds = load_processed(tmp_path)
    assert ds.schema.num_dense == 0 and len(ds.schema.categorical) == 39
    assert ds.schema.categorical_names[:2] == ["I1", "I2"] and rep.rows["train"] == N
    b = next(iter(make_loader(tmp_path, "train", 100)))
    assert b.dense.shape == (100, 0) and b.sparse.shape == (100, 39)
    sparse = np.load(tmp_path / "train" / "sparse.npy")
    for j, col in enumerate(["I2", "I5"]):
        jj = ds.schema.categorical_names.index(col)
        v = sample_df[col].astype(float)
        key = np.where(v.isna(), 10**9, bucket_keys(v.fillna(0).to_numpy()))
        ids = sparse[:, jj]
        # same bucket <-> same id
        pairs = set(zip(key.tolist(), ids.tolist()))
        assert len(pairs) == len(set(key.tolist())) == len(set(ids.tolist()))
    assert bucket_keys(np.array([-2, 0, 1, 2, 3, 4, 5, 100])).tolist() == [-5, -3, -2, -1, 1, 1, 2, 21]


def test_vocabulary_free(tmp_path, sample_path, sample_df):
    rep = prepare_criteo(sample_path, tmp_path, vocabulary_free=True, split=(1, 0, 0))
    ds = load_processed(tmp_path)
    assert ds.schema.vocabulary_free and all(c.num_embeddings == ID_SPACE for c in ds.schema.categorical)
    assert not (tmp_path / "vocab").exists()
    ids = np.load(tmp_path / "train" / "sparse.npy")
    assert ids.dtype == np.int64 and (ids >= 0).all()
    raw = sample_df["C20"]
    want = np.zeros(N, dtype=np.int64)
    want[raw.notna().to_numpy()] = hash_strings(raw.dropna().to_numpy())
    np.testing.assert_array_equal(ids[:, 19], want)
    assert (hash_strings(np.array(["68fd1e64"])) == ids[0, 0]).all()  # stable across runs


def _bad_file(tmp_path, sample_path, edits):
    lines = sample_path.read_text().splitlines()
    for line_no, fn in edits.items():
        f = lines[line_no - 1].split("\t")
        lines[line_no - 1] = "\t".join(fn(f))
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def _set(col, value):
    def fn(f):
        f[col] = value
        return f
    return fn


@pytest.mark.parametrize("edits,expect", [
    ({17: _set(5, "abc")}, ["line 17", "column I5", "'abc' is not an integer"]),
    ({5: lambda f: f[:-1]}, ["line 5", "expected 40 columns, got 39"]),
    ({40: _set(0, "2")}, ["line 40", "column label", "'2' is not 0 or 1"]),
    ({1200: _set(3, "0x1f")}, ["line 1200", "column I3", "'0x1f'"]),  # pyarrow would accept hex
    ({900: _set(7, "1.5")}, ["line 900", "column I7"]),
])
def test_bad_rows_raise_with_location(tmp_path, sample_path, edits, expect):
    p = _bad_file(tmp_path, sample_path, edits)
    with pytest.raises(DataFormatError) as ei:
        prepare_criteo(p, tmp_path / "out", chunk_rows=500)
    msg = str(ei.value)
    assert "train.txt" in msg
    for e in expect:
        assert e in msg, msg


def test_bad_rows_skip_counts(tmp_path, sample_path):
    p = _bad_file(tmp_path, sample_path, {
        5: lambda f: f[:-1], 17: _set(5, "abc"), 40: _set(0, "2"), 1500: _set(0, ""),
        1501: lambda f: f + ["x"]})
    rep = prepare_criteo(p, tmp_path / "out", on_bad_row="skip", min_count=2)
    assert rep.bad_rows == {"wrong_column_count": 2, "dense_not_integer": 1, "bad_label": 2}
    assert sum(rep.rows.values()) == N - 5 and rep.rows_read == N
    assert any("line 17, column I5" in m for m in rep.bad_row_examples)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["bad_rows"] == rep.bad_rows
    # a skipped row does not move the other rows between splits
    split = _split_of_rows()
    kept = np.setdiff1d(np.arange(N), [4, 16, 39, 1499, 1500])
    np.testing.assert_array_equal([rep.rows[s] for s in ("train", "val", "test")],
                                  np.bincount(split[kept], minlength=3))


def test_max_rows_and_split_by_file(tmp_path, sample_path):
    lines = sample_path.read_text().splitlines(keepends=True)
    a, b = tmp_path / "day_0", tmp_path / "day_1"
    a.write_text("".join(lines[:1500]))
    b.write_text("".join(lines[1500:]))
    rep = prepare_criteo([a, b], tmp_path / "o1", split="by_file", min_count=1)
    assert rep.rows["train"] == 1500 and rep.rows["val"] + rep.rows["test"] == 499
    assert 200 < rep.rows["val"] < 300
    rep = prepare_criteo([a, b], tmp_path / "o2", split={"train": [a], "test": [b]})
    assert rep.rows == {"train": 1500, "val": 0, "test": 499}
    assert len(make_loader(tmp_path / "o2", "val", 10)) == 0
    rep = prepare_criteo([a, b], tmp_path / "o3", max_rows=1700, split=(1, 0, 0))
    assert rep.rows["train"] == 1700 and rep.rows_read == 1700
    with pytest.raises(ValueError):
        prepare_criteo([a, b], tmp_path / "o4", split={"train": [a]})


def test_gzip_and_empty_inputs(tmp_path, sample_path, criteo_log):
    import gzip

    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(sample_path.read_bytes()))
    rep = prepare_criteo(gz, tmp_path / "gz", min_count=2)
    out, _ = criteo_log
    np.testing.assert_array_equal(np.load(tmp_path / "gz" / "test" / "sparse.npy"),
                                  np.load(out / "test" / "sparse.npy"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rep = prepare_criteo(empty, tmp_path / "e")
    assert rep.rows == {"train": 0, "val": 0, "test": 0}
    assert len(make_loader(tmp_path / "e", "train", 8)) == 0
    assert list(make_loader(tmp_path / "e", "train", 8)) == []
