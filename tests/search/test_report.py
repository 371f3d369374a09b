"""Reports (Pareto front as CSV/JSON/Markdown/PNG from a study or a results directory), the
benchmark grid (infeasible/excluded cells, resume) and the example script."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from matplotlib.image import imread
from optuna.distributions import CategoricalDistribution, FloatDistribution

from slimembed.search.report import FIGSIZE, DPI, load_points, pareto_front, report, write_report
from slimembed.search.sweep import CONFIG_ATTR, resolve_storage

ROOT = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)

# (method, compression, val AUC, test AUC, table bytes, status)
TRIALS = [
    ("full", None, 0.790, 0.788, 1_000_000, "reference"),
    ("hash", 10.0, 0.780, 0.779, 100_000, "ok"),
    ("hash", 100.0, 0.760, 0.761, 10_000, "ok"),
    ("qr", 10.0, 0.770, 0.772, 100_000, "ok"),        # dominated by hash@10 (same bytes, lower AUC)
    ("qr", 4.0, 0.785, 0.783, 250_000, "ok"),
    ("robe", 50.0, 0.775, 0.774, 20_000, "ok"),
    ("robe", 500.0, 0.700, 0.701, 2_000, "ok"),
    ("robe", 20.0, 0.740, 0.741, 50_000, "ok"),         # dominated by robe@50
    ("qr", 1000.0, 0.5, None, 300_000, "infeasible"),  # never on a front
]


def dominated(p, others) -> bool:
    return any(o[2] >= p[2] and o[4] <= p[4] and (o[2] > p[2] or o[4] < p[4]) for o in others)


def make_study(path: Path):
    storage, _ = resolve_storage(str(path), ".")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr(CONFIG_ATTR, {"mode": "multi", "full_bytes": 1_000_000})
    dists = {"method": CategoricalDistribution(["hash", "qr", "robe"]),
             "compression": FloatDistribution(2, 1000, log=True)}
    for i, (m, c, v, t, b, status) in enumerate(TRIALS):
        table = {"method": m} if c is None else {"method": m, "compression": c}
        params = {} if c is None else {"method": m, "compression": c}
        ua = {"method": m, "table": table, "status": status, "val_auc": v, "test_auc": t, "table_bytes": b,
              "full_bytes": 1_000_000, "test_logloss": 0.45, "wall_time_s": 1.0}
        sa = {"constraints:bytes_over_budget": 1000.0 if status == "infeasible" else 0.0}
        study.add_trial(optuna.trial.create_trial(
            values=[v, float(b)], params=params, distributions={k: dists[k] for k in params},
            user_attrs=ua, system_attrs=sa))
    return study


def read_csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_png(path: Path) -> None:
    img = imread(str(path))
    assert img.shape[:2] == (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI))  # 500 x 800 pixels
    assert img.std() > 0.05  # a drawing, not a blank canvas


def test_report_from_study(tmp_path):
    study = make_study(tmp_path / "study.log")
    out = tmp_path / "rep"
    s = report(str(tmp_path / "study.log"), out_dir=str(out), log=lambda *_: None)
    trained = [t for t in TRIALS if t[5] != "infeasible"]
    expect = sorted((t for t in trained if not dominated(t, trained)), key=lambda t: t[4])
    rows = read_csv(out / "pareto.csv")
    assert [(r["method"], int(r["table_bytes"]), float(r["val_auc"])) for r in rows] == \
        [(t[0], t[4], t[2]) for t in expect]
    # the same front as Optuna's own (constraint-aware) best_trials
    assert sorted(int(r["key"].split()[1]) for r in rows) == sorted(t.number for t in study.best_trials)
    assert s["front"] == len(rows) == len(json.loads((out / "pareto.json").read_text())["pareto"])
    assert len(read_csv(out / "points.csv")) == s["points"] == len(trained)
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == len(rows) + 1 and "pareto.png" in md and "infeasible 1" in md
    check_png(out / "pareto.png")
    # the front on test AUC instead of validation AUC
    s2 = write_report(*load_points(str(tmp_path / "study.log")), out_dir=str(tmp_path / "rep2"), metric="test")
    assert s2["front"] == len(read_csv(tmp_path / "rep2" / "pareto.csv"))


def record(method, compression, val, test, nbytes):
    table = {"method": method} if compression is None else {"method": method, "compression": compression}
    return {"metrics": {"val": {"auc": val, "logloss": 0.45}, "test": {"auc": test, "logloss": 0.46}},
            "memory": {"table_bytes": nbytes, "full_bytes": 1_000_000, "total_bytes": nbytes},
            "wall_time_s": 2.0, "config": {"seed": 0}, "extra": {"experiment": {"table": table}}}


def test_report_from_results_dir_and_cli(tmp_path, capsys):
    from slimembed.ctr.cli import main

    d = tmp_path / "results"
    (d / "sub").mkdir(parents=True)
    for i, (m, c, v, t, b, status) in enumerate(TRIALS):
        rec = record(m, c, v, t, b) if status != "infeasible" else \
            {"benchmark": {"status": "infeasible", "method": m, "message": "needs at least"}}
        (d / ("sub" if i % 2 else "") / f"r{i}.json").write_text(json.dumps(rec))
    (d / "schema.json").write_text(json.dumps({"fields": []}))  # not a record: skipped
    assert main(["report", str(d), "--out", str(tmp_path / "out")]) == 0
    rows = read_csv(tmp_path / "out" / "pareto.csv")
    trained = [t for t in TRIALS if t[5] != "infeasible"]
    assert len(rows) == sum(not dominated(t, trained) for t in trained)
    assert rows[-1]["method"] == "full" and rows[-1]["status"] == "reference"
    check_png(tmp_path / "out" / "pareto.png")
    assert "on the Pareto front" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing.db")]) == 2
    assert "neither a results directory nor a study storage" in capsys.readouterr().err


def test_pareto_front_keeps_exact_ties():
    from slimembed.search.report import Point

    pts = [Point("a", "hash", table_bytes=10, val_auc=0.7), Point("b", "hash", table_bytes=10, val_auc=0.7),
           Point("c", "qr", table_bytes=20, val_auc=0.7), Point("d", "qr", table_bytes=5, val_auc=0.6),
           Point("e", "qr", table_bytes=1, val_auc=0.9, status="infeasible")]
    assert [p.key for p in pareto_front(pts)] == ["d", "a", "b"]


# ---------------------------------------------------------------------------------- benchmark
@pytest.fixture(scope="module")
def bench_data(tmp_path_factory) -> str:
    from slimembed.datasets import generate

    d = tmp_path_factory.mktemp("benchdata") / "data"
    generate(str(d), rows=2500, scale=0.0001, small_field_max=100, seed=0)
    return str(d)


def bench_config(data: str, out: Path, **over) -> dict:
    return {"experiment": {"data": {"path": data, "batch_size": 1024, "eval_batch_size": 4096},
                           "model": {"name": "deepfm", "embedding_dim": 4, "hidden_units": [8]},
                           "train": {"lr": 0.01, "num_threads": 1}},
            "generate": None, "methods": ["hash", "qr", "tt"], "budgets": [2, 1000], "seeds": [0],
            "knobs": {"qr": {"operation": "add"}}, "exclude": {"tt": "too slow for this test"},
            "out": str(out), **over}


def test_benchmark_grid_records_and_resumes(bench_data, tmp_path):
    from slimembed.search.benchmark import run_benchmark

    logs = []
    cfg = bench_config(bench_data, tmp_path / "b")
    s = run_benchmark(cfg, log=logs.append)
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "b" / "cells").glob("*.json")}
    assert len(cells) == 7  # full + 3 methods x 2 budgets
    status = {k: v["benchmark"]["status"] for k, v in cells.items()}
    assert status == {"full__1x__seed0": "ok", "hash__2x__seed0": "ok", "qr__2x__seed0": "ok",
                      "hash__1000x__seed0": "infeasible", "qr__1000x__seed0": "infeasible",
                      "tt__2x__seed0": "excluded", "tt__1000x__seed0": "excluded"}
    assert "needs at least" in cells["qr__1000x__seed0"]["benchmark"]["message"]
    assert cells["qr__2x__seed0"]["extra"]["experiment"]["table"] == {"method": "qr", "compression": 2,
                                                                      "operation": "add"}
    assert cells["hash__2x__seed0"]["memory"]["table_bytes"] <= cells["hash__2x__seed0"]["memory"]["full_bytes"] / 2
    assert any("excluded tt: too slow for this test" in line for line in logs)
    rows = read_csv(tmp_path / "b" / "results.csv")
    assert [(r["method"], r["budget"], r["status"]) for r in rows] == [
        ("full", "1", "ok"), ("hash", "2", "ok"), ("hash", "1000", "infeasible"), ("qr", "2", "ok"),
        ("qr", "1000", "infeasible"), ("tt", "2", "excluded"), ("tt", "1000", "excluded")]
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| qr | 1000x | infeasible |" in md and "tt 2x: excluded: too slow for this test" in md
    check_png(tmp_path / "b" / "benchmark.png")
    # resume: nothing retrains; a deleted cell is the only one trained again
    mtime = (tmp_path / "b" / "cells" / "full__1x__seed0.json").stat().st_mtime_ns
    (tmp_path / "b" / "cells" / "hash__2x__seed0.json").unlink()
    logs.clear()
    run_benchmark(cfg, log=logs.append)
    assert any("7 cells: 4 already done, 1 to train" in line for line in logs), logs
    assert (tmp_path / "b" / "cells" / "full__1x__seed0.json").stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "b" / "cells" / "hash__2x__seed0.json").read_text())["benchmark"]["status"] == "ok"
    assert "| full | 1x | ok |" in (tmp_path / "b" / "results.md").read_text()
    assert read_csv(tmp_path / "b" / "results.csv")[0]["device"] == "cpu"
    # a cell trained elsewhere (another device, an older fingerprint) counts as done: the stored
    # experiment is fingerprinted again
    p = tmp_path / "b" / "cells" / "qr__2x__seed0.json"
    rec = json.loads(p.read_text())
    rec["benchmark"]["fingerprint"] = "from-a-gpu-run"
    rec["extra"]["experiment"]["train"]["device"] = "cuda"
    p.write_text(json.dumps(rec))
    logs.clear()
    run_benchmark(cfg, log=logs.append)
    assert any("7 cells: 5 already done, 0 to train" in line for line in logs), logs


@pytest.mark.parametrize("over, match", [
    ({"methods": ["hash", "nope"]}, r"unknown table method 'nope'"),
    ({"knobs": {"qr": {"collisions": 3}}}, r"method 'qr' has no knob 'collisions'.*solved from the budget"),
    ({"budgets": [0.5]}, r"budgets must be .* > 1"),
    ({"generate": {"rowz": 10}}, r"unknown generate keys \['rowz'\]"),
])
def test_benchmark_config_errors(tmp_path, over, match):
    from slimembed.search.benchmark import run_benchmark

    cfg = bench_config(str(tmp_path / "missing"), tmp_path / "b", **over)
    with pytest.raises(ValueError, match=match):
        run_benchmark(cfg, log=lambda *_: None)
    assert not (tmp_path / "b").exists()


def test_benchmark_missing_data_fails_at_once(tmp_path):
    from slimembed.search.benchmark import run_benchmark

    with pytest.raises(FileNotFoundError, match="no schema.json"):
        run_benchmark(bench_config(str(tmp_path / "missing"), tmp_path / "b"), log=lambda *_: None)


# ---------------------------------------------------------------------------------- example
def test_example_memory_vs_auc(tmp_path):
    out = tmp_path / "ex"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "memory_vs_auc.py"), "--out", str(out),
                        "--trials", "4", "--rows", "4000"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on the front" in r.stdout
    rows = read_csv(out / "report" / "pareto.csv")
    assert 1 <= len(rows) <= 4 and json.loads((out / "report" / "pareto.json").read_text())["front"] == len(rows)
    check_png(out / "report" / "pareto.png")


def test_benchmark_refuses_data_of_another_profile(bench_data, tmp_path):
    from slimembed.search.benchmark import ensure_data

    same = {"rows": 2500, "scale": 0.0001, "small_field_max": 100, "seed": 0}
    ensure_data(bench_config(bench_data, tmp_path / "g", generate=same))  # the default profile: the data's own
    for gen, key in (({**same, "profile": "v1"}, "profile: config 'v1', data 'v2'"),
                     ({**same, "rows": 9999}, "rows: config 9999, data 2500")):
        with pytest.raises(ValueError, match=key):
            ensure_data(bench_config(bench_data, tmp_path / "g", generate=gen))


def test_benchmark_profile_check_sees_knobs_and_defaults(tmp_path):
    from slimembed.datasets import generate
    from slimembed.search.benchmark import ensure_data

    d = tmp_path / "data"
    generate(str(d), rows=500, scale=0.0001, small_field_max=100, seed=0, interaction_std=0.5)
    ok = {"rows": 500, "scale": 0.0001, "small_field_max": 100, "interaction_std": 0.5}
    ensure_data(bench_config(str(d), tmp_path / "g", generate=ok))
    # the knob the config leaves at the profile's value, and a default it leaves out, both count
    for gen, key in (({**ok, "interaction_std": None}, "interaction_std: config 0.3, data 0.5"),
                     ({k: v for k, v in ok.items() if k != "small_field_max"}, "small_field_max: config 10000")):
        gen = {k: v for k, v in gen.items() if v is not None}
        with pytest.raises(ValueError, match=key):
            ensure_data(bench_config(str(d), tmp_path / "g", generate=gen))


def test_report_gives_paired_intervals_where_seeds_exist(tmp_path):
    """A results directory with several seeds per configuration: mean ± std and the paired
    difference to full with its 95% interval, marked where it excludes 0."""
    res = tmp_path / "res"
    res.mkdir()
    aucs = {"full": [0.800, 0.802, 0.801], "hash": [0.790, 0.793, 0.791], "robe": [0.801, 0.800, 0.802]}
    for m, vals in aucs.items():
        for seed, a in enumerate(vals):
            table = {"method": m} if m == "full" else {"method": m, "compression": 10}
            rec = {"metrics": {"val": {"auc": a}, "test": {"auc": a, "logloss": 0.4}},
                   "memory": {"table_bytes": 100 if m != "full" else 1000, "full_bytes": 1000},
                   "benchmark": {"method": m, "seed": seed, "status": "ok", "table": table}}
            (res / f"{m}_{seed}.json").write_text(json.dumps(rec))
    summary = report(str(res), out_dir=str(tmp_path / "rep"), metric="test", log=lambda *_: None)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Configurations with several seeds" in md
    rows = {r["method"]: r for r in summary["seeds"]}
    assert rows["hash"]["vs_full"]["significant"] and rows["hash"]["vs_full"]["mean"] < 0
    assert not rows["robe"]["vs_full"]["significant"]
    assert "| hash | compression=10 | 3 |" in md and " *" in md
