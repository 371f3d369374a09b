"""dpq and mgqe: outputs are codebook rows selected by the codes; mgqe's 256-way codes go to hot ids."""

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import slimembed.tables.dpq  # noqa: F401  (registers "dpq", "mgqe", "dpq_codes")
from slimembed.tables import Feature, make_table, make_table_from_config, memory_report
from slimembed.tables.dpq import DPQCodesTable, DPQTable, MGQETable, part_columns

import sys, pathlib  # noqa: E401  (the shared toy beside this file)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fit import fit_losses

FEATS = [Feature("a", 300, 8), Feature("b", 40, 8), Feature("c", 500, 8)]
COUNTS = {f.name: np.random.default_rng(i).zipf(1.3, f.num_embeddings - 1).astype(np.int64)
          for i, f in enumerate(FEATS)}


def dense_ids(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (b,), generator=g) for f in FEATS], 1)


def reference_rows(t, ids):
    """By hand: column c of id x in field f is codebook[f, codes[off_f + x, part(c)], c]."""
    _, part_of_col = part_columns(8, t.num_parts)
    out = torch.empty(*ids.shape, 8)
    for b in range(ids.shape[0]):
        for f in range(ids.shape[1]):
            row = int(t.row_offsets[f]) + int(ids[b, f])
            for c in range(8):
                out[b, f, c] = t.codebook[f, int(t.codes[row, part_of_col[c]]), c]
    return out


def test_part_columns_split_evenly():
    assert part_columns(8, 3) == ([0, 1, 8, 2, 3, 4, 5, 6, 7], [0, 0, 1, 1, 1, 2, 2, 2])
    assert part_columns(8, 8)[1] == list(range(8))


@pytest.mark.parametrize("mode,parts", [("vq", 4), ("sx", 3)])
def test_output_is_codebook_rows_selected_by_codes(mode, parts):
    torch.manual_seed(0)
    t = DPQTable(FEATS, num_parts=parts, num_choices=16, mode=mode)
    ids = dense_ids()
    train_out = t(ids)  # training forward: assigns and stores the codes of these ids
    ref = reference_rows(t, ids)
    assert torch.allclose(train_out, ref, atol=1e-6)
    t.eval()
    assert torch.equal(t(ids), ref)
    assert torch.equal(t.export()(ids), ref)
    assert t.codes.dtype == torch.uint8


def test_vq_codes_are_nearest_codebook_entries():
    torch.manual_seed(1)
    t = DPQTable(FEATS, num_parts=2, num_choices=8)
    rows = torch.arange(t.codes.shape[0])
    fields = torch.repeat_interleave(torch.arange(3), torch.tensor([300, 40, 500]))
    for r in rows[::37].tolist():
        f = int(fields[r])
        for p, cols in enumerate((slice(0, 4), slice(4, 8))):
            d = ((t.query[r, cols] - t.codebook[f, :, cols]) ** 2).sum(-1)
            assert int(t.codes[r, p]) == int(d.argmin())


