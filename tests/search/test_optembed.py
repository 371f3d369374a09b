"""OptEmbed's search and pipeline: evolution operators (and the reference code's bugs avoided),
budgets, resumable search, the three stages + export on tiny data, resume after a kill, the example."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimembed.search.optembed import (
    EvolutionSearch, OptEmbedConfig, OptEmbedPipeline, crossover, crossover_point, load_exported,
    load_pipeline_config, mutate, optembed_regularizer, optembed_table_factory, supernet_optimizers,
)
from slimembed.tables import CompactOptEmbedTable, OptEmbedTable

ROOT = Path(__file__).resolve().parents[2]


def reproduce_optembed():
    """examples/reproduce/optembed.py (the grid runner lives outside the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_optembed", ROOT / "examples" / "reproduce" / "optembed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster than two on a shared, busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- operators
def test_mutation_stays_in_range_and_can_pick_dim_1():
    g = gen()
    parent = torch.full((26,), 7)
    seen = torch.cat([mutate(parent, 64, 1.0, g) for _ in range(200)])
    assert int(seen.min()) == 1 and int(seen.max()) == 64  # 1..D, both ends reachable
    assert bool(((seen >= 1) & (seen <= 64)).all())
    # with probability p each field is reset: about 10% of fields change at p = 0.1
    changed = torch.stack([mutate(parent, 64, 0.1, g) != parent for _ in range(400)]).float().mean()
    assert 0.08 < float(changed) < 0.12
    assert torch.equal(mutate(parent, 64, 0.0, g), parent)


def test_mutation_and_crossover_never_modify_parents():
    g = gen(1)
    a, b = torch.arange(1, 27), torch.arange(27, 53)
    a0, b0 = a.clone(), b.clone()
    m = mutate(a, 64, 1.0, g)
    c = crossover(a, b, 5)
    m[0] = 99
    c[0] = 99
    assert torch.equal(a, a0) and torch.equal(b, b0)


def test_crossover_cuts_on_the_field_axis():
    a, b = torch.arange(1, 27), torch.arange(101, 127)
    for p in range(0, 27):
        child = crossover(a, b, p)
        assert torch.equal(child, torch.cat([a[:p], b[p:]]))
    g = gen(2)
    points = {crossover_point(26, g) for _ in range(2000)}
    assert points == set(range(1, 26))  # every cut between fields, never past the last field (not over D)
    assert crossover_point(1, g) == 1
    with pytest.raises(ValueError):
        crossover(a, b, 27)


def test_population_sizes_and_parent_selection():
    es = EvolutionSearch(lambda c: float(c.sum()), num_fields=6, max_dim=16, seed=0)
    assert len(es.population) == 20 and es.population_size == 20
    ranked = sorted(es.population, key=lambda c: -float(c.sum()))
    snapshot = [c.clone() for c in ranked]
    nxt = es.breed(ranked)
    assert len(nxt) == 20
    assert all(torch.equal(x, y) for x, y in zip(ranked, snapshot))  # parents untouched
    assert all(bool(((c >= 1) & (c <= 16)).all()) and c.shape == (6,) for c in nxt)
    # crossover children take every field from one of the top-10 parents, at the same field
    top = torch.stack(ranked[:10])
    for child in nxt[10:]:
        assert bool(((top == child).any(0)).all())
    es2 = EvolutionSearch(lambda c: 0.0, 4, 8, mutation_num=3, crossover_num=5, keep_num=2, parents=4)
    assert len(es2.population) == 10 and len(es2.breed(es2.population)) == 10
    assert torch.equal(es2.breed(es2.population)[0], es2.population[0])  # elites are copies


def test_best_is_tracked_from_the_sorted_fitness():
    """The reference compares the best-so-far with the *unsorted* list's first entry; here the
    population's first candidate is the worst, so that bug would record a wrong AUC."""
    calls = []

    def score(c):
        return -float((c - 5).abs().sum())  # optimum: every dim 5

    def fitness(c):
        calls.append(c.clone())
        return score(c)

    init = [torch.full((4,), 1)] + [torch.full((4,), d) for d in (2, 3, 4, 6, 7, 8, 5, 2, 3)] + \
           [torch.full((4,), 8)] * 10
    es = EvolutionSearch(fitness, 4, 8, seed=0, initial=init)
    entry = es.step()
    assert entry["best"] == 0.0 and es.best_fitness == 0.0
    assert torch.equal(es.best, torch.full((4,), 5))
    best_ref = es.best
    for _ in range(5):
        es.step()
        # the best never gets worse, always equals the max fitness ever seen, and is a copy
        seen = max(es.cache.values())
        assert es.best_fitness == seen == score(es.best)
    assert torch.equal(best_ref, torch.full((4,), 5))
    assert [h["best_so_far"] for h in es.history] == [0.0] * 6
    # duplicates are evaluated once (cache)
    assert len(calls) == es.evaluations == len(es.cache)
    assert len({tuple(c.tolist()) for c in calls}) == len(calls)


def test_best_so_far_is_monotone_and_is_the_max():
    torch.manual_seed(0)
    target = torch.randint(1, 33, (10,))
    es = EvolutionSearch(lambda c: -float((c - target).abs().sum()), 10, 32, seed=3)
    best, fit = es.run(15)
    bsf = [h["best_so_far"] for h in es.history]
    assert bsf == sorted(bsf) and bsf[-1] == fit == max(es.cache.values())
    assert fit == -float((best - target).abs().sum())
    assert fit > es.history[0]["best"]  # the search improves on the random start


def test_budget_makes_candidates_infeasible():
    evaluated = []

    def fitness(c):
        evaluated.append(c.clone())
        return float(c.sum())

    feasible = lambda c: int(c.sum()) <= 20  # noqa: E731
    es = EvolutionSearch(fitness, 5, 16, feasible=feasible, seed=0)
    assert all(feasible(c) for c in es.population)  # the start is feasible
    best, fit = es.run(6)
    assert all(feasible(c) for c in evaluated)  # infeasible ones are never evaluated
    assert feasible(best) and fit <= 20
    assert any(math.isinf(v) and v < 0 for v in es.cache.values())  # and score -inf
    with pytest.raises(ValueError):
        EvolutionSearch(fitness, 5, 16, feasible=lambda c: False)


def test_search_resumes_exactly_from_a_generation():
    fit = lambda c: -float(((c - 7) ** 2).sum()) + 0.01 * float(c[0])  # noqa: E731
    full = EvolutionSearch(fit, 8, 16, seed=5)
    full.run(6)
    part = EvolutionSearch(fit, 8, 16, seed=5)
    part.run(3)
    state = part.state_dict()
    again = EvolutionSearch(fit, 8, 16, seed=123)  # another seed: the state overrides it
    again.load_state_dict(state)
    again.run(6)
    assert again.history == full.history
    assert torch.equal(again.best, full.best)
    assert [c.tolist() for c in again.population] == [c.tolist() for c in full.population]


# ------------------------------------------------------------------------------- optimizers
def test_supernet_optimizers_sgd_for_thresholds_adam_with_wd_for_the_rest():
    from slimembed.ctr.models import make_model
    from slimembed.tables import Feature

    feats = [Feature("a", 20, 4), Feature("b", 9, 4)]
    model = make_model("deepfm", feats, 1, table_factory=optembed_table_factory(), hidden_units=[8])
    assert isinstance(model.embedding, OptEmbedTable) and not isinstance(model.first_order, OptEmbedTable)
    opt = supernet_optimizers(model, {"lr": 1e-3, "weight_decay": 1e-4}, threshold_lr=0.5)
    sgd = opt["threshold"]
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["lr"] == 0.5
    assert sgd.param_groups[0]["momentum"] == 0 and sgd.param_groups[0]["weight_decay"] == 0
    assert sgd.param_groups[0]["params"] == [model.embedding.threshold]
    others = [p for name in ("dense", "embedding") for g in opt[name].param_groups for p in g["params"]]
    assert all(p is not model.embedding.threshold for p in others)
    assert all(g["weight_decay"] == 1e-4 for n in ("dense", "embedding") for g in opt[n].param_groups)
    assert model.embedding.threshold.requires_grad
    # one step: the threshold moves by exactly -lr * grad (plain SGD)
    t0 = model.embedding.threshold.detach().clone()
    ids = torch.stack([torch.randint(0, 20, (16,)), torch.randint(0, 9, (16,))], 1)
    loss = model(torch.randn(16, 1), ids).sum() + optembed_regularizer(model)
    opt.zero_grad()
    loss.backward()
    g = model.embedding.threshold.grad.clone()
    opt.step()
    assert torch.allclose(model.embedding.threshold.detach(), t0 - 0.5 * g)


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        OptEmbedConfig(variant="optembed-x")
    with pytest.raises(ValueError, match="retrain_from"):
        OptEmbedConfig(retrain_from="scratch")
    with pytest.raises(ValueError, match="unknown optembed keys"):
        OptEmbedConfig.from_dict({"generation": 3})


# ------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from slimembed.datasets import generate

    out = tmp_path_factory.mktemp("oe_data")
    generate(str(out), rows=3000, seed=0, scale=0.0005, small_field_max=100)
    return out


def tiny_config(data, out, **optembed):
    return load_pipeline_config(config={
        "data": {"path": str(data), "batch_size": 500, "eval_batch_size": 1000},
        "model": {"name": "deepfm", "embedding_dim": 4, "hidden_units": [8]},
        "train": {"epochs": 2, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0, "progress": False},
        "optembed": {"generations": 3, "alpha": 1e-2, "threshold_lr": 0.5, "threshold_init": 0.05,
                     **optembed},
        "output": str(out),
    })


class Killed(Exception):
    pass


def test_pipeline_resumes_after_kills_and_export_matches(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data, out)
    logs = []

    # 1. killed right after the supernet stage (between stages)
    OptEmbedPipeline(cfg, log=logs.append).run(stop_after="supernet")
    sup_files = {p: p.stat().st_mtime_ns for p in (out / "supernet").glob("*.pt")}
    assert (out / "supernet" / "init.pt").exists() and (out / "supernet" / "result.json").exists()
    assert not (out / "search").exists()

    # 2. killed inside the search, after 2 of 3 generations
    import slimembed.search.optembed as mod

    real_step = mod.EvolutionSearch.step

    def dying_step(self, breed=True):
        if self.generation == 2:
            raise Killed()
        return real_step(self, breed)

    monkeypatch.setattr(mod.EvolutionSearch, "step", dying_step)
    with pytest.raises(Killed):
        OptEmbedPipeline(cfg, log=logs.append).run()
    monkeypatch.setattr(mod.EvolutionSearch, "step", real_step)
    assert torch.load(out / "search" / "state.pt", weights_only=False)["search"]["generation"] == 2
    assert not (out / "search" / "result.json").exists()

    # 3. resumed: the supernet is not retrained, the search continues at generation 3
    logs.clear()
    summary = OptEmbedPipeline(cfg, log=logs.append).run()
    assert any("supernet: done earlier" in s for s in logs)
    assert any("resuming after generation 2/3" in s for s in logs)
    assert {p: p.stat().st_mtime_ns for p in (out / "supernet").glob("*.pt")} == sup_files
    search = json.loads((out / "search" / "result.json").read_text())
    assert [h["generation"] for h in search["history"]] == [0, 1, 2]

    # the resumed search equals an uninterrupted one from the same supernet
    other = tmp_path / "other"
    shutil.copytree(out / "supernet", other / "supernet")
    shutil.copy(out / "config.json", other / "config.json")
    ref = OptEmbedPipeline(tiny_config(tiny_data, other), log=lambda s: None).run(stop_after="search")
    assert ref["search"]["dims"] == search["dims"] and ref["search"]["history"] == search["history"]

    # 4. the export: same logits as the masked retrained model, fewer bytes, remap counted
    export = summary["stages"]["export"]
    assert export["max_abs_logit_diff"] == 0.0
    assert export["test"]["auc"] == pytest.approx(summary["stages"]["retrain"]["test"]["auc"], abs=1e-9)
    exported = load_exported(out)
    masked = OptEmbedPipeline(cfg, log=lambda s: None).masked_model("retrain").eval()
    from slimembed.datasets import make_loader

    b = next(iter(make_loader(str(tiny_data), "test", 300)))
    with torch.no_grad():
        assert torch.equal(exported(b.dense, b.sparse), masked(b.dense, b.sparse))
    assert isinstance(exported.embedding, CompactOptEmbedTable)
    sup = summary["stages"]["supernet"]
    assert 0 < sup["kept_rows_total"] < sup["rows_total"]  # the thresholds pruned rows
    assert export["remap_bytes"] > 0 and export["table_bytes"] < export["full_table_bytes"]
    assert sum(exported.embedding.kept) == summary["kept_rows"]

    # a rerun is a no-op; another config in the same directory is refused
    logs.clear()
    OptEmbedPipeline(cfg, log=logs.append).run()
    assert sum("done earlier" in s for s in logs) == 4
    with pytest.raises(ValueError, match="another config"):
        OptEmbedPipeline(tiny_config(tiny_data, out, generations=4), log=lambda s: None)


def test_pipeline_variants_and_budget(tiny_data, tmp_path):
    # OptEmbed-E: no dim search (every field keeps D); OptEmbed-D: every row kept
    e = OptEmbedPipeline(tiny_config(tiny_data, tmp_path / "e", variant="optembed-e", search_max_eval_batches=1),
                         log=lambda s: None)
    e.run(stop_after="search")
    se = e.stage_result("search")
    assert set(se["dims"].values()) == {4} and se["evaluations"] == 0
    d = OptEmbedPipeline(tiny_config(tiny_data, tmp_path / "d", variant="optembed-d", generations=1,
                                     budget_bytes=120_000, search_max_eval_batches=1), log=lambda s: None)
    d.run(stop_after="search")
    sd = d.stage_result("search")
    assert sd["kept_rows_total"] == sd["rows_total"]
    assert sd["export_bytes"] <= 120_000 and sd["budget_bytes"] == 120_000


def test_cli_and_example_run(tiny_data, tmp_path):
    from slimembed.ctr.cli import main

    cfg = tmp_path / "oe.yaml"
    cfg.write_text(
        f"data: {{path: {tiny_data}, batch_size: 1000, eval_batch_size: 1000}}\n"
        "model: {name: dcn, embedding_dim: 4, hidden_units: [8], num_cross_layers: 1}\n"
        "train: {epochs: 1, lr: 0.003, progress: false}\n"
        "optembed: {generations: 1, mutation_num: 2, crossover_num: 2, parents: 2}\n"
        f"output: {tmp_path / 'cli'}\n"
    )
    assert main(["optembed", "--config", str(cfg)]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["model"] == "dcn"
    assert main(["optembed", "--config", str(cfg), "--set", "optembed.variant=nope"]) == 2

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "optembed_pipeline.py"), "--rows", "2000",
                           "--out", str(tmp_path / "ex"), "--generations", "2", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max |logit difference| exported vs masked: 0" in proc.stdout
    assert "export: field table" in proc.stdout


def test_experiment_command_tiny_and_resumable(tmp_path, capsys):
    exp = reproduce_optembed()

    argv = ["--out", str(tmp_path / "exp"), "--rows", "2000", "--scale", "0.0001", "--models", "deepfm",
            "--seeds", "0", "--dim", "4", "--hidden", "8", "--epochs", "1", "--generations", "1",
            "--batch-size", "500", "--search-eval-batches", "1"]
    assert exp.main(argv) == 0
    out = capsys.readouterr().out
    for method in ("full", "optembed-e", "optembed-d", "optembed"):
        assert f"| deepfm | {method} | 1 |" in out
    rows = json.loads((tmp_path / "exp" / "results.json").read_text())["rows"]
    assert len(rows) == 4 and all(r["exported_bytes"] > 0 for r in rows)
    # a rerun reads every finished run back (no training): same table
    assert exp.main(argv) == 0
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["rows"] == rows
    assert "stage 1/4" not in capsys.readouterr().out
    # --summary-only tabulates what parallel workers left under OUT/runs, in model/method/seed order
    assert exp.main(["--out", str(tmp_path / "exp"), "--summary-only"]) == 0
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["rows"] == rows
    # --data reuses a processed dataset instead of generating OUT/data
    argv2 = ["--out", str(tmp_path / "exp2"), "--data", str(tmp_path / "exp" / "data"), "--models", "deepfm",
             "--methods", "full", "--seeds", "1", "--dim", "4", "--hidden", "8", "--epochs", "1",
             "--batch-size", "500"]
    assert exp.main(argv2) == 0
    assert not (tmp_path / "exp2" / "data").exists()
    (row,) = json.loads((tmp_path / "exp2" / "results.json").read_text())["rows"]
    assert row["seed"] == 1 and row["device"] == "cpu"


def test_experiment_budget_methods():
    parse_method = reproduce_optembed().parse_method

    assert parse_method("optembed@10x") == ("optembed", 10.0)
    assert parse_method("hash@100") == ("hash", 100.0)
    assert parse_method("full") == ("full", None)
    for bad, msg in (("hash", "needs a budget"), ("full@10x", "no budget"), ("optembed@0.5x", "compression > 1"),
                     ("nope@10x", "expected one of"), ("qr@tenx", "compression > 1")):
        with pytest.raises(ValueError, match=msg):
            parse_method(bad)


def test_experiment_data_is_regenerated_for_another_profile(tmp_path):
    oe = reproduce_optembed()

    from slimembed.ctr.experiment import data_identity

    d = tmp_path / "data"
    oe.ensure_data(d, 1000, seed=0, scale=0.0005, profile="v1")
    # the data's own identity (schema.json) is what reuse is decided on; no marker file beside it
    assert {k: data_identity(d)[k] for k in ("rows", "seed", "scale", "profile")} == {
        "rows": 1000, "seed": 0, "scale": 0.0005, "profile": "v1"}
    meta = oe.ensure_data(d, 1000, seed=0, scale=0.0005, profile="v2")  # not the v1 data again
    assert meta["generator"]["profile"] == "v2"
    assert data_identity(d)["profile"] == "v2"
    mtime = (d / "schema.json").stat().st_mtime_ns
    oe.ensure_data(d, 1000, seed=0, scale=0.0005, profile="v2")  # the same arguments: reused
    assert (d / "schema.json").stat().st_mtime_ns == mtime


def test_experiment_directory_keeps_one_dataset(tmp_path):
    from slimembed.ctr.experiment import claim_output_data
    oe = reproduce_optembed()

    out = tmp_path / "exp"
    d = out / "data"
    oe.ensure_data(d, 1000, seed=0, scale=0.0005, profile="v1")
    claim_output_data(out, d)  # what main() does once the data is there
    with pytest.raises(ValueError, match="holds runs on it"):
        oe.ensure_data(d, 1000, seed=0, scale=0.0005, profile="v2")  # would replace the runs' data
    other = tmp_path / "other"
    oe.ensure_data(other, 1000, seed=0, scale=0.0005, profile="v2")
    with pytest.raises(ValueError, match="profile: 'v1' -> 'v2'"):
        claim_output_data(out, other)
