"""multiplexed and unified: salted collisions, chunk layout, both backends, both input forms,
budgets, memory, state, torchrec DLRM_DCN, vocabulary-free ids, the example script."""

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrec.models.dlrm import DLRM_DCN
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import (
    Feature,
    MultiplexedEmbeddingBag,
    MultiplexedTable,
    UnifiedEmbeddingBag,
    UnifiedTable,
    make_table,
    make_table_from_config,
    memory_report,
)
from slimembed.tables.hashing import hash_ids
from slimembed.tables.unified import cardinality_chunks, chunk_key, default_chunk_dim, default_chunks

ROOT = Path(__file__).resolve().parents[2]
# a vocabulary-free feature, a large one, a small collision-free one (unified), a mid one
FEATS = [Feature("a", 2**63, 16), Feature("b", 10**6, 16), Feature("c", 40, 16, "mean"),
         Feature("d", 5000, 16)]
#: tests written for the cardinality rule (the default before the paper's layout) pin it
BY_CARD = {"chunks": "by_cardinality"}
# Criteo Kaggle's 26 cardinalities / 100: shared and private (<= 200) fields, small enough for a CPU test
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
CRITEO_SHAPED = [Feature(f"C{i + 1}", max(math.ceil(n / 100), 2), 16) for i, n in enumerate(CRITEO)]


def dense_ids(b=24, seed=0, feats=FEATS):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, min(f.num_embeddings, 2**62), (b,), generator=g)
                        for f in feats], 1)


def random_kjt(feats, b=6, max_len=3, seed=0, weighted=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(feats) * b,), generator=g)
    vals = []
    for i, f in enumerate(feats):
        n = int(lengths[i * b:(i + 1) * b].sum())
        vals.append(torch.randint(0, min(f.num_embeddings, 2**62), (n,), generator=g))
    w = torch.rand(int(lengths.sum()), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=[f.name for f in feats], values=torch.cat(vals),
                                               lengths=lengths, weights=w)


def kjt_reference(table, kjt):
    """Pool per-id dense outputs (each id alone as a [1, F] row would need all fields: use embed)."""
    d = kjt.to_dict()
    outs = []
    b = kjt.stride()
    for t, f in enumerate(table.features):
        jt = d[f.name]
        offs = jt.offsets()
        vals = jt.values()
        w = jt.weights_or_none()
        rows = table.embed(vals, torch.full_like(vals, t)) if vals.numel() else None
        col = []
        for i in range(b):
            lo, hi = int(offs[i]), int(offs[i + 1])
            if hi == lo:
                col.append(torch.zeros(table.output_dims[t]))
                continue
            r = rows[lo:hi] if w is None else rows[lo:hi] * w[lo:hi, None]
            r = r.sum(0)
            if f.pooling == "mean":
                r = r / (hi - lo)
            col.append(r)
        outs.append(torch.stack(col))
    return torch.cat(outs, 1)


def copy_to_torchrec(src: UnifiedTable, dst: UnifiedTable) -> None:
    """Copy a gather table's fused weight (and projections) into a torchrec-backend twin."""
    with torch.no_grad():
        for a, b in zip(src.shared_weights(), dst.shared_weights()):
            b.copy_(a)
        for a, b in zip(src.projections, dst.projections):
            b.copy_(a)


# ---------------------------------------------------------------- rules
def test_chunk_rule_and_default_chunk_dim():
    assert [cardinality_chunks(n, 4) for n in (3, 100, 101, 1000, 1001, 10**4, 10**5, 10**6)] == \
        [1, 1, 2, 2, 3, 3, 4, 4]
    assert cardinality_chunks(10**9, 8) == 8 and default_chunks is cardinality_chunks
    assert (default_chunk_dim(16), default_chunk_dim(39), default_chunk_dim(1), default_chunk_dim(10)) == \
        (4, 13, 1, 5)
    t = UnifiedTable(FEATS, rows=100, **BY_CARD)
    assert t.chunk_dim == 4 and t.chunks == [4, 4, 1, 3]
    assert t.collisionless == [False, False, True, False]
    assert t.output_dims == [16] * 4


