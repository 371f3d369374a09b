"""DeepLight: damped magnitude-pruning schedule, CSR export, budgets."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import slimembed.tables.deeplight  # noqa: F401  (registers "deeplight", "deeplight-csr")
from slimembed.tables import Feature, make_table, make_table_from_config, memory_report
from slimembed.tables.deeplight import DeepLightCSRTable, csr_bytes, export_deeplight

FEATS = [Feature("a", 40, 8), Feature("b", 25, 8), Feature("c", 9, 8, "mean")]
OFFS = torch.tensor([0, 40, 65])


def ids(b=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (b,), generator=g) for f in FEATS], 1)


def train(t, steps, lr=1e-2):
    opt = torch.optim.Adam(t.parameters(), lr=lr)
    x = ids(64)
    goal = torch.randn(74, 8) * 0.1
    target = goal[x + OFFS]
    losses = []
    for _ in range(steps):
        loss = (t(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t.post_step()
        losses.append(float(loss.detach()))
    return losses


def test_schedule_is_the_reference_damped_curve_and_ends_at_stop_deviation():
    t = make_table("deeplight", FEATS, density=0.2)
    target = t.target_sparsity
    assert abs(target - 0.8) < 1e-3
    assert t.stop_step == math.ceil(100 * math.log(1e-3) / math.log(0.99))  # 68,732 steps
    assert t.rate_at(0) == 0.0
    assert abs(t.rate_at(100) - target * (1 - 0.99)) < 1e-12
    # the damped curve itself is within stop_deviation of the target exactly from stop_step on
    curve = lambda n: target * (1 - 0.99 ** (n / 100))  # noqa: E731
    assert target - curve(t.stop_step) <= 1e-3 * target < target - curve(t.stop_step - 1)
    assert abs(t.rate_at(t.stop_step - 1) - curve(t.stop_step - 1)) < 1e-12
    assert t.rate_at(t.stop_step) == target


def test_pruning_reaches_target_sparsity_after_schedule():
    torch.manual_seed(0)
    t = make_table("deeplight", FEATS, density=0.3, end_step=120)
    assert t.stop_step == 120
    train(t, 60)
    mid = float((t.weight == 0).float().mean())
    # step 60 pruned to the damped curve's rate (1 - sqrt(1e-3) of the target), not yet the target
    assert abs(mid - t.rate_at(60)) <= 1 / 592 and mid < t.target_sparsity - 0.01
    train(t, 60)
    got = float((t.weight == 0).float().mean())
    assert abs(got - t.target_sparsity) <= 1e-3
    # prune_to keeps the largest magnitudes
    kept = t.weight.detach().abs()[t.weight != 0]
    assert float(kept.min()) > 0


def test_export_logits_equal_masked_table_and_bytes_are_csr():
    torch.manual_seed(0)
    t = make_table("deeplight", FEATS, kept=150, end_step=50)
    train(t, 50)
    e = export_deeplight(t)
    masked = t.masked_weight()
    assert int((masked != 0).sum()) == 150
    x = ids(40, seed=4)
    assert torch.equal(e(x), F.embedding(x + OFFS, masked))
    assert e.cols.dtype == torch.uint8 and e.row_ptr.dtype == torch.int32
    assert e.inference_bytes() == csr_bytes(74, 8, 150) == 150 * 5 + 75 * 4 == t.inference_bytes()
    assert memory_report(e).total_bytes == e.inference_bytes() + 8 * 3  # + the base's id limits
    assert not any(True for _ in e.parameters())
    # round trip: config builds the shape, state_dict fills it
    e2 = make_table_from_config(e.config())
    e2.load_state_dict(e.state_dict())
    assert torch.equal(e2(x), e(x))
    # KJT and B = 0 on the export
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=x[:4].t().reshape(-1),
                                              lengths=torch.ones(12, dtype=torch.long))
    assert torch.equal(e(kjt).values(), e(x[:4]).reshape(4, -1))
    assert e(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)


def test_csr_rows_of_a_hand_made_table():
    dense = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 3.0]])
    e = DeepLightCSRTable.from_dense([Feature("x", 3, 3)], dense)
    assert e.row_ptr.tolist() == [0, 1, 1, 3]
    assert e.cols.tolist() == [1, 0, 2] and e.values.tolist() == [1.5, -2.0, 3.0]
    assert torch.equal(e.dense_rows(torch.tensor([2, 1, 0, 2])), dense[[2, 1, 0, 2]])


@pytest.mark.parametrize("ratio", [2, 4, 10])
def test_budget_lands_under_within_one_value(ratio):
    feats = [Feature("a", 1000, 16), Feature("b", 300, 16)]
    budget = 1300 * 16 * 4 // ratio
    t = make_table("deeplight", feats, compression=ratio)
    assert t.inference_bytes() <= budget < csr_bytes(1300, 16, t.kept + 1)
    assert t.budget_solution["value"] == t.kept
    with pytest.raises(ValueError, match="method 'deeplight' needs at least"):
        make_table("deeplight", feats, budget_bytes=1000)  # the row offsets alone are 5204 bytes


def test_dense_kjt_b0_config_state_dict_and_adam():
    torch.manual_seed(0)
    t = make_table("deeplight", FEATS, density=0.5, end_step=20, sparse=True)
    x = ids(4)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=x.t().reshape(-1),
                                              lengths=torch.ones(12, dtype=torch.long))
    assert torch.allclose(t(kjt).values(), t(x).reshape(4, -1))
    assert t(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    t2 = make_table("deeplight", FEATS, density=0.5, end_step=20)
    losses = train(t2, 30)
    assert losses[-1] < 0.5 * losses[0]
    t3 = make_table_from_config(t2.config())
    t3.load_state_dict(t2.state_dict())
    assert torch.equal(t3(x), t2(x)) and int(t3.prune_step) == 30
    assert t2.training_only_bytes() == 74 * 8 * 4 + 8


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="kept must be in \\[0, 592\\]"):
        make_table("deeplight", FEATS, kept=10_000)
    with pytest.raises(ValueError, match="stop_deviation"):
        make_table("deeplight", FEATS, stop_deviation=0.0)
    with pytest.raises(ValueError, match="deeplight-csr"):
        make_table("deeplight-csr", FEATS, compression=4)


def test_trainer_calls_post_step_so_the_schedule_advances_and_prunes():
    from slimembed.ctr.models import make_model
    from slimembed.ctr.trainer import TrainConfig, Trainer
    from slimembed.datasets import Batch

    torch.manual_seed(0)
    model = make_model("deepfm", FEATS, 2, hidden_units=[8],
                       table_factory=lambda fs: make_table("deeplight", fs, density=0.5, prune_every=2, end_step=2))
    tables = [m for m in model.modules() if isinstance(m, slimembed.tables.deeplight.DeepLightTable)]
    assert len(tables) == 2  # the field table and the first-order table
    g = torch.Generator().manual_seed(1)
    batches = [Batch(torch.randn(32, 2, generator=g), ids(32, seed=i), (torch.rand(32, generator=g) < 0.5).float())
               for i in range(2)]
    Trainer(model, batches, batches, TrainConfig(epochs=1, lr=0.05, progress=False)).fit()
    for t in tables:
        assert int(t.prune_step) == 2
        zeros = int((t.weight == 0).sum())  # pruned at step 2 to the scheduled rate
        assert zeros == round(t.rate_at(2) * t.weight.numel()) > 0
