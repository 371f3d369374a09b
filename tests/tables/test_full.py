"""The full-table baseline, the table protocol and memory accounting."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import (
    Feature,
    FullEmbeddingBag,
    FullTable,
    available_methods,
    make_table,
    make_table_from_config,
    memory_report,
)

FEATS = [Feature("a", 10, 4), Feature("b", 20, 4), Feature("c", 5, 4, "mean")]


def test_dense_ids_gather_the_right_rows():
    t = make_table("full", FEATS)
    ids = torch.tensor([[1, 2, 3], [9, 19, 4]])
    out = t(ids)
    assert out.shape == (2, 3, 4)
    # field b's row 19 lives after field a's 10 rows
    assert torch.equal(out[1, 1], t.weight[10 + 19])
    assert torch.equal(out[0, 2], t.weight[30 + 3])


def test_init_is_uniform_005():
    t = make_table("full", [Feature("x", 5000, 16)])
    assert t.weight.abs().max() <= 0.05
    assert t.weight.abs().max() > 0.045


@pytest.mark.parametrize("bad", [-1, 20])
def test_out_of_range_ids_name_feature_and_value(bad):
    t = make_table("full", FEATS)
    with pytest.raises(ValueError, match=rf"'b' got id {bad}"):
        t(torch.tensor([[0, bad, 0]]))


def test_wrong_shape_and_type_errors():
    t = make_table("full", FEATS)
    with pytest.raises(ValueError, match="LongTensor\\[B, 3\\]"):
        t(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        t([[0, 0, 0]])


def test_kjt_pooling_matches_manual_sum_and_mean():
    t = make_table("full", FEATS)
    # batch of 2; a: [1], [2,3]; b: [], [4]; c: [0,1], [2]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b", "c"],
        values=torch.tensor([1, 2, 3, 4, 0, 1, 2]),
        lengths=torch.tensor([1, 2, 0, 1, 2, 1]),
    )
    kt = t(kjt)
    assert kt.keys() == ["a", "b", "c"]
    w = t.weight
    assert torch.allclose(kt["a"][1], w[2] + w[3])
    assert torch.equal(kt["b"][0], torch.zeros(4))  # empty bag
    assert torch.allclose(kt["c"][0], (w[30] + w[31]) / 2)  # mean pooling
    assert kt.values().shape == (2, 12)


def test_kjt_key_order_is_by_name_and_single_valued_equals_dense():
    t = make_table("full", FEATS)
    ids = torch.tensor([[1, 2, 3], [9, 19, 4]])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["c", "a", "b"], values=ids.t()[[2, 0, 1]].reshape(-1), lengths=torch.ones(6, dtype=torch.long)
    )
    assert torch.allclose(t(kjt).values().view(2, 3, 4), t(ids))


def test_kjt_out_of_range_is_caught():
    t = make_table("full", FEATS)
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b", "c"], torch.tensor([1, 25, 0]), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="'b' got id 25"):
        t(kjt)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_drop_in_equals_nn_embeddingbag(mode):
    torch.manual_seed(0)
    ref = nn.EmbeddingBag(50, 8, mode=mode)
    ours = FullEmbeddingBag(50, 8, mode=mode, _weight=ref.weight.detach().clone())
    x = torch.tensor([3, 7, 7, 1, 49, 0])
    offsets = torch.tensor([0, 2, 2, 5])  # includes an empty bag
    assert torch.allclose(ours(x, offsets), ref(x, offsets))
    x2 = torch.randint(0, 50, (4, 3))
    assert torch.allclose(ours(x2), ref(x2))
    if mode == "sum":
        psw = torch.rand(6)
        assert torch.allclose(ours(x, offsets, psw), ref(x, offsets, psw))


def test_drop_in_padding_idx_and_last_offset():
    ref = nn.EmbeddingBag(20, 4, mode="mean", padding_idx=2, include_last_offset=True)
    ours = FullEmbeddingBag(20, 4, mode="mean", padding_idx=2, include_last_offset=True,
                            _weight=ref.weight.detach().clone())
    x = torch.tensor([2, 5, 2, 2, 7, 8])
    offsets = torch.tensor([0, 2, 4, 6])
    assert torch.allclose(ours(x, offsets), ref(x, offsets))
    with pytest.raises(ValueError, match="got id 20"):
        ours(torch.tensor([20]), torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match="per_sample_weights"):
        ours(x, offsets, torch.ones(6))


def test_drop_in_trains_with_sparse_grads():
    bag = FullEmbeddingBag(30, 4, mode="sum", sparse=True)
    bag(torch.tensor([[1, 2], [3, 4]])).sum().backward()
    assert bag.weight.grad.is_sparse


def test_memory_report_counts_params_buffers_optimizer():
    t = make_table("full", FEATS)
    rep = memory_report(t)
    assert rep.param_bytes == 35 * 4 * 4
    assert rep.full_bytes == 35 * 4 * 4
    assert rep.buffer_bytes == 2 * 3 * 8  # id limits + row offsets, int64
    assert rep.total_bytes == rep.param_bytes + rep.buffer_bytes
    opt = torch.optim.Adam(t.parameters())
    t(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    rep2 = memory_report(t, opt)
    assert rep2.optimizer_bytes == 2 * rep.param_bytes + 4  # exp_avg, exp_avg_sq + step scalar
    assert rep2.ratio == pytest.approx(rep.full_bytes / rep.table_bytes)


def test_memory_report_of_a_model_counts_tables_once():
    t = make_table("full", FEATS)
    model = nn.Sequential(t, nn.Flatten(), nn.Linear(12, 1))
    model.tied = t  # the same table twice must count once
    rep = memory_report(model)
    assert rep.table_bytes == memory_report(t).total_bytes
    assert rep.param_bytes == 35 * 16 + 13 * 4


def test_registry_and_config_round_trip():
    assert "full" in available_methods()
    with pytest.raises(ValueError, match="unknown table method 'nope'; available: .*full"):
        make_table("nope", FEATS)
    t = make_table("full", FEATS, sparse=True)
    t2 = make_table_from_config(t.config())
    assert isinstance(t2, FullTable) and t2.sparse and t2.features == t.features
    t2.load_state_dict(t.state_dict())
    assert torch.equal(t2.weight, t.weight)


def test_full_budget_cannot_compress():
    with pytest.raises(ValueError, match="cannot compress"):
        make_table("full", FEATS, compression=2)
    assert isinstance(make_table("full", FEATS, compression=1), FullTable)


def test_feature_validation():
    with pytest.raises(ValueError, match="pooling"):
        Feature("x", 10, 4, "max")
    with pytest.raises(ValueError, match="num_embeddings"):
        Feature("x", 0)
    with pytest.raises(ValueError, match="duplicate"):
        make_table("full", [Feature("x", 3), Feature("x", 4)])
    with pytest.raises(ValueError, match="one embedding_dim"):
        make_table("full", [Feature("x", 3, 4), Feature("y", 4, 8)])


def test_embedding_bag_configs_for_torchrec():
    t = make_table("full", FEATS)
    cfgs = t.embedding_bag_configs()
    assert [c.feature_names for c in cfgs] == [["a"], ["b"], ["c"]]
    assert all(c.embedding_dim == 4 for c in cfgs)
    assert not t.is_weighted()