# ---------------------------------------------------------------- the paper's default layout
def test_default_is_the_papers_full_width_chunks_without_projections():
    t = make_table("unified", CRITEO_SHAPED, compression=10, seed=3)
    full = sum(f.num_embeddings for f in CRITEO_SHAPED) * 16 * 4
    assert memory_report(t).total_bytes <= full // 10
    assert t.chunk_dim == 4 and t.chunks == [4] * 26 and t.output_dims == [16] * 26
    assert [n for n, _ in t.named_parameters()] == ["weight"] and len(t.projections) == 0
    private = [f.num_embeddings <= t.collisionless_max for f in CRITEO_SHAPED]
    assert t.collisionless == private and 0 < sum(private) < 26  # both kinds are exercised
    tables = t.shared_weights()  # num_tables shared [rows, 4] sub-tables, then the private block
    assert len(tables) == t.num_tables + 1
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, f.num_embeddings, (32,), generator=g) for f in CRITEO_SHAPED], 1)
    ids[:4, [i for i, p in enumerate(private) if not p]] += 2**40  # unseen raw ids hash too
    with torch.no_grad():
        out = t(ids)
    assert out.shape == (32, 26, 16)
    # by hand: shared chunks round-robin over the sub-tables in (feature, chunk) order (TFRS
    # add_feature), each read at its own salted hash; a private feature's chunk j reads row id of
    # its own N-row block
    counter, priv_off = 0, 0
    for f, feat in enumerate(CRITEO_SHAPED):
        for j in range(4):
            if private[f]:
                want = tables[-1][priv_off + ids[:, f]]
                priv_off += feat.num_embeddings
            else:
                r = hash_ids(ids[:, f], t.rows, seed=3, salt=feat.name, index=j)
                want = tables[counter % t.num_tables][r]
                counter += 1
            assert torch.equal(out[:, f, 4 * j:4 * j + 4], want), (feat.name, j)
    assert priv_off == tables[-1].shape[0]
    # several sub-tables: the same by-hand reading, now over 3 tables
    t3 = make_table("unified", CRITEO_SHAPED[:6], rows=50, num_tables=3, collisionless_max=0)
    w3 = t3.shared_weights()
    assert len(w3) == 3 and len(t3.projections) == 0
    out3 = t3(ids[:, :6])
    for k in range(24):
        f, j = divmod(k, 4)
        r = hash_ids(ids[:, f], 50, seed=0, salt=CRITEO_SHAPED[f].name, index=j)
        assert torch.equal(out3[:, f, 4 * j:4 * j + 4], w3[k % 3][r])


def test_by_cardinality_reproduces_the_former_default():
    # pinned by building with the former default (the cardinality rule + projections) before the
    # default became the paper's layout: same chunks, rows, parameter shapes and outputs
    torch.manual_seed(0)
    t = make_table("unified", CRITEO_SHAPED, compression=10, seed=3, chunks="by_cardinality")
    assert t.chunks == [1, 1, 4, 4, 1, 1, 2, 1, 1, 2, 1, 4, 1, 1, 2, 4, 1, 1, 1, 1, 4, 1, 1, 3, 1, 3]
    assert t.rows == 133500 and t.collisionless_max == 200
    assert [(n, tuple(p.shape)) for n, p in t.named_parameters()] == [
        ("weight", (134268, 4)), ("projections.0", (16, 4, 16)), ("projections.1", (3, 8, 16)),
        ("projections.2", (2, 12, 16))]
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, f.num_embeddings, (8,), generator=g) for f in CRITEO_SHAPED], 1)
    with torch.no_grad():
        out = t(ids).double()
    assert math.isclose(float(out.sum()), 1.4110983470282008, rel_tol=1e-5)
    assert math.isclose(float(out.abs().sum()), 59.419897868402586, rel_tol=1e-6)
    # the config records the chunk list: a rebuild is the same table
    u = make_table_from_config(t.config())
    assert u.chunks == t.chunks and [p.shape for p in u.parameters()] == [p.shape for p in t.parameters()]


