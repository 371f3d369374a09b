"""TT-Rec tables: lookup against the materialised tensor train, memory, budgets, drop-in semantics."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import Feature, TTEmbeddingBag, TTTable, make_table, make_table_from_config, memory_report
from slimembed.tables.tt import tt_param_count, tt_shapes

# Criteo Kaggle's 26 categorical cardinalities, scaled down 500x so tests stay fast.
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
CRITEO_LIKE = [Feature(f"C{i + 1}", max(math.ceil(n / 500), 2), 16) for i, n in enumerate(CRITEO)]


def dense_train(g1, g2, g3, n_rows):
    """The full [N, d] table of one field, contracted by hand from its three cores."""
    n1, d1, r = g1.shape
    n2 = g2.shape[0]
    n3, _, d3 = g3.shape
    d2 = g2.shape[2] // r
    g2 = g2.reshape(n2, r, d2, r)
    w = torch.einsum("aiq,bqjr,crk->abcijk", g1, g2, g3)  # [n1, n2, n3, d1, d2, d3]
    return w.reshape(n1 * n2 * n3, d1 * d2 * d3)[:n_rows]


def test_lookup_equals_materialised_tensor_train():
    # two fields with equal shapes share a stacked group: check both slots; one explicit shape.
    feats = [Feature("a", 1000, 16), Feature("b", 1000, 16), Feature("c", 60, 16)]
    t = TTTable(feats, rank=3, shapes={"c": ((5, 4, 3), (2, 4, 2))})
    assert t.tt_features == ["a", "b", "c"]
    with torch.no_grad():
        for name, (g, slot) in {"a": (0, 0), "b": (0, 1), "c": (1, 0)}.items():
            n = next(f.num_embeddings for f in feats if f.name == name)
            ref = dense_train(t.core1[g][slot], t.core2[g][slot], t.core3[g][slot], n)
            col = t.feature_names.index(name)
            ids = torch.zeros(n, 3, dtype=torch.long)
            ids[:, col] = torch.arange(n)
            got = t(ids)[:, col]
            assert torch.allclose(got, ref, atol=1e-6), name
            assert torch.allclose(t.materialize(name), ref, atol=1e-6)


def test_dims_and_rows_are_factored_balanced():
    (n1, n2, n3), (d1, d2, d3) = tt_shapes(10_000, 16)
    assert n1 * n2 * n3 >= 10_000 and n1 * n2 * n3 < 10_000 * 1.05
    assert max(n1, n2, n3) <= 2 * min(n1, n2, n3)
    assert d1 * d2 * d3 == 16 and sorted((d1, d2, d3)) == [2, 2, 4]
    assert n2 == min(n1, n2, n3) and d2 == min(d1, d2, d3)  # the R^2 core is the small one


def test_memory_formula_equals_memory_report():
    r = 5
    t = TTTable(CRITEO_LIKE, rank=r)
    floats = 0
    n_tt = 0
    for f in CRITEO_LIKE:
        (n1, n2, n3), (d1, d2, d3) = tt_shapes(f.num_embeddings, 16)
        tt = (n1 * d1 + n2 * d2 * r + n3 * d3) * r
        if f.num_embeddings > 200 and tt < f.num_embeddings * 16:
            floats += tt
            n_tt += 1
        else:
            floats += f.num_embeddings * 16
    assert n_tt == len(t.tt_features) > 0
    rep = memory_report(t)
    assert rep.param_bytes == 4 * floats
    assert rep.total_bytes == TTTable.memory_bytes(CRITEO_LIKE, r)
    assert rep.table_bytes == rep.total_bytes and rep.full_bytes == t.full_bytes()


def test_small_or_unprofitable_fields_stay_full():
    feats = [Feature("tiny", 150, 16), Feature("big", 50_000, 16)]
    t = TTTable(feats, rank=4)
    assert t.tt_features == ["big"] and t.full is not None
    assert t.full.feature_names == ["tiny"]
    # a rank so large TT would not pay: the field stays full
    t2 = TTTable(feats, rank=200)
    assert t2.tt_features == []
    assert memory_report(t2).param_bytes == 4 * (150 + 50_000) * 16


def test_init_matches_uniform_005_scale():
    t = TTTable([Feature("x", 20_000, 16)], rank=8)
    w = t.materialize("x")
    assert abs(w.std().item() - 0.05 / math.sqrt(3)) < 0.15 * 0.05 / math.sqrt(3)
    assert abs(w.mean().item()) < 0.003


@pytest.mark.parametrize("ratio", [2, 10, 100, 1000])
def test_budgets_land_from_below_within_one_rank(ratio):
    full = sum(f.num_embeddings * 16 * 4 for f in CRITEO_LIKE)
    budget = int(full / ratio)
    minimum = TTTable.memory_bytes(CRITEO_LIKE, 1)
    if budget < minimum:
        with pytest.raises(ValueError, match=f"needs at least {minimum} bytes"):
            make_table("tt", CRITEO_LIKE, compression=ratio, threshold=200)  # pinned: a hard floor
        return
    t = make_table("tt", CRITEO_LIKE, compression=ratio, threshold=200)
    total = memory_report(t).total_bytes
    assert total <= budget
    assert memory_report(TTTable(CRITEO_LIKE, rank=t.rank + 1)).total_bytes > budget
    assert len(t.tt_features) > 0


def test_criteo_like_at_1000x_is_below_the_minimum():
    with pytest.raises(ValueError, match=r"'tt' needs at least \d+ bytes.*rank=1"):
        make_table("tt", CRITEO_LIKE, compression=1000, threshold=200)  # DLRM's 200 pinned: a hard floor


@pytest.mark.parametrize("bad", [-1, 1000])
def test_out_of_range_ids_name_feature_and_value(bad):
    t = TTTable([Feature("a", 10, 4), Feature("b", 1000, 4)], rank=2)
    with pytest.raises(ValueError, match=rf"'b' got id {bad}"):
        t(torch.tensor([[0, bad]]))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.tensor([1, bad]),
                                              lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=rf"'b' got id {bad}"):
        t(kjt)


def test_dense_and_kjt_agree_and_kjt_pools_with_torchrec_semantics():
    feats = [Feature("a", 300, 8), Feature("b", 5000, 8, "mean"), Feature("c", 5000, 8)]
    t = TTTable(feats, rank=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, f.num_embeddings, (6,), generator=g) for f in feats], 1)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(18, dtype=torch.long))
    assert torch.allclose(t(kjt).values().view(6, 3, 8), t(ids), atol=1e-6)
    # multi-valued: a: [1, 2], []; b: [3, 4, 5], [6]; c: [], [4999]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b", "c"], values=torch.tensor([1, 2, 3, 4, 5, 6, 4999]),
        lengths=torch.tensor([2, 0, 3, 1, 0, 1]))
    kt = t(kjt)
    wa, wb, wc = (t.materialize(n) for n in "abc")
    assert torch.allclose(kt["a"][0], wa[1] + wa[2], atol=1e-6)
    assert torch.equal(kt["a"][1], torch.zeros(8))
    assert torch.allclose(kt["b"][0], (wb[3] + wb[4] + wb[5]) / 3, atol=1e-6)
    assert torch.allclose(kt["c"][1], wc[4999], atol=1e-6)


def test_drop_in_matches_embedding_bag_semantics(embedding_bag_semantics):
    embedding_bag_semantics(
        lambda **kw: TTEmbeddingBag(300, 8, tt_rank=3, **kw),
        lambda bag: bag.table.materialize("input"), 300,
    )
    bag = TTEmbeddingBag(300, 8, tt_rank=2, tt_p_shapes=(10, 5, 6), tt_q_shapes=(2, 2, 2))
    assert bag.table.group_shapes == [((10, 5, 6), (2, 2, 2))]
    with pytest.raises(NotImplementedError):
        TTEmbeddingBag(300, 8, _weight=torch.zeros(300, 8))


def test_gradients_reach_every_core():
    t = TTTable([Feature("a", 5000, 16)], rank=4)
    t(torch.tensor([[1], [4999]])).sum().backward()
    for p in (t.core1[0], t.core2[0], t.core3[0]):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_state_dict_and_config_round_trip():
    t = TTTable(CRITEO_LIKE[:6], rank=3)
    clone = make_table_from_config(t.config())
    assert isinstance(clone, TTTable) and clone.config() == t.config()
    clone.load_state_dict(t.state_dict())
    ids = torch.stack([torch.randint(0, f.num_embeddings, (4,)) for f in CRITEO_LIKE[:6]], 1)
    assert torch.equal(clone(ids), t(ids))
    assert set(t.state_dict()) == set(clone.state_dict())

