"""Generic CSV/TSV/Parquet with a declared schema, multi-valued fields, the Avazu preset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slimembed.datasets import (AVAZU_SPEC, DataFormatError, TableSpec, hash_strings,
                                 load_processed, make_loader, prepare_table)

CSV = """label,price,user,item,genres,note
1,3.5,u1,i1,a|b|c,"x, y"
0,,u2,i2,b,plain
1,10,u1,i3,,z
0,0.5,u3,i1,c|a,"q"
1,2,u2,i2,a,w
0,-1,,i4,b|b,v
"""
SPEC = TableSpec(label="label", dense=["price"], categorical=["user", "item"],
                 multi_valued={"genres": "|"}, drop=["note"], pooling={"genres": "mean"})


def _write_csv(tmp_path, text=CSV, name="data.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_multi_valued_kjt(tmp_path):
    p = _write_csv(tmp_path)
    rep = prepare_table(p, tmp_path / "out", SPEC, split={"train": [p]})
    assert rep.rows == {"train": 6, "val": 0, "test": 0}
    ds = load_processed(tmp_path / "out")
    assert ds.schema.categorical_names == ["user", "item", "genres"]
    g = ds.schema.categorical[2]
    assert g.multi_valued and g.separator == "|" and g.pooling == "mean"
    # genres vocabulary: a, b, c + missing (row 3 is empty) -> 4 values + OOV
    assert g.num_embeddings == 5 and ds.schema.categorical[0].num_embeddings == 5  # u1,u2,u3,missing
    batch = next(iter(make_loader(tmp_path / "out", "train", 6)))
    kjt = batch.sparse
    assert kjt.keys() == ["user", "item", "genres"]
    lengths = kjt.lengths().view(3, 6)
    assert lengths[0].tolist() == [1] * 6 and lengths[1].tolist() == [1] * 6
    assert lengths[2].tolist() == [3, 1, 1, 2, 1, 2]  # the empty cell is one missing token
    vals = kjt["genres"].values().tolist()
    vocab = np.load(tmp_path / "out" / "vocab" / "genres.npy")
    a, b, c = (int(np.searchsorted(vocab, hash_strings(np.array([t]))[0])) + 1 for t in "abc")
    assert len({a, b, c}) == 3 and min(a, b, c) > 1
    # rows: a|b|c, b, <empty>, c|a, a, b|b; the missing value (raw id 0) is id 1
    assert vals == [a, b, c, b, 1, c, a, a, b, b]
    np.testing.assert_allclose(batch.dense[:, 0].numpy(),
                               np.log1p([3.5, 0, 10, 0.5, 2, 0]), rtol=1e-6)  # -1 clamps to 0
    assert batch.labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_parquet_matches_csv(tmp_path):
    p = _write_csv(tmp_path)
    prepare_table(p, tmp_path / "csv", SPEC, split={"train": [p]})
    table = pa.table({
        "label": pa.array([1, 0, 1, 0, 1, 0], pa.int64()),
        "price": pa.array([3.5, None, 10, 0.5, 2, -1]),
        "user": pa.array(["u1", "u2", "u1", "u3", "u2", None]),
        "item": pa.array(["i1", "i2", "i3", "i1", "i2", "i4"]),
        "genres": pa.array([["a", "b", "c"], ["b"], [], ["c", "a"], ["a"], ["b", "b"]]),
        "note": pa.array(["x"] * 6),
    })
    pq_path = tmp_path / "data.parquet"
    pq.write_table(table, pq_path)
    rep = prepare_table(pq_path, tmp_path / "pq", SPEC, split={"train": [pq_path]}, chunk_rows=4)
    assert rep.rows["train"] == 6
    for name in ("labels.npy", "dense.npy", "sparse.npy", "multi/genres.values.npy",
                 "multi/genres.offsets.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "csv" / "train" / name),
                                      np.load(tmp_path / "pq" / "train" / name))


def test_generic_bad_rows(tmp_path):
    bad = CSV.replace("0,,u2,i2,b,plain", "yes,,u2,i2,b,plain").replace("0,0.5,u3", "0,abc,u3")
    p = _write_csv(tmp_path, bad)
    with pytest.raises(DataFormatError) as ei:
        prepare_table(p, tmp_path / "o", SPEC)
    assert "data.csv line 3, column label: 'yes' is not 0 or 1" in str(ei.value)
    rep = prepare_table(p, tmp_path / "o2", SPEC, on_bad_row="skip", split={"train": [p]})
    assert rep.bad_rows == {"bad_label": 1, "dense_not_numeric": 1} and rep.rows["train"] == 4
    short = CSV.replace("1,2,u2,i2,a,w", "1,2,u2")
    p2 = _write_csv(tmp_path, short, "short.csv")
    with pytest.raises(DataFormatError, match="short.csv line 6: expected 6 columns, got 3"):
        prepare_table(p2, tmp_path / "o3", SPEC)
    with pytest.raises(DataFormatError, match="not found"):
        prepare_table(p, tmp_path / "o4", TableSpec(label="label", categorical=["nope"]))


def test_dense_bucket_and_tsv(tmp_path):
    p = _write_csv(tmp_path, CSV.replace(",", "\t").replace('"x\t y"', "xy"), "data.tsv")
    prepare_table(p, tmp_path / "o", SPEC, dense="bucket", split={"train": [p]})
    ds = load_processed(tmp_path / "o")
    assert ds.schema.num_dense == 0 and ds.schema.categorical_names[0] == "price"


AVAZU = """id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21
1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79
10000169349117863715,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79
10000371904215119486,1,14102523,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,b3cf8def,8a4875bd,1,0,15704,320,50,1722,0,35,100084,79
10000640724480838376,0,14102601,1002,0,85f751fd,c4e18dd6,50e219e0,51cedd4e,aefc06bd,0f2161f8,a99f214a,e8275b8f,6332421a,1,0,18993,320,50,2161,0,35,-1,157
"""


def test_avazu_preset(tmp_path):
    p = _write_csv(tmp_path, AVAZU, "train.csv")
    rep = prepare_table(p, tmp_path / "o", AVAZU_SPEC, split={"train": [p]})
    ds = load_processed(tmp_path / "o")
    names = ds.schema.categorical_names
    assert "id" not in names and "hour" not in names and "click" not in names
    assert names[-2:] == ["hour_of_day", "weekday"] and len(names) == 21 + 2
    assert ds.schema.num_dense == 0 and rep.label_rate["train"] == 0.25
    sparse = np.load(tmp_path / "o" / "train" / "sparse.npy")
    vocab = np.load(tmp_path / "o" / "vocab" / "weekday.npy")
    # 2014-10-21 is a Tuesday (1), 10-25 a Saturday (5), 10-26 a Sunday (6); Monday = 0
    want = [int(np.searchsorted(vocab, hash_strings(np.array([d]))[0])) + 1
            for d in ["1", "1", "5", "6"]]
    assert sparse[:, names.index("weekday")].tolist() == want
    hours = np.load(tmp_path / "o" / "vocab" / "hour_of_day.npy")
    assert len(hours) == 3  # 00, 23, 01
    with pytest.raises(DataFormatError, match="train.csv line 3, column hour_of_day"):
        bad = AVAZU.replace("14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,96809ac8",
                            "1410x100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,96809ac8")
        prepare_table(_write_csv(tmp_path, bad, "train.csv"), tmp_path / "o2", AVAZU_SPEC)


def test_spec_round_trip():
    d = AVAZU_SPEC.to_dict()
    assert TableSpec.from_dict(d) == AVAZU_SPEC
    with pytest.raises(ValueError, match="unknown derivation"):
        TableSpec(label="y", derived={"x": ("h", "nope")})


def test_multi_valued_shuffled_batches(tmp_path):
    """Ragged gathers under block shuffle: each row's bag equals its CSR slice."""
    rows = ["label,user,tags"] + [f"{i % 2},u{i % 7},{'|'.join(f't{(i * k) % 11}' for k in range(i % 4))}"
                                  for i in range(300)]
    p = _write_csv(tmp_path, "\n".join(rows) + "\n")
    spec = TableSpec(label="label", categorical=["user"], multi_valued={"tags": "|"})
    prepare_table(p, tmp_path / "o", spec, split={"train": [p]})
    values = np.load(tmp_path / "o" / "train" / "multi" / "tags.values.npy")
    offsets = np.load(tmp_path / "o" / "train" / "multi" / "tags.offsets.npy")
    lens = np.diff(offsets)
    assert (lens == np.maximum(np.arange(300) % 4, 1)).all()  # empty cell -> one missing token
    loader = make_loader(tmp_path / "o", "train", 32, shuffle=True, block_size=50, seed=3)
    seen = []
    for rows_b, b in zip(loader.iter_rows(), loader):
        kjt = b.sparse["tags"]
        assert kjt.lengths().tolist() == lens[rows_b].tolist()
        want = np.concatenate([values[offsets[r]:offsets[r + 1]] for r in rows_b])
        assert kjt.values().tolist() == want.tolist()
        seen.append(rows_b)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(300))
