"""hash and double_hash: math against a dense reference, vocabulary-free ids, drop-ins, KJT, state."""

import pytest
import torch
import torch.nn.functional as F

from slimembed.tables import (
    DoubleHashEmbeddingBag,
    DoubleHashTable,
    Feature,
    HashEmbeddingBag,
    HashTable,
    make_table,
    make_table_from_config,
    memory_report,
)
from slimembed.tables.gather import combine_rows, gather_combine
from slimembed.tables.hashing import hash_ids, hash_sign

FEATS = [Feature("a", 2**63, 8), Feature("b", 40, 8), Feature("c", 10**6, 8)]


def dense_ids(b=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([
        torch.randint(0, 2**62, (b,), generator=g),
        torch.randint(0, 40, (b,), generator=g),
        torch.randint(0, 10**6, (b,), generator=g),
    ], 1)


# ---------------------------------------------------------------- hash
def test_hash_rows_match_the_hash_family():
    t = HashTable(FEATS, rows=[100, 1000, 500], seed=3)
    assert t.rows_per_feature == [100, 40, 500]  # b is capped at N and collision-free
    ids = dense_ids()
    out = t(ids)
    offs = [0, 100, 140]
    for f, (feat, m) in enumerate(zip(FEATS, [100, 40, 500])):
        if feat.name == "b":
            row = ids[:, f] % 40
        else:
            row = hash_ids(ids[:, f], m, seed=3, salt=feat.name)
        assert torch.equal(out[:, f], t.weight[row + offs[f]])
    # the small feature is collision-free: 40 ids -> 40 distinct rows
    x = torch.arange(40)
    emb = t.embed(x, torch.ones_like(x))
    assert torch.unique(emb, dim=0).shape[0] == 40


def test_signed_hash_multiplies_by_the_sign_hash():
    t = HashTable(FEATS, rows=64, signed=True, seed=1)
    u = HashTable(FEATS, rows=64, signed=False, seed=1)
    u.load_state_dict({k: v for k, v in t.state_dict().items() if not k.startswith("hashes.sign")},
                      strict=False)
    ids = dense_ids()
    s = torch.stack([hash_sign(ids[:, f], seed=1, salt=n) for f, n in enumerate("abc")], 1)
    assert torch.allclose(t(ids), u(ids) * s.unsqueeze(-1))
    assert set(s.unique().tolist()) == {-1.0, 1.0}


def test_hash_vocabulary_free_and_negative_ids():
    t = HashTable(FEATS, rows=100)
    big = torch.tensor([[2**40 + 1, 3, 2**41], [2**63 - 1, 39, 999_999]])
    assert t(big).shape == (2, 3, 8)
    # unseen ids (never counted, far outside any vocabulary) also work in "c": any int64 >= 0
    assert t(torch.tensor([[5, 5, 2**60]])).shape == (1, 3, 8)
    with pytest.raises(ValueError, match=r"'b'.*-3"):
        t(torch.tensor([[1, -3, 2]]))


# ---------------------------------------------------------------- double hash
def test_double_hash_is_the_sum_of_two_rows():
    t = DoubleHashTable(FEATS, rows=[100, 1000, 51], seed=2)
    ids = dense_ids()
    out = t(ids)
    for f, feat in enumerate(FEATS):
        if feat.name == "b":  # 1000 rows >= 40: a plain collision-free table
            ref = t.weight[t.off1[f] + ids[:, f] % 40]
        else:
            m1, m2 = int(t.m1[f]), int(t.m2[f])
            assert m1 + m2 == t.rows_per_feature[f]
            h1 = hash_ids(ids[:, f], m1, seed=2, salt=feat.name, index=0)
            h2 = hash_ids(ids[:, f], m2, seed=2, salt=feat.name, index=1)
            ref = t.weight[t.off1[f] + h1] + t.weight[t.off2[f] + h2]
        assert torch.allclose(out[:, f], ref, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_double_hash_concat_and_shared(shared):
    t = DoubleHashTable(FEATS, rows=64, combine="concat", shared=shared, seed=4)
    assert t.weight.shape[1] == 4 and t.output_dims == [8, 8, 8]
    ids = dense_ids()
    out = t(ids)
    f = 2
    m1, m2 = int(t.m1[f]), int(t.m2[f])
    if shared:
        assert int(t.off1[f]) == int(t.off2[f]) and m1 == m2 == 128
    h1 = hash_ids(ids[:, f], m1, seed=4, salt="c", index=0)
    h2 = hash_ids(ids[:, f], m2, seed=4, salt="c", index=1)
    ref = torch.cat([t.weight[t.off1[f] + h1], t.weight[t.off2[f] + h2]], -1)
    assert torch.equal(out[:, f], ref)
    assert memory_report(t).param_bytes == (64 + 40 + 64) * 8 * 4


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_frequent_ids_get_their_own_rows(combine):
    freq = {"a": torch.tensor([7, 2**50, 7, 11]), "c": torch.tensor([11, 3])}
    t = DoubleHashTable(FEATS, rows=16, combine=combine, frequent_ids=freq)
    plain = DoubleHashTable(FEATS, rows=16, combine=combine)
    assert t.frequent_counts == [3, 0, 2] and t.num_frequent == 5
    # the dedicated rows sit after the hashed blocks and are the whole embedding
    u = 2 if combine == "concat" else 1
    assert t.weight.shape[0] == plain.weight.shape[0] + 5 * u
    ids = torch.tensor([[7, 1, 11], [2**50, 2, 3], [11, 3, 12], [8, 4, 7]])
    out = t(ids)
    rows = t.weight[t.freq_base:].reshape(5, -1)  # one D-wide row per (id, feature) entry
    hits = [out[0, 0], out[1, 0], out[2, 0], out[0, 2], out[1, 2]]
    for h in hits:
        assert any(torch.equal(h, r) for r in rows)
    assert torch.unique(torch.stack(hits), dim=0).shape[0] == 5  # all distinct rows
    # non-frequent ids are double-hashed exactly as without the id map
    with torch.no_grad():
        plain.weight.copy_(t.weight[: plain.weight.shape[0]])
    ref = plain(ids)
    assert torch.equal(out[3], ref[3]) and torch.equal(out[2, 2], ref[2, 2])
    assert torch.equal(out[:, 1], ref[:, 1])
    # 11 is frequent in "a" and in "c" (its own row in each); 3 only in "c"
    assert not torch.equal(out[0, 2], out[2, 0])
    # the id map is memory: sorted distinct ids (7, 11, 2**50, 3 -> 4) + (uid, field) keys (5)
    rep = memory_report(t)
    assert t.freq_uniq.tolist() == [3, 7, 11, 2**50]
    assert rep.buffer_bytes - memory_report(plain).buffer_bytes == 8 * (4 + 5)
    assert t.frequent_ids_dict() == {"a": [7, 11, 2**50], "c": [3, 11]}
    with pytest.raises(ValueError, match=r"'c'.*-1"):
        t(torch.tensor([[1, 1, -1]]))


def test_top_k_ids_helper():
    counts = {"c": torch.tensor([5, 0, 9, 1, 7])}
    assert DoubleHashTable.top_k_ids(counts, 2)["c"].tolist() == [2, 4]


# ---------------------------------------------------------------- custom backward
@pytest.mark.parametrize("mode", ["sum", "concat", "mult"])
@pytest.mark.parametrize("with_coef", [False, True])
def test_gather_combine_gradients_match_autograd(mode, with_coef):
    torch.manual_seed(0)
    w = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 50, (6, 5, 3))
    coef = None
    if with_coef:
        coef = torch.randint(0, 2, (6, 5, 3)).double() * (2 * torch.randint(0, 2, (6, 5, 3)) - 1)
        coef[..., 0] = 1.0
    out = gather_combine(w, idx, coef, mode)
    ref = combine_rows(F.embedding(idx, w), coef, mode)
    assert torch.allclose(out, ref)
    g = torch.randn_like(ref)
    (gw,) = torch.autograd.grad((out * g).sum(), w)
    (gr,) = torch.autograd.grad((ref * g).sum(), w)
    assert torch.allclose(gw, gr)
    # per-field slot masks broadcast over a dense batch ([F, k] coef) for mult/sum
    if with_coef and mode != "concat":
        fc = (torch.rand(5, 3) > 0.5).double()
        fc[:, 0] = 1
        out = gather_combine(w, idx, fc, mode)
        ref = combine_rows(F.embedding(idx, w), fc.expand(6, 5, 3), mode)
        assert torch.allclose(out, ref)
        (gw,) = torch.autograd.grad((out * g).sum(), w)
        (gr,) = torch.autograd.grad((ref * g).sum(), w)
        assert torch.allclose(gw, gr)


@pytest.mark.parametrize("method,kw", [("hash", {"signed": True}), ("double_hash", {}),
                                       ("double_hash", {"combine": "concat"})])
def test_table_gradients_match_reference_and_sparse(method, kw):
    t = make_table(method, FEATS, rows=50, **kw)
    s = make_table(method, FEATS, rows=50, sparse=True, **kw)
    s.load_state_dict(t.state_dict())
    ids = dense_ids()
    g = torch.randn(32, 3, 8)
    (t(ids) * g).sum().backward()
    (s(ids) * g).sum().backward()
    assert s.weight.grad.is_sparse
    assert torch.allclose(t.weight.grad, s.weight.grad.to_dense(), atol=1e-6)


# ---------------------------------------------------------------- drop-ins
def reference_bag(bag, inp, offsets=None, psw=None):
    """``F.embedding_bag`` over the rows the table gives each distinct id."""
    flat = inp.reshape(-1)
    uniq, local = torch.unique(flat, return_inverse=True)
    with torch.no_grad():
        rows = bag.table.embed(uniq, torch.zeros_like(uniq))
    pad = None
    if bag.padding_idx is not None and bool((uniq == bag.padding_idx).any()):
        pad = int((uniq == bag.padding_idx).nonzero()[0, 0])
    local = local.view(inp.shape)
    return F.embedding_bag(local, rows, offsets, mode=bag.mode, per_sample_weights=psw,
                           include_last_offset=bag.include_last_offset, padding_idx=pad)


def dropin_cases(make):
    inp = torch.tensor([3, 2**40, 3, 7, 9, 11, 2**62, 5])
    offsets = torch.tensor([0, 2, 2, 5])  # bag 1 is empty
    psw = torch.rand(8)
    for mode in ["sum", "mean", "max"]:
        bag = make(mode=mode)
        yield bag, (inp, offsets, None)
        yield bag, (inp.view(2, 4), None, None)
        if mode == "sum":
            yield bag, (inp, offsets, psw)
            yield bag, (inp.view(2, 4), None, psw.view(2, 4))
    last = make(mode="sum", include_last_offset=True)
    yield last, (inp, torch.tensor([0, 2, 2, 5, 8]), psw)
    pad = make(mode="mean", padding_idx=3)
    yield pad, (inp, offsets, None)


@pytest.mark.parametrize("cls,kw", [
    (HashEmbeddingBag, {"num_rows": 16}),
    (HashEmbeddingBag, {"num_rows": 16, "signed": True}),
    (DoubleHashEmbeddingBag, {"num_rows": 16}),
    (DoubleHashEmbeddingBag, {"num_rows": 16, "combine": "concat", "frequent_ids": [3, 9]}),
])
def test_dropins_follow_embedding_bag_semantics(cls, kw):
    for bag, (inp, offsets, psw) in dropin_cases(lambda **m: cls(2**63, 6, **kw, **m)):
        out = bag(inp, offsets, psw)
        ref = reference_bag(bag, inp, offsets, psw)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-6), (bag.mode, bag.padding_idx)
    bag = cls(2**63, 6, mode="sum", **kw)
    assert torch.equal(bag(torch.tensor([1, 2]), torch.tensor([0, 1, 2]))[2], torch.zeros(6))
    assert bag.weight is bag.table.weight
    # nn.EmbeddingBag's positional order: (N, D, max_norm, norm_type, scale_grad_by_freq, mode)
    assert cls(2**63, 6, None, 2.0, False, "max", **kw).mode == "max"
    for bad in [{"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"_weight": torch.zeros(3, 6)}]:
        with pytest.raises(NotImplementedError):
            cls(2**63, 6, **bad, **kw)


# ---------------------------------------------------------------- KJT, state, config
def _kjt(ids_per_feature, lengths):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in FEATS], values=torch.cat(ids_per_feature), lengths=torch.cat(lengths)
    )