def test_memory_split_and_budget():
    t = DPQTable(FEATS, num_parts=4, num_choices=32, mode="sx")
    n = 840
    assert t.inference_bytes() == memory_report(t.export()).total_bytes == n * 4 + 3 * 32 * 8 * 4 + 48
    assert t.training_only_bytes() == n * 8 * 4 + 3 * 32 * 8 * 4 + 2 * 32 * 4 + 8
    assert memory_report(t).total_bytes == t.inference_bytes() + t.training_only_bytes()
    full = n * 8 * 4
    for ratio in (3, 5):
        b = full // ratio
        t = make_table("dpq", FEATS, budget_bytes=b)
        sol = t.budget_solution
        assert t.inference_bytes() == sol["bytes"] <= b
        assert sol["next_bytes"] is None or sol["next_bytes"] > b
    assert make_table("dpq", FEATS, budget_bytes=full // 3).num_parts == 6
    with pytest.raises(ValueError, match="needs at least"):
        make_table("dpq", FEATS, budget_bytes=2000)


def test_dense_kjt_empty_and_round_trips():
    t = DPQTable(FEATS, num_parts=4, num_choices=16, mode="sx")
    t(dense_ids(128, seed=3))  # move some codes
    t.eval()
    ids = dense_ids(16)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in FEATS], values=ids.t().reshape(-1), lengths=torch.ones(48, dtype=torch.long))
    assert torch.allclose(t(kjt).values(), t(ids).reshape(16, -1), atol=1e-6)
    assert t(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    t2 = make_table_from_config(t.config())
    assert t2.config() == t.config()
    t2.load_state_dict(t.state_dict())
    t2.eval()
    assert torch.equal(t2(ids), t(ids))
    e = t.export()
    e2 = make_table_from_config(e.config())
    e2.load_state_dict(e.state_dict())
    assert torch.equal(e2(ids), t(ids)) and not DPQCodesTable.trainable
    with pytest.raises(ValueError, match="'b' got id 40"):
        t(torch.tensor([[0, 40, 0]]))


@pytest.mark.parametrize("mode", ["vq", "sx"])
def test_adam_reduces_toy_regression_loss_and_trains_codebook(mode):
    torch.manual_seed(0)
    t = DPQTable(FEATS, num_parts=4, num_choices=16, mode=mode)
    cb0 = t.codebook.detach().clone()
    losses = fit_losses(t, dense_ids(256), steps=40, lr=0.02)
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(cb0, t.codebook)


def test_mgqe_gives_256_way_codes_exactly_to_top_ids():
    torch.manual_seed(0)
    t = MGQETable(FEATS, num_parts=4, counts=COUNTS)
    assert t.hot_list == [30, 4, 50]
    rows = torch.arange(t.codes.shape[0])
    hot_rows = set()
    for f, feat in enumerate(FEATS):
        top = np.argsort(-COUNTS[feat.name], kind="stable")[: int(0.1 * feat.num_embeddings)] + 1
        hot_rows |= set((top + int(t.row_offsets[f])).tolist())
    is_hot = torch.tensor([r in hot_rows for r in rows.tolist()])
    assert torch.equal(t.code_limit(rows), torch.where(is_hot, 256, 64))
    t(torch.stack([torch.arange(300) % f.num_embeddings for f in FEATS], 1))  # training forward
    assert int(t.codes[~is_hot].max()) < 64
    assert int(t.codes[is_hot].max()) >= 64  # hot ids do use the upper 192 entries
    t.eval()
    ids = dense_ids()
    assert torch.equal(t(ids), reference_rows(t, ids))


def test_mgqe_budget_config_and_state_dict():
    big = [Feature("a", 20000, 8), Feature("b", 5000, 8)]
    counts = {f.name: np.random.default_rng(7).zipf(1.2, f.num_embeddings - 1) for f in big}
    full = 25000 * 8 * 4
    t = make_table("mgqe", big, budget_bytes=full // 4, counts=counts)
    sol = t.budget_solution
    assert t.inference_bytes() == sol["bytes"] <= full // 4 < sol["next_bytes"]
    assert t.num_parts == 7
    assert t.training_only_bytes() == 25000 * 8 * 4 + 2500 * 8
    t2 = make_table_from_config(t.config())
    t2.load_state_dict(t.state_dict())
    assert torch.equal(t2.hot_keys, t.hot_keys)
    t.eval(), t2.eval()
    ids = torch.randint(0, 5000, (32, 2))
    assert torch.equal(t(ids), t2(ids))


def test_mgqe_takes_train_counts_pairs_and_a_budget_from_them():
    from slimembed.tables.dpq import MGQETable

    assert MGQETable.needs_counts and "num_hot" in MGQETable.solved_knobs
    pairs = {n: (np.arange(1, len(c) + 1), c) for n, c in COUNTS.items()}
    a = MGQETable(FEATS, num_parts=2, counts=COUNTS)
    b = MGQETable(FEATS, num_parts=2, counts=pairs)
    assert torch.equal(a.hot_keys, b.hot_keys) and a.hot_keys.numel() > 0
    t = make_table("mgqe", FEATS, compression=4, counts=pairs, num_hot=5,  # num_hot: solved, ignored
                   num_choices=32, low_choices=8)
    assert t.budgeted_bytes() == t.inference_bytes() == t.budget_solution["bytes"] <= t.full_bytes() // 4
    assert t.num_parts >= 2
    assert t.hot_keys.numel() == b.hot_keys.numel()
