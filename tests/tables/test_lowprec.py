"""Low-precision training tables: int8 / int16 (one global scale) and ALPT (learned per-row step)."""

import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import slimembed.tables.alpt  # noqa: F401  (registers "alpt")
import slimembed.tables.int8  # noqa: F401  (registers "int8", "int16")
from slimembed.tables import Feature, TableEmbeddingBag, make_table, make_table_from_config, memory_report
from slimembed.tables.alpt import ALPTTable, lsq_step_gradient
from slimembed.tables.int8 import dequantize, int_range, quantize, stochastic_round

FEATS = [Feature("a", 30, 8), Feature("b", 12, 8), Feature("c", 7, 8, "mean")]
METHODS = [("int8", {}), ("int16", {}), ("alpt", {"digit": 8}), ("alpt", {})]


def ids(b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (b,), generator=g) for f in FEATS], 1)


@pytest.mark.parametrize("method", ["int8", "int16"])
def test_int_lookup_equals_dequantize_of_quantize(method):
    torch.manual_seed(0)
    t = make_table(method, FEATS, scale=0.01)
    digit = 8 if method == "int8" else 16
    assert t.qweight.dtype == (torch.int8 if digit == 8 else torch.int16)
    w = torch.randn(t.weight.shape) * 0.6
    q = quantize(w, 0.01, digit)
    with torch.no_grad():
        t.qweight.copy_(q)
        t.weight.copy_(dequantize(q, 0.01))
    x = ids()
    rows = torch.stack([x[:, 0], x[:, 1] + 30, x[:, 2] + 42], 1)
    ref = dequantize(q, 0.01)[rows]
    assert torch.equal(t(x).detach(), ref)
    with torch.no_grad():
        assert torch.equal(t(x), ref)
    # int8 at 0.01 clips at 1.27: the quantize contract holds at the range ends too
    lo, hi = int_range(digit)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    if digit == 8:
        assert int(q.max()) == hi and int(q.min()) == lo  # 0.6-sigma values (392 of them) reach ±1.28


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([0.25, -1.7, 3.5, 2.0, -0.01])
    draws = stochastic_round(x.expand(200_000, 5), generator=g)
    assert set(torch.unique(draws - torch.floor(x)).tolist()) <= {0.0, 1.0}
    assert torch.allclose(draws.mean(0), x, atol=6e-3)  # sd of the mean <= 0.5/sqrt(2e5) ~ 1.1e-3
    assert torch.equal(draws[:, 3], torch.full((200_000,), 2.0))  # integers never move
    # and through quantize/dequantize with a scale
    w = torch.full((100_000,), 0.01234)
    assert abs(float(dequantize(quantize(w, 0.01, 16, generator=g), 0.01).mean()) - 0.01234) < 1e-4


@pytest.mark.parametrize("method,kw", METHODS)
def test_post_step_keeps_working_copy_equal_to_stored_rows(method, kw):
    torch.manual_seed(0)
    t = make_table(method, FEATS, **kw)
    opt = torch.optim.Adam(t.parameters(), lr=3e-3)
    x = ids()
    q0 = t.qweight.clone()
    t(x).sum().backward()
    opt.step()
    assert not torch.equal(t.weight.detach(), t.dequantized_weight())  # the update is not yet stored
    t.post_step()
    assert torch.equal(t.weight.detach(), t.dequantized_weight())
    assert not torch.equal(t.qweight, q0)
    # rows nobody touched keep their codes (Adam moves only rows with gradient on step 1)
    used = torch.zeros(t.qweight.shape[0], dtype=torch.bool)
    used[torch.cat([x[:, 0], x[:, 1] + 30, x[:, 2] + 42])] = True
    assert torch.equal(t.qweight[~used], q0[~used])


