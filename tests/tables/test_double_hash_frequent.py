"""double_hash's frequency-aware variant reachable from a config: ``frequent: K`` + training counts."""

import numpy as np
import pytest
import torch

from slimembed.tables import Feature, make_table, memory_report


def counts():
    ids = np.arange(100)
    return {"a": (ids, 1000 - ids * 7), "b": (ids, (ids % 10) + 1)}  # a: id 0 most frequent; b: ids ending in 9


def test_top_k_ids_own_rows_and_the_id_map_is_memory():
    feats = [Feature("a", 100, 8), Feature("b", 100, 8)]
    t = make_table("double_hash", feats, rows=10, frequent=3, counts=counts())
    assert t.frequent_ids_dict() == {"a": [0, 1, 2], "b": [9, 19, 29]}
    plain = make_table("double_hash", feats, rows=10)
    assert memory_report(t).total_bytes > memory_report(plain).total_bytes + 6 * 8 * 4  # rows + id map
    # a frequent id reads exactly its own row: changing it changes only that id's embedding
    ids = torch.tensor([[0, 9], [5, 5]])
    before = t(ids).detach().clone()
    hit, pos = t.frequent_slot(torch.tensor([0]), torch.tensor([0]))
    assert bool(hit[0])
    # config records the ids, so a rebuild needs no counts
    from slimembed.tables import make_table_from_config

    t2 = make_table_from_config(t.config())
    t2.load_state_dict(t.state_dict())
    assert torch.equal(t2(ids), before)


def test_budget_includes_the_frequent_rows():
    feats = [Feature("a", 100, 8), Feature("b", 100, 8)]
    t = make_table("double_hash", feats, compression=4, frequent=5, counts=counts())
    assert memory_report(t).total_bytes <= 100 * 2 * 8 * 4 // 4
    assert sum(t.frequent_counts) == 10


def test_frequent_needs_counts_and_not_both():
    feats = [Feature("a", 100, 8)]
    with pytest.raises(ValueError, match="needs the training counts"):
        make_table("double_hash", feats, rows=10, frequent=3)
    with pytest.raises(ValueError, match="not both"):
        make_table("double_hash", feats, rows=10, frequent=3, counts=counts(), frequent_ids={"a": [1]})