@pytest.mark.parametrize("method,kw", [("hash", {"signed": True}),
                                       ("double_hash", {"frequent_ids": {"c": [5, 6]}}),
                                       ("double_hash", {"combine": "concat"})])
def test_dense_and_kjt_agree(method, kw):
    t = make_table(method, FEATS, rows=40, **kw)
    ids = dense_ids(6)
    dense = t(ids)  # [B, F, D]
    kt = t(_kjt([ids[:, f] for f in range(3)], [torch.ones(6, dtype=torch.long)] * 3))
    assert torch.allclose(kt.values(), dense.reshape(6, -1), atol=1e-6)
    # multi-valued bags: sums of the dense rows; empty bags are zeros
    lengths = torch.tensor([2, 0, 1, 3, 0, 0])
    vals = [torch.tensor([1, 2, 3, 5, 6, 7]), torch.tensor([0, 1, 2, 3, 4, 5]),
            torch.tensor([5, 6, 9, 10, 11, 12])]
    kt = t(_kjt(vals, [lengths] * 3)).to_dict()
    for f, feat in enumerate(FEATS):
        rows = t.embed(vals[f], torch.full((6,), f))
        ref = torch.stack([rows[o:o + n].sum(0) for o, n in zip([0, 2, 2, 3, 6, 6], lengths.tolist())])
        assert torch.allclose(kt[feat.name], ref, atol=1e-6)


@pytest.mark.parametrize("method,kw", [
    ("hash", {"rows": 30, "signed": True, "seed": 5}),
    ("double_hash", {"rows": 30, "frequent_ids": {"a": [1, 2**45]}, "combine": "concat"}),
])
def test_state_dict_and_config_round_trip(method, kw):
    t = make_table(method, FEATS, **kw)
    with torch.no_grad():
        t.weight.normal_()
    cfg = t.config()
    import json

    u = make_table_from_config(json.loads(json.dumps(cfg)))
    u.load_state_dict(t.state_dict())
    ids = dense_ids()
    assert torch.equal(u(ids), t(ids))
    assert memory_report(u).total_bytes == memory_report(t).total_bytes


def test_init_is_uniform_005():
    t = HashTable(FEATS, rows=200)
    w = t.weight.detach()
    assert float(w.abs().max()) <= 0.05 and float(w.std()) > 0.02
    d = DoubleHashTable(FEATS, rows=200)
    assert float(d.weight.detach().abs().max()) <= 0.05
