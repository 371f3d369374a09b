"""adaptive (DeepRec Adaptive Embedding / AdaptEmb): exclusive row of frequent ids + shared row."""

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import slimembed.tables.adaptive  # noqa: F401  (registers "adaptive")
from slimembed.tables import Feature, make_table, make_table_from_config, memory_report
from slimembed.tables.adaptive import AdaptiveTable, top_ids_from_counts

import sys, pathlib  # noqa: E401  (the shared toy beside this file)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fit import fit_losses

FEATS = [Feature("a", 200, 8), Feature("b", 50, 8), Feature("c", 1000, 8)]


def zipf_counts(n, seed):
    g = np.random.default_rng(seed)
    return (1e5 / np.arange(1, n) ** 1.1 * g.uniform(0.5, 1.5, n - 1)).astype(np.int64)


COUNTS = {f.name: zipf_counts(f.num_embeddings, i) for i, f in enumerate(FEATS)}


def dense_ids(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (b,), generator=g) for f in FEATS], 1)


def test_embedding_is_exclusive_row_plus_shared_row():
    t = AdaptiveTable(FEATS, top_percent=0.1, counts=COUNTS, shared_rows=[16, 8, 32])
    ids = dense_ids()
    ids[:5, 2] = torch.from_numpy(np.argsort(-COUNTS["c"], kind="stable")[:5] + 1)  # hottest c ids
    out = t(ids)
    assert out.shape == (64, 3, 8)
    for f, feat in enumerate(FEATS):
        top = set((np.argsort(-COUNTS[feat.name], kind="stable")[: int(0.1 * feat.num_embeddings)] + 1).tolist())
        hot_sorted = sorted(top)
        base = sum(len(set((np.argsort(-COUNTS[g.name], kind="stable")[: int(0.1 * g.num_embeddings)] + 1).tolist()))
                   for g in FEATS[:f])
        shared_off = sum(t.shared_list[:f])
        for b in range(ids.shape[0]):
            x = int(ids[b, f])
            row = int(t.hashes(torch.tensor([x]), t.shared_list[f], fields=torch.tensor([f]))[0])
            ref = t.shared_weight[shared_off + row]
            if x in top:
                ref = ref + t.hot_weight[base + hot_sorted.index(x)]
            assert torch.allclose(out[b, f], ref, atol=1e-6), (feat.name, x)
    assert t.is_hot(ids[:5, 2], torch.full((5,), 2)).all()
    assert t.hot_list == [20, 5, 100]


def test_frequency_sources_agree_and_oov_is_never_hot():
    k = 20
    ranked = {n: top_ids_from_counts(c, 10**9) for n, c in COUNTS.items()}
    t1 = AdaptiveTable(FEATS, top_percent=0.1, counts=COUNTS, shared_rows=4)
    t2 = AdaptiveTable(FEATS, top_percent=0.1, frequent_ids=ranked, shared_rows=4)
    assert torch.equal(t1.hot_keys, t2.hot_keys)
    assert not t1.is_hot(torch.zeros(3, dtype=torch.long), torch.arange(3)).any()
    assert int(top_ids_from_counts(np.array([5, 9, 9, 1]), 2)[0]) == 2  # tie -> lower id, ids = 1 + pos
    with pytest.raises(ValueError, match="exactly one frequency source"):
        AdaptiveTable(FEATS)
    with pytest.raises(ValueError, match="'b'"):
        AdaptiveTable(FEATS, counts={**COUNTS, "b": np.ones(60)})
    assert k == 20


