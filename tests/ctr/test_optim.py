"""Embedding optimizers: row-wise Adagrad against a hand computation, sparse paths, the set."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimembed.ctr.optim import (
    LazySparseAdam,
    OptimizerSet,
    RowWiseAdagrad,
    build_optimizers,
    table_factory_for,
    table_kwargs_for,
)
from slimembed.tables import Feature, FullTable, memory_report


def sparse_grad(shape, rows, values):
    """A COO row gradient with (possibly duplicate) ``rows``."""
    return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values, dtype=torch.float32), shape, check_invariants=False)


def hand_rowwise(w, acc, grads_by_row, lr, eps, wd):
    """Reference in plain Python floats: coalesce, s += mean(g^2), w -= lr g / (sqrt(s) + eps)."""
    w = [list(map(float, r)) for r in w]
    acc = list(map(float, acc))
    for i, gs in grads_by_row.items():
        g = [sum(col) for col in zip(*gs)]
        g = [gj + wd * wj for gj, wj in zip(g, w[i])]
        acc[i] += sum(x * x for x in g) / len(g)
        w[i] = [wj - lr * gj / (acc[i] ** 0.5 + eps) for wj, gj in zip(w[i], g)]
    return torch.tensor(w, dtype=torch.float64), torch.tensor(acc, dtype=torch.float64)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_rowwise_adagrad_sparse_update_equals_hand_computation(wd):
    torch.manual_seed(0)
    w0 = torch.randn(6, 3)
    p = nn.Parameter(w0.clone())
    opt = RowWiseAdagrad([p], lr=0.1, eps=1e-8, weight_decay=wd)
    steps = [
        ([1, 3, 1], [[0.5, -1.0, 2.0], [0.1, 0.2, 0.3], [1.0, 1.0, -1.0]]),  # row 1 twice
        ([3, 4], [[-0.4, 0.0, 0.9], [2.0, -2.0, 0.5]]),
    ]
    ref_w, ref_acc = w0.double().tolist(), [0.0] * 6
    for rows, vals in steps:
        p.grad = sparse_grad((6, 3), rows, vals)
        opt.step()
        by_row = {}
        for r, v in zip(rows, vals):
            by_row.setdefault(r, []).append(v)
        ref_w, ref_acc = hand_rowwise(ref_w, ref_acc, by_row, 0.1, 1e-8, wd)
        ref_w, ref_acc = ref_w.tolist(), ref_acc.tolist()
    torch.testing.assert_close(p.detach().double(), torch.tensor(ref_w, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["sum"].double(), torch.tensor(ref_acc, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    for untouched in (0, 2, 5):  # never in a gradient: bit-identical, no state
        assert torch.equal(p.detach()[untouched], w0[untouched])
        assert opt.state[p]["sum"][untouched] == 0
    assert opt.state[p]["sum"].shape == (6,)  # one scalar per row
    assert int(opt.state[p]["step"]) == 2


def test_rowwise_adagrad_dense_fallback_matches_sparse_path_and_torchrec():
    torch.manual_seed(1)
    w0 = torch.randn(10, 4)
    rows, vals = [2, 7, 2, 9], torch.randn(4, 4)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    oa, ob = RowWiseAdagrad([a], lr=0.05), RowWiseAdagrad([b], lr=0.05)
    for _ in range(3):
        a.grad = torch.sparse_coo_tensor(torch.tensor([rows]), vals, (10, 4), check_invariants=False)
        b.grad = a.grad.to_dense()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert torch.equal(b.detach()[0], w0[0])  # zero-gradient rows untouched in the dense path too

    # Same rule as torchrec's (dense, all rows) RowWiseAdagrad when every row has a gradient.
    from torchrec.optim import RowWiseAdagrad as TrecRowWise

    c, d = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    oc, od = RowWiseAdagrad([c], lr=0.05, eps=1e-10), TrecRowWise([d], lr=0.05, eps=1e-10)
    for _ in range(3):
        g = torch.randn(10, 4)
        c.grad, d.grad = g.clone(), g.clone()
        oc.step()
        od.step()
    torch.testing.assert_close(c, d, rtol=1e-6, atol=1e-6)


def test_rowwise_adagrad_matches_fbgemm_fused_ebc():
    """Our row-wise Adagrad on a sparse FullTable == torchrec FusedEmbeddingBagCollection (fbgemm)."""
    try:
        import torchrec.optim as trec_optim
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    except Exception as e:  # pragma: no cover
        pytest.skip(f"torchrec/fbgemm unavailable: {e}")
    torch.manual_seed(2)
    n, d, b = 20, 8, 16
    fused = FusedEmbeddingBagCollection(
        tables=[EmbeddingBagConfig(num_embeddings=n, embedding_dim=d, name="t0", feature_names=["f0"])],
        optimizer_type=trec_optim.RowWiseAdagrad, optimizer_kwargs={"lr": 0.1},
        device=torch.device("cpu"),
    )
    table = FullTable([Feature("f0", n, d)], sparse=True)
    fused.load_state_dict({"embedding_bags.t0.weight": table.weight.detach().clone()})
    opt = RowWiseAdagrad(table.parameters(), lr=0.1)
    for _ in range(3):
        ids = torch.randint(0, n, (b,))
        target = torch.randn(b, d)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f0"], values=ids, lengths=torch.ones(b, dtype=torch.long))
        ((fused(kjt).values() - target) ** 2).sum().backward()  # fused: the update runs in backward
        opt.zero_grad()
        ((table(ids.unsqueeze(1)).squeeze(1) - target) ** 2).sum().backward()
        opt.step()
    torch.testing.assert_close(fused.state_dict()["embedding_bags.t0.weight"], table.weight.detach(),
                               rtol=1e-5, atol=1e-6)


def test_lazy_sparse_adam_equals_torch_sparse_adam_and_handles_dense_grads():
    torch.manual_seed(3)
    w0 = torch.randn(8, 3)
    a, b, c = (nn.Parameter(w0.clone()) for _ in range(3))
    oa, ob, oc = LazySparseAdam([a], lr=0.01), torch.optim.SparseAdam([b], lr=0.01), LazySparseAdam([c], lr=0.01)
    for step in range(3):
        g = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.randn(3, 3), (8, 3), check_invariants=False)
        a.grad, b.grad, c.grad = g, g.clone(), g.to_dense()
        oa.step(); ob.step(); oc.step()
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-7)
    # Weight decay: L2 on the touched rows only.
    p = nn.Parameter(w0.clone())
    o = LazySparseAdam([p], lr=0.01, weight_decay=0.5)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.zeros(1, 3), (8, 3), check_invariants=False)
    o.step()
    # Adam's first step moves each coordinate by lr * sign(grad) = lr * sign(0.5 * w).
    torch.testing.assert_close(p.detach()[2], w0[2] - 0.01 * torch.sign(w0[2]), rtol=0, atol=1e-6)
    assert torch.equal(p.detach()[[0, 1, 3]], w0[[0, 1, 3]])


# ---------------------------------------------------------------------------------- building
class Toy(nn.Module):
    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.table = FullTable([Feature("a", 30, 4), Feature("b", 20, 4)], sparse=sparse)
        self.head = nn.Linear(8, 1)

    def embedding_tables(self):
        return [self.table]

    def dense_parameters(self):
        return list(self.head.parameters())

    def forward(self, dense, sparse):
        return self.head(self.table(sparse).flatten(1)).squeeze(1)


def toy_data(n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, 30, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)], 1)
    ta, tb = torch.randn(30, generator=g) * 2, torch.randn(20, generator=g) * 2
    y = (torch.rand(n, generator=g) < torch.sigmoid(ta[ids[:, 0]] + tb[ids[:, 1]])).float()
    return ids, y


def train_toy(opt_name: str, steps: int = 60):
    torch.manual_seed(0)
    model = Toy(**table_kwargs_for(opt_name))
    opt = build_optimizers(model, {"lr": 0.05, "embedding_optimizer": opt_name, "embedding_lr": 0.05})
    ids, y = toy_data()
    losses = []
    for s in range(steps):
        sl = slice((s * 128) % 1024, (s * 128) % 1024 + 128)
        loss = F.binary_cross_entropy_with_logits(model(None, ids[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        if s == 0:
            assert model.table.weight.grad.is_sparse == (opt_name != "adam")
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        full = float(F.binary_cross_entropy_with_logits(model(None, ids), y))
    return losses, full, model, opt


@pytest.mark.parametrize("opt_name", ["sparse_adam", "rowwise_adagrad", "adagrad", "adam"])
def test_each_embedding_optimizer_trains(opt_name):
    losses, full, _, opt = train_toy(opt_name)
    assert full < losses[0] - 0.1, (opt_name, losses[0], full)
    assert set(opt.names) == {"dense", "embedding"}


def test_build_optimizers_split_and_checks():
    model = Toy(sparse=True)
    opt = build_optimizers(model, {"embedding_optimizer": "rowwise_adagrad", "lr": 1e-3})
    assert isinstance(opt["embedding"], RowWiseAdagrad) and isinstance(opt["dense"], torch.optim.Adam)
    assert opt["embedding"].param_groups[0]["params"][0] is model.table.weight
    assert opt["embedding"].param_groups[0]["lr"] == 0.01  # Adagrad-family default
    assert opt["dense"].param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="sparse=True"):
        build_optimizers(model, {"embedding_optimizer": "adam"})
    with pytest.raises(ValueError, match="unknown embedding_optimizer"):
        build_optimizers(model, {"embedding_optimizer": "sgd"})
    with pytest.warns(UserWarning, match="sparse=False"):
        build_optimizers(Toy(sparse=False), {"embedding_optimizer": "sparse_adam"})
    assert table_kwargs_for("adam") == {"sparse": False}
    assert table_kwargs_for("rowwise_adagrad") == {"sparse": True}
    t = table_factory_for("sparse_adam")([Feature("a", 5, 4)])
    assert isinstance(t, FullTable) and t.sparse


def test_optimizer_set_state_dict_round_trip_and_memory_report():
    _, _, model, opt = train_toy("rowwise_adagrad", steps=3)
    sd = opt.state_dict()
    torch.manual_seed(0)
    opt2 = build_optimizers(model, {"lr": 0.05, "embedding_optimizer": "rowwise_adagrad"})
    opt2.load_state_dict(sd)
    assert torch.equal(opt2["embedding"].state[model.table.weight]["sum"],
                       opt["embedding"].state[model.table.weight]["sum"])
    rep = memory_report(model, opt)
    rows = 50
    head = sum(p.numel() for p in model.head.parameters())
    # Row-wise state: one fp32 per row (+ a step counter), vs Adam's two moments for the head.
    assert rep.optimizer_bytes == rows * 4 + 4 + 2 * head * 4 + 2 * 4
    with pytest.raises(ValueError, match="members"):
        opt2.load_state_dict({"dense": sd["dense"]})


def test_bench_train_smoke(capsys, tmp_path):
    """Every bench variant (incl. torchrec EBC and fbgemm FusedEBC on CPU) runs; CLI entry works."""
    from slimembed.ctr.bench import REFERENCE, VARIANTS, bench_train, main

    rows = bench_train(batch_size=64, num_fields=3, dim=8, hidden=(16,), num_dense=2, scale=1e-4,
                       steps=2, warmup=1, rounds=2)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert all(r["error"] is None and r["samples_per_s"] > 0 for r in rows), [r["error"] for r in rows]
    assert next(r for r in rows if r["variant"] == REFERENCE)["ratio_to_fused"] == 1.0
    assert "samples/s" in capsys.readouterr().out
    out = tmp_path / "b.json"
    assert main(["--batch-size", "32", "--fields", "2", "--dim", "4", "--hidden", "8", "--scale", "1e-5",
                 "--steps", "1", "--warmup", "0", "--rounds", "1", "--variants", "full/adam,nn.Embedding/adam",
                 "--json", str(out)]) == 0
    assert len(__import__("json").loads(out.read_text())["results"]) == 2