def test_chunk_spec_errors_are_one_line():
    with pytest.raises(ValueError, match=r"chunks must be .*'by_cardinality'.*'by_decade'"):
        UnifiedTable(FEATS, rows=10, chunks="by_decade")
    with pytest.raises(ValueError, match=r"chunk_dim=5 does not divide embedding_dim 16"):
        UnifiedTable(FEATS, rows=10, chunk_dim=5)
    t = UnifiedTable(FEATS, rows=10, chunk_dim=5, chunks=3)  # explicit chunks: projected to D
    assert t.chunks == [3] * 4 and t.output_dims == [16] * 4 and len(t.projections) == 1


# ---------------------------------------------------------------- hashing & collisions
def test_rows_are_the_project_hash_family_per_feature_and_chunk():
    t = UnifiedTable(FEATS, rows=997, seed=5, **BY_CARD)
    ids = dense_ids(64)
    idx = t.remap(ids)  # [B, F, c_max], global rows
    for f, feat in enumerate(FEATS):
        for j in range(t.chunks[f]):
            if feat.name == "c":  # collision-free: its own block, row = id
                expect = 997 + j * 40 + ids[:, f]
            else:
                expect = hash_ids(ids[:, f], 997, seed=5, salt=feat.name, index=j)
            assert torch.equal(idx[:, f, j], expect), (feat.name, j)


def test_identical_feature_and_id_map_to_the_same_rows():
    t1 = UnifiedTable(FEATS, rows=500, seed=1)
    t2 = UnifiedTable(list(reversed(FEATS)), rows=500, seed=1)  # other order, other positions
    ids = dense_ids(32)
    r1 = t1.remap(ids)
    r2 = t2.remap(ids.flip(1)).flip(1)
    hashed = [0, 1, 3]
    assert torch.equal(r1[:, hashed], r2[:, hashed])
    # the [N] form with explicit fields agrees with the dense form, for any batch position
    flat = t1.remap(ids.reshape(-1), torch.arange(4).repeat(32))
    assert torch.equal(flat.view(32, 4, -1), r1)
    assert torch.equal(t1.remap(ids[5:6]), r1[5:6])
    # and the embeddings too
    assert torch.allclose(t1(ids)[3], t1(ids[3:4])[0], atol=1e-6)


@pytest.mark.parametrize("method", ["multiplexed", "unified"])
def test_salts_make_features_collide_pseudo_randomly_at_rate_one_over_m(method):
    m, n = 1000, 200_000
    feats = [Feature("x", 2**63, 16), Feature("y", 2**63, 16)]
    t = make_table(method, feats, rows=m, seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 2**62, (n, 2), generator=g)
    rows = t.remap(ids)[..., 0]
    sigma = math.sqrt(n * (1 / m) * (1 - 1 / m))
    # independent ids of two features
    hits = int((rows[:, 0] == rows[:, 1]).sum())
    assert abs(hits - n / m) < 5 * sigma, hits
    # the SAME id in both features: without per-feature salts this would be 100%
    same = t.remap(torch.stack([ids[:, 0], ids[:, 0]], 1))[..., 0]
    hits_same = int((same[:, 0] == same[:, 1]).sum())
    assert abs(hits_same - n / m) < 5 * sigma, hits_same
    if method == "unified":  # two chunks of one feature are independent hashes too
        r = t.remap(ids)
        hits_chunks = int((r[:, 0, 0] == r[:, 0, 1]).sum())
        assert abs(hits_chunks - n / m) < 5 * sigma, hits_chunks