def test_alpt_step_gradient_matches_lsq_formula_on_three_rows():
    t = ALPTTable([Feature("a", 3, 4)], digit=8, scale_lr=0.0)
    w = torch.tensor([[0.013, -0.027, 0.5, 2.0],     # 2.0 / 0.01 = 200 > 127: clipped high
                      [0.0049, 0.0151, -0.0, 0.031],
                      [-3.0, 0.0333, 0.0666, -0.0999]])  # -300 < -128: clipped low
    s = torch.tensor([0.01, 0.01, 0.02])
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.2, 4.0, 1.0], [2.0, 1.0, -1.0, 0.25]])
    with torch.no_grad():
        t.weight.copy_(w)
        t.scale.copy_(s)
    rows = torch.arange(3)
    got = t.scale_gradient(rows, g, batch_size=5)
    # LSQ by autograd: Q(s) = s * clamp(round_ste(w / s), qmin, qmax), round with a straight-through
    # gradient; the clamp's gradient is 0 outside, so clipped values give qmin / qmax.
    s_var = s.clone().requires_grad_(True)
    v = w / s_var.unsqueeze(1)
    r = v + (torch.floor(v + 0.5) - v).detach()
    q = (s_var.unsqueeze(1) * r.clamp(-128, 127)).mul(g).sum()
    q.backward()
    expect = s_var.grad / math.sqrt(5 * 4 * 127)
    assert torch.allclose(got, expect, rtol=1e-5, atol=1e-7)
    # and by hand for one clipped and one inside value
    d = lsq_step_gradient(w, s.unsqueeze(1), 8)
    assert float(d[0, 3]) == 127.0 and float(d[2, 0]) == -128.0
    assert abs(float(d[0, 0]) - (1.0 - 1.3)) < 1e-5


def test_alpt_post_step_moves_step_sizes_of_batch_rows_only():
    torch.manual_seed(0)
    t = make_table("alpt", FEATS, digit=8, scale_lr=1e-3)
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    x = ids(8)
    t.train()
    (t(x) - 0.2).pow(2).sum().backward()
    assert t.last_batch_size == 8
    opt.step()
    rows, grads = t._touched()
    expect = t.scale_gradient(rows, grads)
    t.post_step()
    moved = (t.scale != 0.01).nonzero().reshape(-1)
    assert set(moved.tolist()) <= set(rows.tolist()) and moved.numel() > 0
    # first lazy-Adam step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    assert torch.allclose(t.scale[rows], 0.01 - 1e-3 * expect / (expect.abs() + 1e-8), atol=1e-7)
    assert torch.equal(t.weight.detach(), t.dequantized_weight())


@pytest.mark.parametrize("method,kw", METHODS)
def test_dense_and_kjt_agree_and_b0(method, kw):
    t = make_table(method, FEATS, **kw)
    x = ids(4)
    dense = t(x)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=x.t().reshape(-1),
                                              lengths=torch.ones(12, dtype=torch.long))
    kt = t(kjt)
    assert torch.allclose(kt.values(), dense.reshape(4, -1), atol=1e-6)
    assert t(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    empty = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=torch.zeros(0, dtype=torch.long),
                                                lengths=torch.zeros(6, dtype=torch.long))
    assert torch.equal(t(empty).values(), torch.zeros(2, 24))


@pytest.mark.parametrize("method,kw", METHODS)
def test_embedding_bag_drop_in(method, kw, embedding_bag_semantics):
    def make_bag(**bkw):
        return TableEmbeddingBag(make_table(method, [Feature("x", 20, 4)], **kw), **bkw)

    embedding_bag_semantics(make_bag, lambda bag: bag.table.dequantized_weight(), 20)


@pytest.mark.parametrize("method,kw", METHODS)
def test_config_and_state_dict_round_trip(method, kw):
    torch.manual_seed(0)
    t = make_table(method, FEATS, sparse=True, **kw)
    opt = torch.optim.SGD(t.parameters(), lr=0.1)
    t(ids()).sum().backward()
    opt.step()
    t.post_step()
    t2 = make_table_from_config(t.config())
    assert t2.config() == t.config()
    t2.load_state_dict(t.state_dict())
    x = ids(9, seed=3)
    assert torch.equal(t2(x), t(x))
    for k, v in t.state_dict().items():
        assert torch.equal(v, t2.state_dict()[k]), k


@pytest.mark.parametrize("method,per_row,cases,too_far", [
    ("int8", 0, [(2, 16), (4, 8), (3, 8)], 10),
    ("int16", 0, [(2, 16), (4, 8), (3, 8)], 10),
    # 2 bytes per value + a 4-byte step per row exceed half the fp32 table; int8 reaches 3.2x
    ("alpt", 4, [(2, 8), (3, 8)], 4),
])
def test_budget_fixes_bit_width_and_lands_under(method, per_row, cases, too_far):
    feats = [Feature("a", 1000, 16), Feature("b", 300, 16)]
    full = 1300 * 16 * 4
    for ratio, digit in cases:
        t = make_table(method, feats, compression=ratio)
        assert t.digit == digit, (method, ratio)
        need = 1300 * 16 * digit // 8 + per_row * 1300
        assert t.inference_bytes() == need <= full // ratio
        nxt = t.budget_solution["next_bytes"]
        assert nxt is None or nxt > full // ratio  # one knob step more does not fit
        rep = memory_report(t)
        assert rep.total_bytes - t.training_only_bytes() - 8 * 2 == t.inference_bytes()  # + id limits
    with pytest.raises(ValueError, match=f"method '{method}' needs at least"):
        make_table(method, feats, compression=too_far)