def test_dense_and_kjt_agree_and_empty_batches():
    t = AdaptiveTable(FEATS, top_percent=0.2, counts=COUNTS, shared_rows=10)
    ids = dense_ids(16)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in FEATS], values=ids.t().reshape(-1), lengths=torch.ones(3 * 16, dtype=torch.long))
    assert torch.allclose(t(kjt).values(), t(ids).reshape(16, -1), atol=1e-6)
    assert t(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    empty = KeyedJaggedTensor.from_lengths_sync(keys=[f.name for f in FEATS], values=torch.zeros(0, dtype=torch.long),
                                                lengths=torch.zeros(3 * 4, dtype=torch.long))
    assert torch.equal(t(empty).values(), torch.zeros(4, 24))
    with pytest.raises(ValueError, match="'b' got id 50"):
        t(torch.tensor([[0, 50, 0]]))


def test_budget_lands_under_within_one_step():
    full = sum(f.num_embeddings * 8 * 4 for f in FEATS)
    for ratio in (4, 10):
        t = make_table("adaptive", FEATS, compression=ratio, counts=COUNTS)
        sol = t.budget_solution
        got = memory_report(t).total_bytes
        assert got == sol["bytes"] <= full // ratio
        assert sol["next_bytes"] is None or sol["next_bytes"] > full // ratio
        assert sum(t.hot_list) > 0
    with pytest.raises(ValueError, match="needs at least"):
        make_table("adaptive", FEATS, budget_bytes=200, counts=COUNTS)


def test_config_and_state_dict_round_trip():
    t = AdaptiveTable(FEATS, top_percent=0.15, counts=COUNTS, shared_rows=[3, 4, 5], seed=3)
    cfg = t.config()
    t2 = make_table_from_config(cfg)
    assert t2.config() == cfg
    t2.load_state_dict(t.state_dict())
    ids = dense_ids()
    assert torch.equal(t(ids), t2(ids))
    assert memory_report(t).total_bytes == memory_report(t2).total_bytes


def test_adam_reduces_toy_regression_loss():
    torch.manual_seed(0)
    t = AdaptiveTable(FEATS, top_percent=0.1, counts=COUNTS, shared_rows=8)
    losses = fit_losses(t, dense_ids(256), steps=30, lr=0.05)
    assert losses[-1] < 0.7 * losses[0]


def as_pairs(counts):
    """The ``train_counts`` form ``{field: (ids, counts)}`` of per-id arrays (id 0: the OOV id,
    seen often, unseen ids left out)."""
    out = {}
    for name, c in counts.items():
        seen = np.nonzero(c)[0]
        out[name] = (np.concatenate([[0], seen + 1]), np.concatenate([[10**9], c[seen]]))
    return out


def test_counts_as_id_count_pairs_pick_the_same_hot_ids_and_budget():
    assert AdaptiveTable.needs_counts and "num_hot" in AdaptiveTable.solved_knobs
    a = AdaptiveTable(FEATS, top_percent=0.1, counts=COUNTS, shared_rows=8)
    b = AdaptiveTable(FEATS, top_percent=0.1, counts=as_pairs(COUNTS), shared_rows=8)
    assert torch.equal(a.hot_keys, b.hot_keys) and a.hot_keys.numel() == 20 + 5 + 100  # floor(0.1 N_f); id 0 never hot
    ta = make_table("adaptive", FEATS, compression=10, counts=COUNTS)
    tb = make_table("adaptive", FEATS, compression=10, counts=as_pairs(COUNTS))
    assert ta.budget_solution == tb.budget_solution
    assert memory_report(tb).total_bytes == tb.budget_solution["bytes"]


def test_pairs_with_ids_outside_the_vocabulary_name_the_feature():
    with pytest.raises(ValueError, match="'b'"):
        AdaptiveTable(FEATS, top_percent=0.5, counts={"b": (np.array([3, 70]), np.array([1, 9]))})


def test_meta_build_with_counts_matches_the_real_bytes():
    with torch.device("meta"):
        m = make_table("adaptive", FEATS, compression=10, counts=COUNTS)
    t = make_table("adaptive", FEATS, compression=10, counts=COUNTS)
    assert m.hot_keys.is_meta and memory_report(m).total_bytes == memory_report(t).total_bytes
