"""The synthetic Criteo-like generator: calibration, determinism, TSV round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimembed.datasets import generate, load_processed, make_loader, prepare_criteo, synthetic_cardinalities
from slimembed.datasets.synthetic import DEFAULT_PROFILE, PROFILES, zipf_probs, zipf_sample

ROWS = 20_000
KW = dict(rows=ROWS, scale=0.002, small_field_max=2000)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, seed=3, **KW)


def test_report_and_calibration(synth):
    out, rep = synth
    assert 0.22 <= rep.ctr <= 0.28
    assert 0.6 < rep.teacher_auc < 1 and 0.6 < rep.teacher_auc_train < 1
    assert sum(rep.rows_per_split.values()) == ROWS
    assert rep.cardinalities["C9"] == 3 and rep.cardinalities["C3"] == max(2000, round(10131227 * 0.002))
    assert rep.total_vocabulary == sum(synthetic_cardinalities(0.002, 2000))
    saved = json.loads((out / "report.json").read_text())
    default = PROFILES[DEFAULT_PROFILE]
    assert saved["teacher_auc"] == rep.teacher_auc and saved["knobs"]["profile"] == DEFAULT_PROFILE
    assert saved["knobs"]["signal_gamma"] == default["signal_gamma"]
    assert load_processed(out).schema.meta["generator"]["zipf_exponent"] == default["zipf_exponent"]


def test_profiles(synth, tmp_path):
    out, rep = synth
    # the earlier profile is the earlier generator: its knobs, and different data from the default
    v1 = generate(tmp_path / "v1", seed=3, profile="v1", **KW)
    assert {k: v1.knobs[k] for k in PROFILES["v1"]} == {
        "zipf_exponent": 1.1, "signal_gamma": 0.3, "latent_dim": 8, "first_order_std": 1.05,
        "interaction_std": 0.8, "dense_std": 0.5, "noise_std": 0.0, "dense_missing": "own"}
    assert not np.array_equal(np.load(out / "train" / "sparse.npy"), np.load(tmp_path / "v1" / "train" / "sparse.npy"))
    # an explicit knob overrides the profile's value and is recorded
    over = generate(tmp_path / "o", seed=3, profile="v1", signal_gamma=0.5, **KW)
    assert over.knobs["signal_gamma"] == 0.5 and over.knobs["zipf_exponent"] == 1.1
    assert over.teacher_auc != v1.teacher_auc
    with pytest.raises(ValueError, match="unknown synthetic profile 'v9'"):
        generate(tmp_path / "x", profile="v9", **KW)


def test_processed_layout(synth):
    out, rep = synth
    ds = load_processed(out)
    assert ds.splits == rep.rows_per_split
    sizes = np.array([c.num_embeddings for c in ds.schema.categorical])
    assert sizes.tolist() == [n + 2 for n in rep.cardinalities.values()]
    sparse = np.load(out / "train" / "sparse.npy")
    assert sparse.min() >= 1 and (sparse < sizes).all()
    # C22 is ~82% missing (id 1), C1 never
    assert 0.75 < (sparse[:, 21] == 1).mean() < 0.88 and not (sparse[:, 0] == 1).any()
    teacher = np.load(out / "test" / "teacher.npy")
    assert teacher.shape == (ds.splits["test"],) and 0.15 < teacher.mean() < 0.35
    b = next(iter(make_loader(out, "train", 512)))
    assert b.dense.shape == (512, 13) and b.sparse.shape == (512, 26)


def test_frequencies_are_zipf_like():
    p = zipf_probs(1000, 1.1)
    assert abs(p.sum() - 1) < 1e-9 and (np.diff(p) < 0).all()
    r = zipf_sample(np.random.default_rng(0).random(200_000), 1000, 1.1)
    emp = np.bincount(r, minlength=1000) / len(r)
    np.testing.assert_allclose(emp[:5], p[:5], rtol=0.05)


def test_deterministic(synth, tmp_path):
    out, rep = synth
    again = generate(tmp_path / "a", seed=3, **KW)
    assert again.teacher_auc == rep.teacher_auc
    for name in ("labels", "dense", "sparse"):
        np.testing.assert_array_equal(np.load(out / "val" / f"{name}.npy"),
                                      np.load(tmp_path / "a" / "val" / f"{name}.npy"))
    other = generate(tmp_path / "b", seed=4, **KW)
    assert not np.array_equal(np.load(out / "train" / "labels.npy")[:1000],
                              np.load(tmp_path / "b" / "train" / "labels.npy")[:1000])
    assert other.rows_per_split != rep.rows_per_split


def test_tsv_round_trip_through_prepare(synth, tmp_path):
    out, rep = synth
    trep = generate(tmp_path / "tsv", seed=3, format="tsv", **KW)
    assert trep.teacher_auc == rep.teacher_auc and trep.files[0].endswith("train.txt")
    prep = prepare_criteo(trep.files[0], tmp_path / "proc", min_count=1, seed=3)
    # same seed -> same split, row for row; dense is log(x + 1) in both
    assert prep.rows == rep.rows_per_split and prep.bad_rows == {}
    for s in ("train", "test"):
        np.testing.assert_array_equal(np.load(out / s / "labels.npy"),
                                      np.load(tmp_path / "proc" / s / "labels.npy"))
        np.testing.assert_allclose(np.load(out / s / "dense.npy"),
                                   np.load(tmp_path / "proc" / s / "dense.npy"), rtol=1e-6)
    # same partition of training rows into values (min_count=1: every training value its id)
    gen = np.load(out / "train" / "sparse.npy")
    got = np.load(tmp_path / "proc" / "train" / "sparse.npy")
    for j in (0, 2, 21):
        pairs = np.unique(np.stack([gen[:, j], got[:, j]], 1), axis=0)
        assert len(pairs) == len(np.unique(gen[:, j])) == len(np.unique(got[:, j]))
    lines = open(trep.files[0]).read().splitlines()
    assert len(lines) == ROWS and all(len(x.split("\t")) == 40 for x in lines[:50])


def test_tsv_num_files(tmp_path):
    rep = generate(tmp_path, rows=3000, scale=0.001, small_field_max=500, format="tsv", num_files=3)
    assert [f.rsplit("/", 1)[1] for f in rep.files] == ["day_0", "day_1", "day_2"]
    prep = prepare_criteo(rep.files, tmp_path / "p", split="by_file", min_count=1)
    assert prep.rows["train"] == 2000 and prep.rows["val"] + prep.rows["test"] == 1000


def test_v1_reproduces_the_generator_before_profiles(tmp_path):
    # Golden value taken from the generator at commit 72bf168 (before profiles existed), on which
    # the v1 results were measured: every array of every split, hashed.
    import hashlib

    rep = generate(tmp_path / "g", rows=70_000, scale=0.002, small_field_max=2000, seed=3, profile="v1")
    h = hashlib.sha256()
    for s in ("train", "val", "test"):
        for n in ("labels", "dense", "sparse", "teacher"):
            h.update(np.ascontiguousarray(np.load(tmp_path / "g" / s / f"{n}.npy")).tobytes())
    assert h.hexdigest()[:16] == "220457e877f73623" and rep.teacher_auc == 0.79052