@pytest.mark.parametrize("method,kw", METHODS)
def test_adam_reduces_toy_regression_loss(method, kw):
    torch.manual_seed(0)
    t = make_table(method, FEATS, **kw)
    x = ids(64)
    goal = torch.randn(49, 8) * 0.2  # one target row per (field, id): reachable
    target = goal[torch.stack([x[:, 0], x[:, 1] + 30, x[:, 2] + 42], 1)]
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (t(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t.post_step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="digit must be 8 or 16, got 4"):
        make_table("int8", FEATS, digit=4)
    with pytest.raises(ValueError, match="scale must be > 0"):
        make_table("int16", FEATS, scale=0.0)
    with pytest.raises(ValueError, match="scale_optimizer"):
        make_table("alpt", FEATS, scale_optimizer="lamb")
    with pytest.raises(ValueError, match="'b' got id 12"):
        make_table("int8", FEATS)(torch.tensor([[0, 12, 0]]))


# ---------------------------------------------------------------------------------------------
# through the trainer: it calls post_step after every optimizer step
# ---------------------------------------------------------------------------------------------
def tiny_deepfm(method, **kw):
    from slimembed.ctr.models import make_model

    torch.manual_seed(0)
    return make_model("deepfm", FEATS, 2, hidden_units=[8],
                      table_factory=lambda fs: make_table(method, fs, **kw))


def tiny_batches(n_batches=2, b=32):
    from slimembed.datasets import Batch

    g = torch.Generator().manual_seed(1)
    return [Batch(torch.randn(b, 2, generator=g), ids(b, seed=i), (torch.rand(b, generator=g) < 0.5).float())
            for i in range(n_batches)]


@pytest.mark.parametrize("method,kw", [("int8", {}), ("alpt", {"digit": 8})])
def test_trainer_calls_post_step_so_codes_move_and_working_copy_matches(method, kw):
    from slimembed.ctr.trainer import TrainConfig, Trainer

    model = tiny_deepfm(method, **kw)
    tables = [m for m in model.modules() if isinstance(m, (ALPTTable, slimembed.tables.int8.LowPrecisionTable))]
    before = [t.qweight.clone() for t in tables]
    batches = tiny_batches()
    trainer = Trainer(model, batches, batches, TrainConfig(epochs=1, lr=0.05, progress=False))
    assert set(map(id, trainer.post_step_modules)) == set(map(id, tables))
    trainer.fit()
    for t, q in zip(tables, before):
        assert not torch.equal(t.qweight, q)  # the optimizer's updates reached the integer codes
        assert torch.equal(t.weight.detach(), t.dequantized_weight())  # no fp value survives a step


def test_alpt_step_sizes_learn_at_scale_lr_beside_the_main_optimizer():
    """The step sizes are buffers updated by the table's own lazy Adam at ``scale_lr`` inside
    post_step (their gradient needs the post-update rows): the main optimizer never holds them,
    and one trainer step moves them by at most ``scale_lr`` each (Adam's first step), in
    proportion to ``scale_lr``."""
    from slimembed.ctr.trainer import TrainConfig, Trainer

    def one_step(scale_lr):
        model = tiny_deepfm("alpt", digit=8, scale_lr=scale_lr)
        t = next(m for m in model.modules() if isinstance(m, ALPTTable) and m.weight.shape[1] == 8)
        before = t.scale.clone()
        trainer = Trainer(model, tiny_batches(1), None, TrainConfig(epochs=1, lr=0.05, progress=False))
        assert all(p is not t.scale for g in trainer.optimizer.param_groups for p in g["params"])
        trainer.train_step(tiny_batches(1)[0])
        return (t.scale - before).abs()

    small, large = one_step(2e-5), one_step(2e-4)
    assert float(small.max()) > 0 and bool((small <= 2e-5 * 1.001).all())
    assert float(large.sum()) == pytest.approx(10 * float(small.sum()), rel=1e-2)
