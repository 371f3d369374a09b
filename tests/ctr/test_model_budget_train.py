"""`slimembed train` at one model-level budget on a small real-shaped dataset (issue 13's shape:
10 categorical fields, 8 of them with at most 200 values, about 3,400 values in all)."""

import json

import numpy as np
import pytest

SIZES = [3, 5, 10, 20, 50, 100, 150, 200, 1200, 1700]
METHODS = ["hash", "double_hash", "qr", "compositional", "robe", "tt", "dhe", "multiplexed", "unified"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from slimembed.ctr.cli import main

    d = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    n = 4000
    cols = {f"c{i}": rng.integers(0, s, n) for i, s in enumerate(SIZES)}
    cols["c9"][:1700] = np.arange(1700)  # every value of the big fields occurs
    cols["c8"][:1200] = np.arange(1200)
    label = (rng.random(n) < 0.3).astype(int)
    with open(d / "small.csv", "w") as f:
        f.write("label," + ",".join(cols) + "\n")
        for r in range(n):
            f.write(f"{label[r]}," + ",".join(f"v{cols[c][r]}" for c in cols) + "\n")
    (d / "schema.yaml").write_text("label: label\n")
    assert main(["prepare", str(d / "small.csv"), "--format", "table", "--schema", str(d / "schema.yaml"),
                 "--min-count", "1", "--out", str(d / "data")]) == 0
    return d


def train(d, method, ratio):
    from slimembed.ctr.cli import main

    out = d / f"{method}_{ratio}.json"
    rc = main(["train", "--set", f"data.path={d / 'data'}", "--set", "data.batch_size=512",
               "--set", f"table.method={method}", "--set", f"table.compression={ratio}",
               "--set", "model.hidden_units=[16]", "--set", "train.epochs=1", "--set", f"output={out}"])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


@pytest.mark.parametrize("method", METHODS)
def test_every_budgetable_method_trains_at_10x_for_the_whole_model(small_data, method, capsys):
    rc, rec = train(small_data, method, 10)
    assert rc == 0, capsys.readouterr().err
    mem = rec["memory"]
    assert mem["table_bytes"] <= mem["full_bytes"] / 10
    plan = rec["extra"]["table_plan"]
    assert [t["role"] for t in plan["tables"]] == ["field", "first_order"]
    assert "budget plan" in capsys.readouterr().out


@pytest.mark.parametrize("method", METHODS)
def test_at_100x_a_method_lands_under_the_budget_or_names_its_floor(small_data, method, capsys):
    rc, rec = train(small_data, method, 100)
    err = capsys.readouterr().err
    if rc == 0:
        assert rec["memory"]["table_bytes"] <= rec["memory"]["full_bytes"] / 100
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"'{method}' needs at least" in err and "smallest ratio it can reach" in err
