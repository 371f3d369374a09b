"""The model-level budget planner (tables/plan.py)."""

import pytest
import torch

from slimembed.ctr.models import make_model
from slimembed.tables import Feature, memory_report
from slimembed.tables.plan import TablePlan, full_bytes, method_floor, probe_requests

# 10 categorical fields, 8 of them with at most 200 values, 3,438 values in all (issue 13's shape)
SMALL = [3, 5, 10, 20, 50, 100, 150, 200, 1200, 1700]


def feats(dim=16):
    return [Feature(f"C{i}", n, dim) for i, n in enumerate(SMALL)]


def planned(model, method, **kw):
    plan = TablePlan(method, **kw)
    plan.solve(probe_requests(lambda fac: make_model(model, feats(), 13, table_factory=fac)))
    return make_model(model, feats(), 13, table_factory=plan), plan


def test_probe_finds_each_models_tables_by_role():
    roles = lambda m: [r for r, _ in probe_requests(lambda fac: make_model(m, feats(), 13, table_factory=fac))]
    assert roles("deepfm") == ["field", "first_order"]
    assert roles("dcn") == ["field"]
    assert roles("lr") == ["first_order"]


@pytest.mark.parametrize("method", ["robe", "multiplexed", "unified"])
def test_model_total_lands_under_the_budget(method):
    model, plan = planned("deepfm", method, compression=10)
    s = plan.summary()
    total = sum(memory_report(t).total_bytes for t in model.embedding_tables())
    assert total == s["table_bytes"] <= s["budget_bytes"] == full_bytes(feats()) * 17 // 16 // 10
    # both tables got a share, not a per-table 10x each
    assert [t["role"] for t in s["tables"]] == ["field", "first_order"]
    assert all(t["bytes"] <= t["share_bytes"] for t in s["tables"])


def test_floor_pins_a_table_and_the_rest_takes_what_is_left():
    model, plan = planned("deepfm", "robe", compression=10)
    first = plan.summary()["tables"][1]
    floor = method_floor("robe", [Feature(f"C{i}", n, 1) for i, n in enumerate(SMALL)])
    assert first["share_bytes"] >= floor


def test_infeasible_budget_is_one_line_with_floor_and_ratio():
    with pytest.raises(ValueError) as e:
        planned("deepfm", "robe", compression=100000)
    msg = str(e.value)
    assert "\n" not in msg and "'robe' needs at least" in msg and "smallest ratio it can reach is" in msg


def test_planned_tables_are_handed_out_in_order_and_checked():
    plan = TablePlan("robe", compression=10)
    plan.solve([("field", feats())])
    with pytest.raises(RuntimeError, match="other features"):
        plan(feats(8))


def test_no_budget_builds_method_defaults():
    model, plan = planned("dcn", "hash")
    assert plan.summary()["budget_bytes"] is None
    assert model(torch.zeros(2, 13), torch.zeros(2, 10, dtype=torch.long)).shape == (2,)