def test_multiplexed_rows_fill_the_shared_table_uniformly():
    t = MultiplexedTable([Feature(f"f{i}", 2**63, 8) for i in range(4)], rows=64)
    ids = torch.randint(0, 2**62, (20_000, 4), generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(t.remap(ids).reshape(-1), minlength=64).float()
    exp = 80_000 / 64
    chi2 = float(((counts - exp) ** 2 / exp).sum())
    assert chi2 < 63 + 6 * math.sqrt(2 * 63)


# ---------------------------------------------------------------- chunk order & layout
def test_chunk_order_is_numeric_with_ten_or_more_chunks():
    feats = [Feature("big", 2**63, 24), Feature("other", 2**63, 24)]
    t = UnifiedTable(feats, rows=50, chunk_dim=2, chunks=12, seed=2)
    assert t.chunk_names("big") == [f"big_{j}" for j in range(12)]
    assert t.chunk_names("big")[10] == chunk_key("big", 10) == "big_10"
    ids = dense_ids(8, feats=feats)
    out = t(ids)
    idx = t.remap(ids)
    for j in (1, 2, 9, 10, 11):
        assert torch.equal(out[:, 0, 2 * j:2 * j + 2], t.weight[idx[:, 0, j]])
    tr = UnifiedTable(feats, rows=50, chunk_dim=2, chunks=12, seed=2, backend="torchrec")
    copy_to_torchrec(t, tr)
    assert torch.allclose(tr(ids), out)
    # the EBC's key order does put "_10" before "_2" nowhere: keys follow chunk order
    keys = tr.ebc.embedding_bag_configs()[0].feature_names
    assert keys[:12] == [f"big_{j}" for j in range(12)]


def test_chunks_spread_round_robin_over_sub_tables():
    t = UnifiedTable(FEATS, rows=30, num_tables=3, collisionless_max=0, chunks=[2, 3, 1, 2])
    # (a0,a1,b0,b1,b2,c0,d0,d1) -> tables 0,1,2,0,1,2,0,1
    got = [t.remap.table_of[f][j] for f in range(4) for j in range(t.chunks[f])]
    assert got == [0, 1, 2, 0, 1, 2, 0, 1]
    idx = t.remap(dense_ids(16))
    for f in range(4):
        for j in range(t.chunks[f]):
            s = t.remap.table_of[f][j]
            assert bool(((idx[:, f, j] >= 30 * s) & (idx[:, f, j] < 30 * (s + 1))).all())
    tr = UnifiedTable(FEATS, rows=30, num_tables=3, collisionless_max=0, chunks=[2, 3, 1, 2],
                      backend="torchrec")
    assert [c.feature_names for c in tr.ebc.embedding_bag_configs()] == [
        ["a_0", "b_1", "d_0"], ["a_1", "b_2", "d_1"], ["b_0", "c_0"]]


def test_torchrec_child_ebc_has_one_table_with_several_feature_names():
    m = make_table("multiplexed", FEATS, rows=100, backend="torchrec")
    cfgs = m.ebc.embedding_bag_configs()
    assert len(cfgs) == 1 and cfgs[0].feature_names == ["a", "b", "c", "d"]
    assert cfgs[0].num_embeddings == 100 and cfgs[0].embedding_dim == 16
    assert type(m.ebc).__name__ == "EmbeddingBagCollection"  # plain torchrec module: DMP shards it
    u = make_table("unified", FEATS, rows=100, backend="torchrec", **BY_CARD)
    names = [c.name for c in u.ebc.embedding_bag_configs()]
    assert names == ["unified_shared_0", "unified_private"]
    shared = u.ebc.embedding_bag_configs()[0]
    assert shared.feature_names == [*(f"a_{j}" for j in range(4)), *(f"b_{j}" for j in range(4)),
                                    "d_0", "d_1", "d_2"]
    assert u.ebc.embedding_bag_configs()[1].num_embeddings == 40


# ---------------------------------------------------------------- output modes, math
@pytest.mark.parametrize("backend", ["gather", "torchrec"])
def test_project_pad_none_against_a_dense_reference(backend):
    ids = dense_ids(10)
    for output in ("project", "pad", "none"):
        t = UnifiedTable(FEATS, rows=77, output=output, backend=backend, seed=4, **BY_CARD)
        w = torch.cat(t.shared_weights())  # fused layout, identical for both backends
        idx = t.remap(ids)
        out = t(ids)
        flat = []
        for f in range(4):
            c = t.chunks[f]
            chunks = w[idx[:, f, :c]].reshape(10, c * 4)
            if output == "project":
                if c * 4 != 16:
                    g = [i for i, (cc, fs) in enumerate(t._groups) if f in fs][0]
                    chunks = chunks @ t.projections[g][t._groups[g][1].index(f)]
                assert torch.allclose(out[:, f], chunks, atol=1e-6)
            elif output == "pad":
                assert torch.allclose(out[:, f], torch.nn.functional.pad(chunks, (0, 16 - 4 * c)))
            flat.append(chunks)
        if output == "none":
            assert t.output_dims == [16, 16, 4, 12]
            assert torch.allclose(out, torch.cat(flat, 1))
    assert len(UnifiedTable(FEATS, rows=9, output="pad", **BY_CARD).projections) == 0


@pytest.mark.parametrize("method", ["multiplexed", "unified"])
@pytest.mark.parametrize("backend", ["gather", "torchrec"])
def test_dense_and_kjt_forms_agree(method, backend):
    torch.manual_seed(0)
    t = make_table(method, FEATS, rows=101, backend=backend)
    ids = dense_ids(12)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=[f.name for f in FEATS], values=ids.t().reshape(-1),
                                              lengths=torch.ones(ids.numel(), dtype=torch.long))
    kt = t(kjt)
    assert kt.keys() == ["a", "b", "c", "d"]
    assert torch.allclose(kt.values(), t(ids).reshape(12, -1), atol=1e-6)
    # multi-valued bags (sum and mean pooling, empty bags) against pooling per-id rows
    ref_table = make_table(method, FEATS, rows=101, backend="gather")
    if backend == "torchrec":
        copy_to_torchrec(ref_table, t)
    else:
        ref_table = t
    bags = random_kjt(FEATS, b=7, seed=3)
    assert torch.allclose(t(bags).values(), kjt_reference(ref_table, bags), atol=1e-5)
    # permuted keys are put back in the table's order
    perm = bags.permute([3, 1, 0, 2])
    assert torch.allclose(t(perm).values(), t(bags).values())


