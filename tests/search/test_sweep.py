"""Sweeps: config errors fail before training; multi-objective and budget studies; intermediate
AUC and segmented training; workers sharing a study; a killed worker's trial re-queued and resumed.

Tiny data and models (one thread: tiny batches on an oversubscribed pool run 100x slower)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from slimembed.ctr.experiment import run_experiment
from slimembed.datasets import generate
from slimembed.search.space import resolve_space
from slimembed.search.sweep import (LEASE_ATTR, SweepWorker, open_study, prepare, reap_stale_trials,
                                    resolve_storage, run_sweep, train_trial, worker_id)

ROOT = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("sweepdata") / "data"
    generate(str(d), rows=3000, scale=0.0001, small_field_max=100, seed=0)
    return str(d)


def config(data: str, workdir: Path, methods=("hash", "qr"), train=None, **study) -> dict:
    return {
        "experiment": {
            "data": {"path": data, "batch_size": 1024, "eval_batch_size": 4096},
            "model": {"name": "deepfm", "embedding_dim": 4, "hidden_units": [8]},
            "train": {"epochs": 1, "lr": 0.01, "seed": 0, "early_stop_patience": None, "progress": False,
                      "num_threads": 1, **(train or {})},
        },
        "methods": list(methods),
        # these tiny tables are mostly fields of <= 200 values, which hash keeps whole by default
        "space": {"hash": {"collisionless_max": 0}} if "hash" in methods else {},
        # a journal file by default here: SQLite's schema creation and per-write commits cost
        # seconds that the tiny trials do not (the default SQLite storage: the two-worker test)
        "study": {"name": "t", "workdir": str(workdir), "n_startup_trials": 3,
                  "storage": str(Path(workdir) / "journal.log"), **study},
    }


def quiet(*_a) -> None:
    pass


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("change, error, match", [
    (lambda c: c.update(methods=["hash", "nope"]), ValueError, r"unknown table method 'nope'.*available: .*hash"),
    (lambda c: c.update(space={"qr": {"rank": [1, 2]}}), ValueError,
     r"method 'qr' has no knob 'rank'; allowed: .*operation.*solved from the budget.*collisions"),
    (lambda c: c.update(space={"hash": {"rows": 10}}), ValueError, r"no knob 'rows'.*solved from the budget \(not a knob\): rows"),
    (lambda c: c["study"].update(mode="budget", budget_bytes=100), ValueError,
     r"no method can meet the budget of 100 bytes: hash needs at least \d+ bytes.*qr needs at least \d+ bytes"),
    (lambda c: c["experiment"]["data"].update(path="/no/such/dataset"), FileNotFoundError, r"/no/such/dataset"),
    (lambda c: c["study"].update(pruner="median"), ValueError, r"cannot prune multi-objective"),
    (lambda c: c.update(spaces={}), ValueError, r"unknown sweep config sections \['spaces'\]"),
    (lambda c: c["study"].update(budget_size=3), ValueError, r"unknown study keys \['budget_size'\]"),
])
def test_config_errors_fail_before_training(data, tmp_path, change, error, match):
    cfg = config(data, tmp_path / "w")
    change(cfg)
    with pytest.raises(error, match=match):
        run_sweep(cfg, n_trials=1, log=quiet)
    assert not (tmp_path / "w").exists()  # no storage, no results: nothing started


def test_cli_error_message(data, tmp_path, capsys):
    import yaml

    from slimembed.ctr.cli import main

    cfg = config(data, tmp_path / "w", methods=["qr", "bogus"])
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", "--config", str(f), "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown table method 'bogus'" in err and "available:" in err


def test_space_defaults_and_knob_drops(data, tmp_path):
    space = resolve_space(None)
    assert "full" not in space.methods and not any(m.startswith("optembed") for m in space.methods)
    assert space.methods["qr"].knobs["compression"].to_dict() == {"type": "float", "low": 2.0, "high": 1000.0,
                                                                 "log": True}
    # DeepFM's 1-dim first-order table cannot take robe num_blocks 2/4: dropped from the default space...
    plan = prepare(config(data, tmp_path / "w", methods=["robe"]), log=quiet)
    assert plan.space.methods["robe"].knobs["num_blocks"].choices == (1,)
    # ...but an error when the config asks for them.
    cfg = config(data, tmp_path / "w", methods=["robe"])
    cfg["space"] = {"robe": {"num_blocks": [1, 2]}}
    with pytest.raises(ValueError, match=r"space.robe.num_blocks: \[2\] cannot build.*divide embedding_dim 1"):
        prepare(cfg, log=quiet)


# ---------------------------------------------------------------------------------- studies
def test_multi_objective_study_records_everything(data, tmp_path):
    cfg = config(data, tmp_path / "w", total_trials=4, seed=0,
                 enqueue=[{"method": "qr", "compression": 1000}, {"method": "hash", "compression": 4}])
    summary = run_sweep(cfg, log=quiet)
    assert summary.ran == 4 and summary.infeasible == 1
    study = _study(str(tmp_path / "w" / "journal.log"))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    ref, infeasible, hashed = trials[0], trials[1], trials[2]
    assert ref.user_attrs["status"] == "reference" and ref.user_attrs["ratio"] == pytest.approx(1.0, abs=0.02)
    assert ref.values[1] == ref.user_attrs["table_bytes"] >= ref.user_attrs["full_bytes"]  # + its buffers
    # qr cannot reach 1000x on these tables: recorded, not dropped, and infeasible for Optuna
    assert infeasible.user_attrs["status"] == "infeasible"
    assert "needs at least" in infeasible.user_attrs["infeasible"]
    assert infeasible.constraints and max(infeasible.constraints.values()) > 0
    assert infeasible.number not in {t.number for t in study.best_trials}
    # a trained trial: the result record as user attrs (config, AUC, logloss, bytes, wall time)
    ua = hashed.user_attrs
    assert ua["table"] == {"method": "hash", "compression": 4, "signed": ua["table"]["signed"],
                           "collisionless_max": 0}
    res = ua["result"]
    assert res["config"]["table"] == ua["table"] and res["config"]["model"]["name"] == "deepfm"
    assert hashed.values == [ua["val_auc"], ua["table_bytes"]]
    assert res["metrics"]["val"]["auc"] == ua["val_auc"] and ua["test_logloss"] > 0
    assert ua["table_bytes"] <= ua["full_bytes"] / 4 and ua["wall_time_s"] > 0
    assert len(ua["history"]) == 1  # one evaluation point (end of the epoch)
    files = sorted((tmp_path / "w" / "results" / "t").glob("trial_*.json"))
    assert len(files) == 4
    rec = json.loads(files[2].read_text())
    assert rec["sweep"]["status"] == "ok" and rec["memory"]["table_bytes"] == ua["table_bytes"]
    # a rerun with the cap reached runs nothing; a changed config may not join the study
    assert run_sweep(cfg, log=quiet).ran == 0
    cfg2 = copy.deepcopy(cfg)
    cfg2["experiment"]["train"]["lr"] = 0.02
    with pytest.raises(ValueError, match="different sweep config.*train"):
        run_sweep(cfg2, log=quiet)


def test_budget_mode_feasible_sampling_and_intermediate_auc(data, tmp_path):
    cfg = config(data, tmp_path / "w", methods=["hash", "qr"], train={"eval_every": 1},
                 total_trials=3, pruner_startup_trials=10)
    full = prepare(cfg, log=quiet).full_bytes
    budget = full // 10
    cfg["study"].update(mode="budget", budget_bytes=budget,
                        enqueue=[{"method": "hash", "compression": 10}, {"method": "qr", "compression": 10}])
    plan = prepare(cfg, log=quiet)
    assert plan.space.methods["hash"].knobs["compression"].low == pytest.approx(10, rel=1e-3)
    run_sweep(cfg, log=quiet)
    study = _study(str(tmp_path / "w" / "journal.log"))
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    ref = trials[0]
    assert ref.user_attrs["status"] == "reference"
    assert max(ref.constraints.values()) > 0  # the full table is over the budget: infeasible reference
    hashed, qr = trials[1], trials[2]
    assert qr.user_attrs["status"] == "infeasible" and max(qr.constraints.values()) > 0  # qr's minimum > budget
    assert hashed.user_attrs["table_bytes"] <= budget and max(hashed.constraints.values()) <= 0
    assert hashed.params["compression"] >= full / budget * (1 - 1e-9)
    assert sorted(hashed.intermediate_values) == [1, 2, 3]  # eval_every=1 over 3 batches, each reported
    assert hashed.intermediate_values[3] == pytest.approx(hashed.user_attrs["history"][-1][1])
    assert study.best_trial.number == hashed.number  # the over-budget reference is not "best"


def test_segmented_training_equals_one_run(data, tmp_path):
    """The pruning path (segments + resume) ends bit-identical to one uninterrupted run."""
    base = prepare(config(data, tmp_path / "w", train={"eval_every": 1}), log=quiet).experiment
    cfg = copy.deepcopy(base)
    cfg["table"] = {"method": "hash", "compression": 5, "collisionless_max": 0}
    one = run_experiment(copy.deepcopy(cfg))
    seg_cfg = copy.deepcopy(cfg)
    seg_cfg["train"]["checkpoint_dir"] = str(tmp_path / "ck")
    seen = []
    rec = train_trial(seg_cfg, lambda v, s: seen.append((s, v)) and False)
    assert rec["segments"] == 3 and [s for s, _ in seen] == [1, 2, 3]
    assert rec["metrics"] == one["metrics"]
    assert [h["val_auc"] for h in rec["history"]] == [h["val_auc"] for h in one["history"]]
    # a report that says "prune" stops after the first evaluation point
    from slimembed.search.sweep import _Pruned

    seg_cfg["train"]["checkpoint_dir"] = str(tmp_path / "ck2")
    with pytest.raises(_Pruned) as ex:
        train_trial(seg_cfg, lambda v, s: True)
    assert ex.value.record["steps"] == 1


# ---------------------------------------------------------------------------------- workers
def _study(storage: str):
    return optuna.load_study(study_name="t", storage=resolve_storage(storage, ".")[0])


def test_stale_trial_failed_and_requeued(tmp_path):
    """A lease older than the grace period (another machine) fails the trial and re-queues it."""
    storage = str(tmp_path / "j.log")
    study = optuna.create_study(study_name="t", storage=resolve_storage(storage, ".")[0])
    st = study._storage
    dead, alive = study.ask(), study.ask()
    dead.suggest_float("compression", 2, 1000)
    st.set_trial_system_attr(dead._trial_id, LEASE_ATTR, {"node": "elsewhere", "pid": 1, "time": time.time() - 500})
    st.set_trial_system_attr(alive._trial_id, LEASE_ATTR, {"node": "elsewhere", "pid": 1, "time": time.time()})
    assert reap_stale_trials(study, grace_period=60, log=quiet) == [dead.number]
    assert reap_stale_trials(study, grace_period=60, log=quiet) == []  # idempotent
    trials = _study(storage).get_trials()
    assert trials[dead.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == dead.number
    assert retry.system_attrs["fixed_params"] == dead.params


def test_worker_waits_for_running_trials_at_the_cap(data, tmp_path):
    """At the cap with trials still running elsewhere, a worker waits, runs nothing, and stops."""
    cfg = config(data, tmp_path / "w", total_trials=2, reference=False, storage=str(tmp_path / "j.log"))
    plan = prepare(cfg, log=quiet)
    study = open_study(plan, log=quiet)
    others = [study.ask(), study.ask()]
    for t in others:
        study._storage.set_trial_system_attr(t._trial_id, LEASE_ATTR, {"node": "x", "pid": 1, "time": time.time()})
    threading.Timer(1.5, lambda: [study.tell(t, [0.6, 100.0]) for t in others]).start()
    t0 = time.time()
    summary = SweepWorker(plan, study, log=quiet).run()
    assert summary.ran == 0 and time.time() - t0 >= 1.4
    assert summary.study_counts["complete"] == 2


def _worker(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "slimembed.ctr.cli", "sweep", "--config", str(cfg_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _write(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_worker_processes_share_one_study(data, tmp_path):
    n = 6
    cfg = config(data, tmp_path / "w", methods=["hash", "robe"], total_trials=n, storage=None)  # default SQLite
    path = _write(cfg, tmp_path / "sweep.yaml")
    procs = [_worker(path, "--n-trials", "20") for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = _study(str(tmp_path / "w" / "optuna.db")).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    # none lost: every finished trial has its result file; none duplicated: distinct configurations
    files = sorted((tmp_path / "w" / "results" / "t").glob("trial_*.json"))
    assert sorted(int(f.stem.split("_")[1]) for f in files) == sorted(t.number for t in done)
    tables = [json.dumps(t.user_attrs["table"], sort_keys=True) for t in done if "duplicate_of" not in t.user_attrs]
    assert len(tables) == len(set(tables))
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, outs  # both processes took trials
    ran = sum(int(o.split(" ran ")[1].split(" ")[0]) for o in outs)
    assert ran == len(trials) - sum(t.state == TrialState.WAITING for t in trials)


def test_killed_worker_resumes_and_completes(data, tmp_path):
    """SIGKILL a worker mid-trial; the restarted sweep fails that trial (its process is gone),
    re-queues it with the same parameters, resumes it from its checkpoint and completes the study."""
    n = 4
    storage = str(tmp_path / "w" / "journal.log")
    # enough steps per trial (and feasible trials) that a poll catches one mid-run on a fast machine
    cfg = config(data, tmp_path / "w", methods=["hash"], train={"eval_every": 1, "epochs": 40}, total_trials=n,
                 enqueue=[{"method": "hash", "compression": 2}, {"method": "hash", "compression": 3}])
    a = _worker(_write(cfg, tmp_path / "sweep.yaml"))
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and a.poll() is None:
        time.sleep(0.2)
        if not Path(storage).exists():
            continue
        for t in _study(storage).get_trials(states=(TrialState.RUNNING,)):
            ck = tmp_path / "w" / "checkpoints" / "t" / f"trial_{t.number:05d}" / "last.pt"
            if ck.exists():  # mid-trial, with a checkpoint on disk
                victim = t.number
    assert victim is not None, a.communicate()[0] if a.poll() is not None else "no trial to kill"
    a.send_signal(signal.SIGKILL)
    a.wait()
    if _study(storage).get_trials()[victim].state != TrialState.RUNNING:  # pragma: no cover
        pytest.skip("the trial finished before the kill landed")
    logs: list = []
    summary = run_sweep(cfg, log=logs.append)  # the restarted sweep (in this process: saves a start-up)
    trials = _study(storage).get_trials()
    assert trials[victim].state == TrialState.FAIL
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = [t for t in done if t.user_attrs.get("retry_of") == victim]
    assert len(retry) == 1 and retry[0].params == trials[victim].params
    assert retry[0].user_attrs.get("resumed") is True  # continued from the dead trial's checkpoint
    assert any(f"trial {victim} failed: its worker" in line for line in logs), logs
    assert summary.requeued == 1 and summary.ran == sum(t.user_attrs["worker"] == worker_id() for t in done)
