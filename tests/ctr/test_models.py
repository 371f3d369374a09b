"""CTR layers and models: math against explicit references, and the model contract for every
registered model (shapes, gradients, both input forms, table factory, parameter groups)."""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from torch import nn

from slimembed.ctr.layers import (
    CrossNet,
    CrossNetV2,
    DotInteraction,
    FMInteraction,
    InnerProduct,
    MLPBlock,
    NumericEmbedding,
)
from slimembed.ctr.models import (
    MODELS,
    available_models,
    field_embeddings,
    make_model,
    model_hyper_parameters,
)
from slimembed.tables import EmbeddingTable, Feature, make_table

torchrec = pytest.importorskip("torchrec")
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor  # noqa: E402

B, D = 16, 8
FEATURES = [Feature(f"C{i}", 11 + 7 * i, D) for i in range(4)]
FIRST_ORDER_MODELS = {"lr", "fm", "deepfm", "wdl"}
EXPECTED = {"lr", "fm", "deepfm", "dcn", "dcnv2", "dlrm", "fnn", "ipnn", "wdl"}
SMALL = {"hidden_units": [32, 16]}  # keeps the heavier checks fast; defaults are tested too


def small_cfg(name: str) -> dict:
    hp = model_hyper_parameters(name)
    cfg = {k: v for k, v in SMALL.items() if k in hp}
    if name == "dlrm":
        cfg = {"bottom_hidden_units": [16], "top_hidden_units": [32, 16]}
    return cfg