def test_weighted_kjt_and_none_mode_kjt():
    t = UnifiedTable(FEATS, rows=50, output="none", **BY_CARD)
    bags = random_kjt(FEATS, b=5, seed=1, weighted=True)
    kt = t(bags)
    assert kt.length_per_key() == [16, 16, 4, 12]
    assert torch.allclose(kt.values(), kjt_reference(t, bags), atol=1e-5)
    tr = UnifiedTable(FEATS, rows=50, backend="torchrec")
    with pytest.raises(ValueError, match="weighted"):
        tr(bags)


def test_gradients_reach_only_the_rows_read_and_the_projections():
    t = UnifiedTable(FEATS, rows=1000, **BY_CARD)
    ids = dense_ids(4)
    t(ids).sum().backward()
    touched = set(t.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist())
    idx = t.remap(ids)
    read = {int(idx[b, f, j]) for b in range(4) for f in range(4) for j in range(t.chunks[f])}
    assert touched <= read and len(touched) >= len(read) - 2  # (a zero-sum gradient is possible)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.projections)


def test_sparse_gradients_equal_dense_ones():
    torch.manual_seed(0)
    dense = UnifiedTable(FEATS, rows=200)
    sparse = UnifiedTable(FEATS, rows=200, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    ids, bags = dense_ids(8), random_kjt(FEATS, b=4, seed=2)
    for t in (dense, sparse):
        (t(ids).sum() + t(bags).values().sum()).backward()
    assert sparse.weight.grad.is_sparse
    assert torch.allclose(sparse.weight.grad.to_dense(), dense.weight.grad, atol=1e-6)
    with pytest.raises(ValueError, match="sparse=False"):
        UnifiedTable(FEATS, rows=10, sparse=True, backend="torchrec")


# ---------------------------------------------------------------- vocabulary-free
@pytest.mark.parametrize("backend", ["gather", "torchrec"])
def test_unseen_raw_ids_above_2_pow_40_just_work(backend):
    feats = [Feature("u", 2**63, 8), Feature("v", 2**63, 8), Feature("small", 30, 8)]
    t = make_table("unified", feats, rows=64, backend=backend)
    train = torch.stack([torch.randint(0, 1000, (16,)), torch.randint(0, 1000, (16,)),
                         torch.randint(0, 30, (16,))], 1)
    t(train).sum().backward()
    unseen = torch.stack([torch.randint(2**40, 2**62, (16,)), torch.tensor([2**63 - 1] * 16),
                          torch.randint(2**41, 2**62, (16,))], 1)  # 'small' gets out-of-vocabulary ids
    with torch.no_grad():
        out = t(unseen)
    assert out.shape == (16, 3, 8) and torch.isfinite(out).all()
    rows = t.remap(unseen, kind="local")
    assert bool((rows[:, 2, 0] < 30).all())  # hashed into the feature's own private rows
    with pytest.raises(ValueError, match="non-negative"):
        t(torch.tensor([[-1, 0, 0]]))


# ---------------------------------------------------------------- budgets & memory
@pytest.mark.parametrize("method,kw", [("multiplexed", {}), ("unified", {}),
                                       ("unified", {"num_tables": 2, "backend": "torchrec"})])
def test_budgets_land_at_or_under_within_granularity(method, kw):
    feats = [Feature(f"C{i}", n, 16) for i, n in enumerate([3, 26, 150, 1500, 40_000, 300_000, 10**6])]
    full = sum(f.num_embeddings for f in feats) * 16 * 4
    for ratio in (10, 50, 250):
        t = make_table(method, feats, compression=ratio, **kw)
        got = memory_report(t).total_bytes
        budget = int(full / ratio)
        step = 4 * t.num_tables * t.chunk_dim
        assert got <= budget and budget - got < step, (ratio, got, budget)
        assert t.budget_solution["next_bytes"] - got == step
    with pytest.raises(ValueError, match="needs at least"):
        make_table("unified", feats, budget_bytes=1000)


def test_memory_report_counts_shared_private_projections_and_salts():
    t = UnifiedTable(FEATS, rows=100, **BY_CARD)
    rep = memory_report(t)
    c = t.chunks  # [4, 4, 1, 3]; 'c' (40 values, 1 chunk) is private
    shared = 100 * 4
    private = 40 * 1 * 4
    proj = (1 * 4 * 16) + (3 * 4 * 16)
    assert rep.param_bytes == 4 * (shared + private + proj)
    f, cm = 4, max(c)
    salts = f * cm * 2 * 8
    layout = 3 * f * cm * 8 + f * cm * 1 + f * 8  # modulus/bases, valid (bool), direct limits
    extra = rep.buffer_bytes - salts - layout
    assert extra >= 4 * 8  # + the base's id limits and the projection index buffers
    assert rep.buffer_bytes < 2000
    tr = UnifiedTable(FEATS, rows=100, backend="torchrec", **BY_CARD)
    assert memory_report(tr).param_bytes == rep.param_bytes
    m = MultiplexedTable(FEATS, rows=100)
    assert memory_report(m).param_bytes == 100 * 16 * 4
    assert "hashes.coef" in dict(m.remap.named_buffers())


# ---------------------------------------------------------------- state & config
@pytest.mark.parametrize("method", ["multiplexed", "unified"])
@pytest.mark.parametrize("backend", ["gather", "torchrec"])
def test_state_dict_and_config_round_trip(method, backend):
    torch.manual_seed(1)
    t = make_table(method, FEATS, rows=300, backend=backend, seed=9)
    opt = torch.optim.Adam(t.parameters(), lr=0.1)
    t(dense_ids(8)).sum().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(2)
    u = make_table_from_config(t.config())
    ids = dense_ids(16, seed=5)
    assert not torch.allclose(u(ids), t(ids))
    u.load_state_dict(torch.load(buf))
    assert torch.equal(u(ids), t(ids))
    assert u.config() == t.config()


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("method", ["multiplexed", "unified"])
@pytest.mark.parametrize("backend", ["gather", "torchrec"])
def test_torchrec_dlrm_dcn_trains_a_step(method, backend):
    torch.manual_seed(0)
    feats = [Feature("C0", 30, 8), Feature("C1", 2**63, 8), Feature("C2", 5000, 8)]
    table = make_table(method, feats, rows=64, backend=backend)
    model = DLRM_DCN(embedding_bag_collection=table, dense_in_features=4,
                     dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1],
                     dcn_num_layers=2, dcn_low_rank_dim=4)
    b = 16
    kjt = random_kjt(feats, b=b, max_len=2, seed=1)
    before = [p.detach().clone() for p in table.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logits = model(torch.randn(b, 4), kjt).squeeze(-1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.randint(0, 2, (b,)).float())
    loss.backward()
    opt.step()
    assert logits.shape == (b,)
    assert all(not torch.equal(a, p) for a, p in zip(before, table.parameters()))


@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
def test_make_model_takes_unified_and_multiplexed_factories(model):
    from slimembed.ctr.models import make_model

    feats = [Feature(f"C{i}", n, 16) for i, n in enumerate([3, 150, 2000, 50_000])]
    ids = dense_ids(8, feats=feats)
    for method in ("unified", "multiplexed"):
        m = make_model(model, feats, 2, table_factory=lambda fs: make_table(method, fs, compression=20))
        out = m(torch.randn(8, 2), ids)
        assert out.shape == (8,) and torch.isfinite(out).all()
        out.sum().backward()


# ---------------------------------------------------------------- drop-ins
def test_unified_embedding_bag_drop_in():
    bag = UnifiedEmbeddingBag(2**63, 16, num_rows=500, chunks=4, mode="sum", seed=1)
    assert bag.table.chunks == [4] and len(bag.table.projections) == 0
    x = torch.tensor([1, 2**40, 3, 7, 2**55])
    offsets = torch.tensor([0, 2, 2])
    out = bag(x, offsets)
    e = bag.table.embed(x, torch.zeros_like(x))
    assert torch.allclose(out, torch.stack([e[:2].sum(0), torch.zeros(16), e[2:].sum(0)]))
    idx = bag.table.remap(x, torch.zeros_like(x))
    assert torch.equal(e[:, 8:12], bag.weight[idx[:, 2]])
    mean = UnifiedEmbeddingBag(2**63, 12, num_rows=99, mode="mean")
    assert mean(torch.tensor([[1, 2], [3, 4]])).shape == (2, 12)
    mx = MultiplexedEmbeddingBag(2**63, 8, num_rows=64, mode="max")
    assert mx(torch.tensor([[1, 2**50]])).shape == (1, 8)


def test_feature_bags_share_one_table():
    feats = [Feature("user", 2**63, 8), Feature("item", 2**63, 8)]
    t = MultiplexedTable(feats, rows=128)
    bags = torch.nn.ModuleDict({f.name: t.feature_bag(f.name, mode="sum") for f in feats})
    x = torch.tensor([5, 6, 2**45])
    off = torch.tensor([0, 1])
    ref = t(KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.cat([x, x]),
                                                 lengths=torch.tensor([1, 2, 1, 2]))).to_dict()
    assert torch.allclose(bags["user"](x, off), ref["user"])
    assert torch.allclose(bags["item"](x, off), ref["item"])
    assert memory_report(bags).table_bytes == memory_report(t).table_bytes


def test_quantized_export_of_the_gather_backend():
    from slimembed.tables import export

    t = UnifiedTable(FEATS, rows=64)
    q = export(t, dtype="fp16")
    ids = dense_ids(8)
    assert torch.allclose(q(ids), t(ids), atol=1e-3)


# ---------------------------------------------------------------- example
def test_unified_torchrec_example_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "unified_torchrec.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "unseen ids" in out and "child EBC tables" in out
    auc = float(out.split("test AUC ", 1)[1].split()[0])
    assert auc > 0.6
