"""cafe: HotSketch top-k recall on a planted Zipf stream; promoted ids switch rows exactly then."""

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import slimembed.tables.cafe  # noqa: F401  (registers "cafe")
from slimembed.tables import Feature, make_table, make_table_from_config, memory_report
from slimembed.tables.cafe import CafeTable

import sys, pathlib  # noqa: E401  (the shared toy beside this file)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fit import fit_losses

FEATS = [Feature("a", 2**63, 8), Feature("b", 2**63, 8)]


def test_hotsketch_recalls_true_top_k_of_a_zipf_stream():
    g = np.random.default_rng(0)
    n_distinct, k = 50000, 300
    space = torch.from_numpy(g.integers(0, 2**62, n_distinct))  # raw 64-bit ids
    ranks = g.zipf(1.1, 200000)
    stream = space[torch.from_numpy(ranks[ranks <= n_distinct] - 1)]
    # sketch memory: 8 slots (12 bytes each) per tracked top-k id
    t = CafeTable([FEATS[0]], num_buckets=2 * k, cold_rows=4, threshold=1)
    for s in range(0, len(stream), 4096):
        x = stream[s:s + 4096]
        t.insert(x, torch.zeros_like(x))
    u, c = torch.unique(stream, return_counts=True)
    true_top = u[torch.argsort(c, descending=True)[:k]]
    true_keys = set(t.keys_of(true_top, torch.zeros_like(true_top)).tolist())
    reported = set(t.sketch_keys[torch.argsort(t.sketch_scores, descending=True)[:k]].tolist())
    assert len(true_keys & reported) / k >= 0.9


def test_promoted_id_switches_rows_exactly_when_promoted():
    t = CafeTable(FEATS, num_buckets=16, cold_rows=32, threshold=3)
    x = torch.tensor([[2**50 + 7, 11]])
    cold_row = t.cold_index(x[0], torch.arange(2))
    for step in range(1, 6):
        before = t.cold_weight.detach().clone()
        out = t(x)
        hot, slot = t.hot_rows(x[0], torch.arange(2))
        assert bool(hot[0]) == (step >= 3)  # score reaches the threshold at the third batch
        if step < 3:
            assert torch.equal(out[0, 0], t.cold_weight[cold_row[0]]) and t.last_promoted.numel() == 0
        else:
            assert torch.equal(out[0, 0], t.hot_weight[slot[0]])
        if step == 3:  # promotion copies the cold row: continuous at the switch
            assert t.last_promoted.tolist() == sorted(slot.tolist())
            assert torch.equal(t.hot_weight[slot[0]], before[cold_row[0]])
        if step > 3:
            assert t.last_promoted.numel() == 0
    with torch.no_grad():
        t.hot_weight[slot[0]] += 1.0
    assert not torch.equal(t(x)[0, 0], t.cold_weight[cold_row[0]])


def test_eviction_demotes_to_the_cold_row():
    t = CafeTable([FEATS[0]], num_buckets=1, cold_rows=8, slots=1, threshold=2)
    a, b = torch.tensor([[5], [5]]), torch.tensor([[9]] * 4)
    t(a)
    assert bool(t.hot_rows(torch.tensor([5]), torch.tensor([0]))[0][0])
    t(b)  # one slot: 9 replaces 5 (Space-Saving: score 2 + 4)
    assert not bool(t.hot_rows(torch.tensor([5]), torch.tensor([0]))[0][0])
    t.eval()
    assert torch.equal(t(torch.tensor([[5]]))[0, 0], t.cold_weight[t.cold_index(torch.tensor([5]), torch.tensor([0]))[0]])


def test_budget_includes_sketch_and_round_trips():
    for budget in (10_000, 100_000):
        t = make_table("cafe", FEATS, budget_bytes=budget)
        sol = t.budget_solution
        assert memory_report(t).total_bytes == sol["bytes"] <= budget < sol["next_bytes"]
        assert t.cold_rows == int(0.3 * budget) // 32
    with pytest.raises(ValueError, match="needs at least"):
        make_table("cafe", FEATS, budget_bytes=100)
    t(torch.randint(0, 2**62, (64, 2)))
    t2 = make_table_from_config(t.config())
    t2.load_state_dict(t.state_dict())
    t.eval(), t2.eval()
    ids = torch.randint(0, 2**62, (16, 2))
    assert torch.equal(t(ids), t2(ids))


def test_dense_kjt_and_empty_and_adam():
    torch.manual_seed(0)
    t = CafeTable(FEATS, num_buckets=8, cold_rows=16, threshold=2)
    ids = torch.randint(0, 40, (16, 2))
    t.eval()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(32, dtype=torch.long))
    assert torch.allclose(t(kjt).values(), t(ids).reshape(16, -1), atol=1e-6)
    assert t(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2, 8)
    with pytest.raises(ValueError, match="'b' got id -1"):
        t(torch.tensor([[0, -1]]))
    t.train()
    losses = fit_losses(t, ids, steps=30, lr=0.05)
    assert losses[-1] < 0.5 * losses[0]