def make_batch(num_dense: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack(
        [torch.randint(0, f.num_embeddings, (B,), generator=g) for f in FEATURES], dim=1
    )
    dense = torch.rand(B, num_dense, generator=g) * 3
    return dense, ids


def to_kjt(ids: torch.Tensor, names: List[str]) -> KeyedJaggedTensor:
    """Single-valued KJT (key-major values, all lengths 1) from dense ids ``[B, F]``."""
    return KeyedJaggedTensor.from_lengths_sync(
        keys=names,
        values=ids.t().reshape(-1),
        lengths=torch.ones(ids.numel(), dtype=torch.int32),
    )


# ---------------------------------------------------------------------------------------- layers
def test_fm_interaction_equals_pair_loop():
    torch.manual_seed(0)
    v = torch.randn(5, 6, 4, dtype=torch.float64)
    ref = torch.zeros(5, dtype=torch.float64)
    for i in range(6):
        for j in range(i + 1, 6):
            ref += (v[:, i] * v[:, j]).sum(-1)
    out = FMInteraction()(v)
    assert out.shape == (5, 1)
    torch.testing.assert_close(out.squeeze(1), ref)


def test_crossnet_layer_by_hand():
    torch.manual_seed(0)
    net = CrossNet(7, num_layers=2).double()
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(5, 7, dtype=torch.float64)
    x = x0
    for l in range(2):
        w, b = net.weight[l], net.bias[l]
        x = torch.stack([x0[s] * torch.dot(x[s], w) + b + x[s] for s in range(5)])
    torch.testing.assert_close(net(x0), x)
    # one layer, written with explicit broadcasting
    one = CrossNet(7, num_layers=1).double()
    with torch.no_grad():
        one.weight.copy_(net.weight[:1])
        one.bias.copy_(net.bias[:1])
    ref = x0 * (x0 @ net.weight[0]).unsqueeze(1) + net.bias[0] + x0
    torch.testing.assert_close(one(x0), ref)


@pytest.mark.parametrize("low_rank", [None, 3])
def test_crossnetv2_layer_formula(low_rank):
    torch.manual_seed(0)
    net = CrossNetV2(6, num_layers=2, low_rank=low_rank).double()
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(4, 6, dtype=torch.float64)
    x = x0
    for l in range(2):
        if low_rank is None:
            w = net.weight[l]
        else:
            w = net.u[l] @ net.v[l].t()
            assert torch.linalg.matrix_rank(w) <= low_rank
        x = torch.stack([x0[s] * (w @ x[s] + net.bias[l]) + x[s] for s in range(4)])
    torch.testing.assert_close(net(x0), x)


def test_inner_product_equals_pair_loop():
    torch.manual_seed(0)
    v = torch.randn(3, 5, 4, dtype=torch.float64)
    layer = InnerProduct(5)
    out = layer(v)
    ref = torch.stack(
        [(v[:, i] * v[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5)], dim=1
    )
    assert out.shape == (3, 10) == (3, layer.output_dim)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_matches_manual(self_interaction):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    layer = DotInteraction(4, self_interaction=self_interaction)
    start = 0 if self_interaction else 1
    ref = torch.stack(
        [torch.einsum("bd,bd->b", x[:, i], x[:, j]) for i in range(4) for j in range(i + start, 4)],
        dim=1,
    )
    out = layer(x)
    assert out.shape == (3, 10 if self_interaction else 6) == (3, layer.output_dim)
    torch.testing.assert_close(out, ref)


def test_numeric_embedding_scales_vectors():
    layer = NumericEmbedding(3, 4)
    dense = torch.tensor([[1.0, 0.0, -2.0], [0.5, 3.0, 1.0]])
    out = layer(dense)
    assert out.shape == (2, 3, 4)
    for b in range(2):
        for k in range(3):
            torch.testing.assert_close(out[b, k], dense[b, k] * layer.weight[k])
    assert layer.weight.abs().max() <= 0.05


def test_mlp_block_structure_and_init():
    mlp = MLPBlock(10, [20, 30], activation="relu", dropout=0.1, batch_norm=True, output_dim=1)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout",
        "Linear", "BatchNorm1d", "ReLU", "Dropout",
        "Linear",
    ]
    for m in mlp.layers:
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound
            assert torch.all(m.bias == 0)
    assert mlp(torch.randn(4, 10)).shape == (4, 1)
    plain = MLPBlock(10, [20])
    assert [type(m).__name__ for m in plain.layers] == ["Linear", "ReLU"] and plain.output_dim == 20
    with pytest.raises(ValueError, match="unknown activation"):
        MLPBlock(10, [20], activation="nope")


# ---------------------------------------------------------------------------------------- registry
def test_registry_names():
    assert set(available_models()) == EXPECTED == set(MODELS)


def test_make_model_unknown_name_lists_models():
    with pytest.raises(ValueError) as e:
        make_model("deepfmm", FEATURES, 3)
    for name in EXPECTED:
        assert name in str(e.value)


def test_make_model_unknown_hyper_parameter():
    with pytest.raises(ValueError, match="hidden_units"):
        make_model("deepfm", FEATURES, 3, hidden_unit=[10])


def test_defaults_documented_in_signatures():
    hp = model_hyper_parameters("deepfm")
    assert tuple(hp["hidden_units"]) == (400, 400, 400) and hp["activation"] == "relu"
    assert hp["dropout"] == 0.0 and hp["batch_norm"] is False
    assert model_hyper_parameters("dcn")["num_cross_layers"] == 3
    assert model_hyper_parameters("dcnv2")["model_structure"] == "parallel"
    dl = model_hyper_parameters("dlrm")
    assert tuple(dl["bottom_hidden_units"]) == (64,) and tuple(dl["top_hidden_units"]) == (256, 128)


# ---------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("num_dense", [3, 0])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_contract(name, num_dense):
    torch.manual_seed(0)
    model = make_model(name, FEATURES, num_dense)  # default hyper-parameters
    dense, ids = make_batch(num_dense)
    out = model(dense, ids)
    assert out.shape == (B,) and out.dtype == torch.float32 and torch.isfinite(out).all()

    # gradients reach every parameter, tables included
    loss = nn.functional.binary_cross_entropy_with_logits(out, (ids[:, 0] % 2).float())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"

    # tables vs the rest: a partition of all parameters
    tables = model.embedding_tables()
    assert all(isinstance(t, EmbeddingTable) for t in tables)
    expect_tables = 2 if name in FIRST_ORDER_MODELS - {"lr"} else 1
    assert len(tables) == expect_tables
    if name in FIRST_ORDER_MODELS:
        assert model.first_order in tables and model.first_order.output_dims == [1] * len(FEATURES)
    if name != "lr":
        assert model.embedding in tables
    table_ids = {id(p) for t in tables for p in t.parameters()}
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert table_ids and not (table_ids & dense_ids)
    assert table_ids | dense_ids == {id(p) for p in model.parameters()}
    if name != "lr" or num_dense > 0:
        assert dense_ids


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kjt_input_matches_dense_ids(name):
    torch.manual_seed(0)
    model = make_model(name, FEATURES, 3, **small_cfg(name)).eval()
    dense, ids = make_batch(3, seed=1)
    names = [f.name for f in FEATURES]
    ref = model(dense, ids)
    torch.testing.assert_close(model(dense, to_kjt(ids, names)), ref)
    # keys in another order: the table permutes them back
    perm = [2, 0, 3, 1]
    torch.testing.assert_close(model(dense, to_kjt(ids[:, perm], [names[i] for i in perm])), ref)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_custom_table_factory_builds_every_table(name):
    calls: List[List[Feature]] = []
    built: List[EmbeddingTable] = []

    def factory(fs: List[Feature]) -> EmbeddingTable:
        calls.append(list(fs))
        table = make_table("full", fs, init_scale=0.01)
        built.append(table)
        return table

    model = make_model(name, FEATURES, 3, table_factory=factory, **small_cfg(name))
    n_expected = {"lr": 1, "fm": 2, "deepfm": 2, "wdl": 2}.get(name, 1)
    assert len(calls) == n_expected
    assert all([f.name for f in fs] == [f.name for f in FEATURES] for fs in calls)
    dims = sorted(fs[0].embedding_dim for fs in calls)
    expect_dims = {"lr": [1], "fm": [1, D], "deepfm": [1, D], "wdl": [1, D]}.get(name, [D])
    assert dims == expect_dims
    tables = model.embedding_tables()
    assert len(tables) == len(built) and all(any(t is b for b in built) for t in tables)
    if name in FIRST_ORDER_MODELS:
        assert any(model.first_order is b for b in built)
    if name != "lr":
        assert any(model.embedding is b for b in built)


def test_fm_includes_numeric_fields_and_linear_term():
    torch.manual_seed(0)
    model = make_model("fm", FEATURES, 3).double()
    dense, ids = make_batch(3)
    dense = dense.double()
    emb = model.embedding(ids)  # [B, F, D]
    num = dense.unsqueeze(-1) * model.numeric_embedding.weight  # [B, 3, D]
    v = torch.cat([emb, num], dim=1)
    pair = sum(
        (v[:, i] * v[:, j]).sum(-1) for i in range(v.shape[1]) for j in range(i + 1, v.shape[1])
    )
    lin = model.first_order(ids).sum(dim=(1, 2)) + dense @ model.dense_linear.weight[0] + model.bias
    torch.testing.assert_close(model(dense, ids), lin + pair)


def test_deepfm_is_lr_plus_fm_plus_mlp():
    torch.manual_seed(0)
    model = make_model("deepfm", FEATURES, 3, hidden_units=[16]).double()
    dense, ids = make_batch(3)
    dense = dense.double()
    v = model.field_inputs(dense, ids)
    assert v.shape == (B, len(FEATURES) + 3, D)
    ref = (
        model.first_order_logit(dense, ids)
        + FMInteraction()(v).squeeze(1)
        + model.mlp(v.reshape(B, -1)).squeeze(1)
    )
    torch.testing.assert_close(model(dense, ids), ref)


def test_dlrm_interaction_layout():
    model = make_model("dlrm", FEATURES, 3)
    f = len(FEATURES)
    assert model.bottom.output_dim == D
    assert model.top.input_dim == D + (f + 1) * f // 2
    no_dense = make_model("dlrm", FEATURES, 0)
    assert no_dense.bottom is None and no_dense.top.input_dim == f * (f - 1) // 2


@pytest.mark.parametrize("structure", ["parallel", "stacked", "crossnet_only"])
def test_dcnv2_structures_and_low_rank(structure):
    torch.manual_seed(0)
    model = make_model("dcnv2", FEATURES, 2, model_structure=structure, low_rank=4, hidden_units=[16])
    dense, ids = make_batch(2)
    out = model(dense, ids)
    out.sum().backward()
    assert out.shape == (B,)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert (model.mlp is None) == (structure == "crossnet_only")
    with pytest.raises(ValueError, match="model_structure"):
        make_model("dcnv2", FEATURES, 2, model_structure="diagonal")


def test_field_embeddings_both_forms_and_unequal_dims_error():
    table = make_table("full", FEATURES)
    _, ids = make_batch(0)
    names = [f.name for f in FEATURES]
    torch.testing.assert_close(field_embeddings(table, to_kjt(ids, names)), table(ids))

    class UnequalDims(nn.Module):
        feature_names = ["a", "b"]

        def forward(self, kjt):
            return KeyedTensor(keys=["a", "b"], length_per_key=[4, 2], values=torch.zeros(3, 6))

    with pytest.raises(ValueError, match="per-feature dims"):
        field_embeddings(UnequalDims(), to_kjt(torch.zeros(3, 2, dtype=torch.long), ["a", "b"]))


def test_dense_shape_is_checked():
    model = make_model("fnn", FEATURES, 3, hidden_units=[8])
    _, ids = make_batch(0)
    with pytest.raises(ValueError, match=r"dense must be FloatTensor\[B, 3\]"):
        model(torch.zeros(B, 2), ids)
    no_dense = make_model("fnn", FEATURES, 0, hidden_units=[8])
    assert no_dense(None, ids).shape == (B,)
    assert no_dense(torch.zeros(B, 0), ids).shape == (B,)


def test_model_config_round_trip():
    model = make_model("dcnv2", FEATURES, 3, low_rank=2, hidden_units=[8])
    cfg = model.config()
    assert cfg["model"] == "dcnv2" and cfg["low_rank"] == 2
    rebuilt = make_model(cfg.pop("model"), FEATURES, cfg.pop("num_dense"), **cfg)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
