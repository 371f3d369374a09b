"""Loader: block shuffle, epochs, DDP shards, fold, KJT form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimembed.datasets import generate, load_processed, make_loader


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    generate(out, rows=12_000, scale=0.001, small_field_max=1000, seed=1)
    return out


def _rows(loader):
    return [np.arange(r.start, r.stop) if isinstance(r, slice) else r for r in loader.iter_rows()]


def test_block_shuffle_covers_every_row_once(data):
    n = load_processed(data).splits["train"]
    loader = make_loader(data, "train", 100, shuffle=True, block_size=333, seed=7)
    rows = _rows(loader)
    allr = np.concatenate(rows)
    assert len(allr) == n and np.array_equal(np.sort(allr), np.arange(n))
    assert len(rows) == len(loader) == -(-n // 100)
    assert not np.array_equal(allr, np.sort(allr))  # actually shuffled
    # batches hold what the arrays hold at those rows
    labels = np.load(data / "train" / "labels.npy")
    sparse = np.load(data / "train" / "sparse.npy")
    for r, b in zip(rows[:3], loader):
        np.testing.assert_array_equal(b.labels.numpy(), labels[r])
        np.testing.assert_array_equal(b.sparse.numpy(), sparse[r])


def test_epochs_and_seeds(data):
    a = make_loader(data, "train", 256, shuffle=True, seed=1)
    first = np.concatenate(_rows(a))
    assert np.array_equal(first, np.concatenate(_rows(make_loader(data, "train", 256, shuffle=True, seed=1))))
    a.set_epoch(1)
    second = np.concatenate(_rows(a))
    assert not np.array_equal(first, second) and np.array_equal(np.sort(first), np.sort(second))
    c = np.concatenate(_rows(make_loader(data, "train", 256, shuffle=True, seed=2)))
    assert not np.array_equal(first, c)
    plain = np.concatenate(_rows(make_loader(data, "train", 256)))
    assert np.array_equal(plain, np.arange(len(plain)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_shards_are_disjoint(data, drop_last):
    n = load_processed(data).splits["train"]
    shards = [make_loader(data, "train", 128, shuffle=True, block_size=500, rank=r, world_size=3,
                          drop_last=drop_last) for r in range(3)]
    rows = [np.concatenate(_rows(s)) for s in shards]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.intersect1d(rows[i], rows[j]).size
    total = np.concatenate(rows)
    if drop_last:
        assert len({len(s) for s in shards}) == 1
        assert all(len(b) == 128 for s in shards for b in s)
        assert len(total) == len(shards[0]) * 3 * 128
    else:
        assert np.array_equal(np.sort(total), np.arange(n))


def test_fold(data):
    ds = load_processed(data)
    for k in (10, 100):
        sizes = np.array(ds.schema.fold_sizes(k))
        assert [f.num_embeddings for f in ds.schema.features(8, fold=k)] == sizes.tolist()
        assert (sizes == -(-np.array([c.num_embeddings for c in ds.schema.categorical]) // k)).all()
        plain = make_loader(data, "val", 500)
        folded = make_loader(data, "val", 500, fold=k)
        for p, f in zip(plain, folded):
            ids = f.sparse.numpy()
            assert (ids < sizes).all()
            np.testing.assert_array_equal(ids, p.sparse.numpy() % sizes)
    kept = ds.schema.fold_sizes(10, min_rows=100)
    assert kept[8] == ds.schema.categorical[8].num_embeddings  # C9: 3 values + 2, left whole
    f = next(iter(make_loader(data, "val", 50, fold=10, as_kjt=True)))
    assert (f.sparse["C3"].values() < ds.schema.fold_sizes(10)[2]).all()


def test_kjt_form_matches_dense_ids(data):
    dense_b = next(iter(make_loader(data, "test", 64)))
    kjt_b = next(iter(make_loader(data, "test", 64, as_kjt=True)))
    kjt = kjt_b.sparse
    assert kjt.keys() == [f"C{i}" for i in range(1, 27)]
    assert (kjt.lengths() == 1).all() and kjt.lengths().dtype == torch.int32
    for j in (0, 5, 25):
        assert torch.equal(kjt[f"C{j + 1}"].values(), dense_b.sparse[:, j])


def test_bad_arguments(data):
    with pytest.raises(ValueError):
        make_loader(data, "train", 0)
    with pytest.raises(ValueError):
        make_loader(data, "train", 10, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        make_loader(data / "nope", "train", 10)
