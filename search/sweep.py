"""Optuna sweeps over table methods and their knobs (``slimembed sweep --config FILE.yaml``).

One trial = one experiment (:mod:`slimembed.ctr.experiment`: the sweep's base experiment with the
trial's ``table`` section), trained by the project's trainer; its JSON record becomes the trial's
user attributes and ``WORKDIR/results/STUDY/trial_NNNNN.json``.

Config (YAML)::

    experiment:                      # a `slimembed train` config (mapping or file); `table` is set per trial
      data: {path: runs/synth/data, batch_size: 4096}
      model: {name: deepfm, embedding_dim: 16, hidden_units: [256, 128]}
      train: {epochs: 1, lr: 0.001, seed: 0, eval_every: 50}
    methods: [hash, qr, robe, tt]    # default: every registered method a budget can size
    space:                           # overrides of the default knob spaces (search/space.py)
      compression: {low: 2, high: 1000, log: true}
      qr: {operation: [mult, add]}
    exclude: {dhe: "too slow on CPU at this size"}
    study:
      name: deepfm-synth
      storage: null                  # default: sqlite file WORKDIR/optuna.db; or an Optuna URL
                                     # (postgresql://..., mysql://...) or a journal file (*.log)
      workdir: runs/sweep
      mode: multi                    # multi: max val AUC, min table bytes | budget: max val AUC, bytes <= budget_bytes
      budget_bytes: null             # required by mode budget (int or "2MiB"); a constraint in multi
      sampler: tpe                   # tpe | nsga2 | random
      pruner: null                   # budget mode: median (default) | hyperband | none
      total_trials: 40               # study-wide cap over all workers (complete + pruned)
      reference: true                # one full-table trial (the reference line of the report)
      enqueue: []                    # tables to try first, e.g. [{method: qr, compression: 50}]

**Objectives.** ``multi``: maximise validation AUC and minimise ``table_bytes`` (parameters +
buffers of every embedding table of the model, from :func:`slimembed.tables.memory_report`).
``budget``: maximise validation AUC subject to ``table_bytes <= budget_bytes``; the compression
range is raised to ``full_bytes / budget_bytes`` so every sampled table is sized under the budget.
A table that cannot be built at its compression (the budget is below the method's minimum) is
*infeasible*: the trial completes without training, with user attrs ``status="infeasible"``,
``infeasible`` (the message) and ``constraint`` (> 0: the bytes over), and the trial
constraint (``Trial.set_constraint``, Optuna 5's replacement of the deprecated ``constraints_func``;
TPE, NSGA-II and ``best_trial(s)`` read it) ranks it behind every feasible trial.

**Pruning** (``budget`` mode): validation AUC at every ``train.eval_every`` steps (or every epoch)
is reported to the pruner. The trainer has no per-evaluation callback, so a trial trains in
segments of ``eval_every`` steps through ``run_experiment`` with ``train.max_steps`` raised each
time and ``train.resume`` from the trial's checkpoint (bit-identical to one run); each segment
costs one extra val+test evaluation. Optuna cannot prune multi-objective studies
(``Trial.report``/``should_prune`` are single-objective), so ``multi`` trains each trial in one
run and keeps the validation curve in the ``history`` user attr.

**Workers.** Run the same command in as many processes/machines as wanted against one storage.
``--n-trials`` bounds what a worker runs; ``total_trials`` caps the study: a worker stops when
``COMPLETE + PRUNED`` trials reach it, waits while trials of other workers are still running,
and a trial whose number ranks past the cap among live and finished trials (two workers asking
at once) is put back in the queue unrun, so exactly ``total_trials`` finish.

**Dead workers.** Each running trial carries a lease (system attr ``slimembed:lease``: host,
pid, time) renewed every ``heartbeat_interval`` s -- our own heartbeat, because Optuna 5's
JournalStorage has none. Any worker, before each trial, fails the running trials whose lease is
older than ``grace_period`` s, or whose process is gone on this host, and re-queues them with the
same parameters (user attr ``retry_of``); the retry resumes training from the dead trial's last
checkpoint (``WORKDIR/checkpoints/STUDY/trial_N``, written at every evaluation point) when the
file system is shared. So a killed sweep, restarted, completes the remaining trials.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from .space import COMPRESSION, SearchSpace, check_space, full_table_bytes, resolve_space
# the workers, storage and leases live in sweep_worker (re-exported: imports from here keep working)
from .sweep_worker import (  # noqa: F401
    CONFIG_ATTR, CONSTRAINT, HOST_KEY, INFEASIBLE_AUC, LEASE_ATTR, Lease, SweepWorker, WorkerSummary, _Pruned,
    make_pruner, make_sampler, open_study, reap_stale_trials, resolve_storage, stale_reason, storage_of,
    train_trial, worker_id, worker_seed,
)

SWEEP_SECTIONS = ("experiment", "methods", "space", "exclude", "study")
STUDY_DEFAULTS: Dict[str, Any] = {
    "name": "slimembed-sweep",
    "storage": None,
    "workdir": "runs/sweep",
    "mode": "multi",
    "budget_bytes": None,
    "sampler": "tpe",
    "n_startup_trials": 10,
    "population_size": 20,
    "pruner": None,
    "pruner_startup_trials": 5,
    "n_trials": None,
    "total_trials": None,
    "seed": None,
    "reference": True,
    "enqueue": [],
    "heartbeat_interval": 30,
    "grace_period": 120,
    "checkpoints": True,
    "keep_checkpoints": False,
}
MODES = ("multi", "budget")
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "hyperband", "none")


# ---------------------------------------------------------------------------------- config
def parse_bytes(v: Any) -> int:
    """``1500000``, ``"1.5MB"``, ``"2 MiB"``, ``"512k"`` -> bytes (KB = 1000, KiB = 1024).

    >>> parse_bytes("1.5MB"), parse_bytes("2 MiB")
    (1500000, 2097152)
    """
    if isinstance(v, bool):
        raise ValueError(f"not a byte count: {v!r}")
    if isinstance(v, (int, float)):
        if v <= 0 or not math.isfinite(v):
            raise ValueError(f"a byte count must be > 0, got {v!r}")
        return int(v)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", str(v), re.I)
    if not m:
        raise ValueError(f"not a byte count: {v!r} (use e.g. 2000000, '2MB' or '1.5MiB')")
    base = 1024 if m.group(3) else 1000
    mult = base ** "_kmgt".index(m.group(2).lower() or "_") if m.group(2) else 1
    out = int(float(m.group(1)) * mult)
    if out <= 0:
        raise ValueError(f"a byte count must be > 0, got {v!r}")
    return out


def load_sweep_config(source: Union[str, Path, Mapping[str, Any], None],
                      overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a sweep YAML (or take a dict), apply ``section.key=value`` overrides, fill defaults and
    check the keys and types (:func:`slimembed.ctr.config.load_config`, kind ``sweep``) and the
    study's cross-key rules. The experiment is validated by :func:`prepare`."""
    from slimembed.ctr.config import load_config

    cfg = load_config(source, "sweep", overrides)
    study = dict(cfg.get("study") or {})
    cfg["study"] = {**STUDY_DEFAULTS, **study}
    s = cfg["study"]
    if s["mode"] not in MODES:
        raise ValueError(f"study.mode must be one of {MODES}, got {s['mode']!r}")
    if s["sampler"] not in SAMPLERS:
        raise ValueError(f"study.sampler must be one of {SAMPLERS}, got {s['sampler']!r}")
    if s["budget_bytes"] is not None:
        s["budget_bytes"] = parse_bytes(s["budget_bytes"])
    if s["mode"] == "budget" and s["budget_bytes"] is None:
        raise ValueError("study.mode 'budget' needs study.budget_bytes (e.g. 2000000 or '2MB')")
    if s["pruner"] is None:
        s["pruner"] = "median" if s["mode"] == "budget" else "none"
    if s["pruner"] not in PRUNERS:
        raise ValueError(f"study.pruner must be one of {PRUNERS}, got {s['pruner']!r}")
    if s["mode"] == "multi" and s["pruner"] != "none":
        raise ValueError("Optuna cannot prune multi-objective studies (Trial.report/should_prune are "
                         "single-objective only): use study.mode 'budget' or study.pruner 'none'")
    for k in ("n_trials", "total_trials"):
        if s[k] is not None and (not isinstance(s[k], int) or s[k] < 0):
            raise ValueError(f"study.{k} must be a non-negative integer or null, got {s[k]!r}")
    for k in ("heartbeat_interval", "grace_period"):
        if not isinstance(s[k], (int, float)) or s[k] <= 0:
            raise ValueError(f"study.{k} must be > 0 seconds, got {s[k]!r}")
    if s["grace_period"] <= s["heartbeat_interval"]:
        raise ValueError(f"study.grace_period ({s['grace_period']}) must exceed heartbeat_interval "
                         f"({s['heartbeat_interval']})")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(s["name"])):
        raise ValueError(f"study.name must be letters, digits, '_', '-', '.', got {s['name']!r}")
    if not isinstance(s["enqueue"], list):
        raise ValueError("study.enqueue must be a list of tables, e.g. [{method: qr, compression: 50}]")
    if cfg.get("exclude") is not None and not isinstance(cfg["exclude"], Mapping):
        raise ValueError("exclude must map method -> reason, e.g. {dhe: 'too slow on CPU'}")
    return cfg


def load_experiment(exp: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    """The base experiment, validated like ``slimembed train`` (unknown model/keys, missing data
    path fail here). Its ``table`` and ``output`` are replaced per trial."""
    from slimembed.ctr.experiment import DEFAULTS, deep_merge, load_config, validate_config

    if isinstance(exp, (str, Path)):
        cfg = load_config(exp)
    elif isinstance(exp, Mapping):
        exp = dict(exp)
        exp.pop("table", None)
        cfg = validate_config(deep_merge(DEFAULTS, exp))
    else:
        raise ValueError(f"experiment must be a mapping or a YAML path, got {type(exp).__name__}")
    cfg["table"] = {"method": "full"}
    cfg["output"] = None
    return cfg


# ---------------------------------------------------------------------------------- plan
@dataclass
class SweepPlan:
    """A validated sweep: the base experiment, the checked space, the full-table bytes."""

    config: Dict[str, Any]
    experiment: Dict[str, Any]
    space: SearchSpace
    full_bytes: int
    budget_bytes: Optional[int]

    @property
    def study(self) -> Dict[str, Any]:
        return self.config["study"]

    @property
    def multi(self) -> bool:
        return self.study["mode"] == "multi"

    @property
    def workdir(self) -> Path:
        return Path(self.study["workdir"])

    @property
    def pruning(self) -> bool:
        return not self.multi and self.study["pruner"] != "none"

    def fingerprint(self) -> Dict[str, Any]:
        """What every worker of a study must agree on (paths excluded: they may differ by machine)."""
        e = self.experiment
        data = {k: v for k, v in e["data"].items() if k not in ("path", "eval_batch_size")}
        train = {k: v for k, v in e["train"].items()
                 if k not in ("checkpoint_dir", "resume", "output_path", "progress", "num_threads", "log_every")}
        return {
            "mode": self.study["mode"],
            "budget_bytes": self.budget_bytes,
            "space": self.space.to_dict()["methods"],
            "model": e["model"], "data": data, "train": train,
            "full_bytes": self.full_bytes,
            "reference": bool(self.study["reference"]),
        }

    def trial_experiment(self, table: Mapping[str, Any], key: int) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.experiment)
        cfg["table"] = dict(table)
        cfg["output"] = None
        if self.study["checkpoints"] or self.pruning:
            cfg["train"]["checkpoint_dir"] = str(self.checkpoint_dir(key))
            cfg["train"]["resume"] = True
        return cfg

    def checkpoint_dir(self, key: int) -> Path:
        return self.workdir / "checkpoints" / self.study["name"] / f"trial_{key:05d}"

    def result_path(self, number: int) -> Path:
        return self.workdir / "results" / self.study["name"] / f"trial_{number:05d}.json"


def prepare(config: Mapping[str, Any], log: Callable[[str], None] = print) -> SweepPlan:
    """Validate everything a sweep needs before any training or storage access.

    Fails at once (``ValueError``/``FileNotFoundError``, saying which and what is allowed) on an
    unknown method or knob, a missing dataset, a budget no method can meet, a compression range
    the budget rules out. Dry-builds every method (meta device) to drop the default knob choices
    the model cannot build and the methods a budget cannot size (printed)."""
    cfg = load_sweep_config(config)  # idempotent on a loaded config
    s = cfg["study"]
    experiment = load_experiment(cfg["experiment"])
    space = resolve_space(cfg.get("methods"), cfg.get("space"), cfg.get("exclude"))
    full = full_table_bytes(experiment)
    budget = s["budget_bytes"]
    if budget is None:
        check_space(space, experiment)
    else:
        need_c = full / float(budget)
        if need_c <= 1:
            log(f"[sweep] note: the budget ({budget:,} bytes) is at least the full tables "
                f"({full:,} bytes): every method meets it")
        # First: can any method meet the budget at all (whatever the space allows)?
        check_space(space, experiment, compression=max(need_c, 1.0), budget_bytes=budget)
        # Then: sample only compressions that meet it.
        for ms in space.methods.values():
            k = ms.knobs.get(COMPRESSION)
            if k is None:
                continue
            if k.kind == "fixed":
                if float(k.value) < need_c:
                    raise ValueError(f"space.{ms.method}.compression {k.value} cannot meet the budget: "
                                     f"{budget:,} bytes needs compression >= {need_c:.3g}")
            elif k.kind == "categorical":
                keep = [v for v in k.choices if float(v) >= need_c]
                if not keep:
                    raise ValueError(f"space.{ms.method}.compression {list(k.choices)}: none meets the budget "
                                     f"({budget:,} bytes needs compression >= {need_c:.3g})")
                ms.knobs[COMPRESSION] = type(k)(COMPRESSION, "categorical", choices=tuple(keep))
            else:
                if k.high < need_c:
                    raise ValueError(
                        f"space.{ms.method}.compression: the budget of {budget:,} bytes needs compression >= "
                        f"{need_c:.3g} (full tables {full:,} bytes), above the space's high end {k.high:g}")
                ms.knobs[COMPRESSION] = k.with_range(max(float(k.low), need_c), float(k.high))
    for m, why in space.excluded.items():
        log(f"[sweep] excluded {m}: {why}")
    for n in space.notes:
        log(f"[sweep] note: {n}")
    for i, t in enumerate(s["enqueue"]):
        if not isinstance(t, Mapping) or t.get("method") not in space.methods:
            raise ValueError(f"study.enqueue[{i}] must be a table of a searched method "
                             f"({', '.join(space.methods)}), got {t!r}")
        ms = space.methods[t["method"]]
        for k, v in t.items():
            if k != "method" and k not in ms.knobs:
                raise ValueError(f"study.enqueue[{i}]: method {t['method']!r} has no searched knob {k!r}; "
                                 f"searched: {', '.join(ms.knobs)}")
            if k != "method" and not ms.knobs[k].contains(v):
                raise ValueError(f"study.enqueue[{i}]: {k}={v!r} is outside the space {ms.knobs[k].to_dict()}")
    tr = experiment["train"]
    if cfg["study"]["mode"] == "budget" and s["pruner"] != "none" and tr.get("eval_every") is None \
            and int(tr.get("epochs", 1)) <= 1:
        log("[sweep] note: no intermediate evaluations (train.eval_every unset, 1 epoch): the pruner "
            "cannot stop trials early; set experiment.train.eval_every")
    return SweepPlan(cfg, experiment, space, full, budget)


def run_sweep(
    config: Union[str, Path, Mapping[str, Any]],
    overrides: Sequence[str] = (),
    n_trials: Optional[int] = None,
    total_trials: Optional[int] = None,
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> WorkerSummary:
    """Validate the config, open (or join) the study and run this worker.

    Example (trains: run it on each worker)::

        summary = run_sweep("sweep.yaml", n_trials=20)
        summary.study_counts["complete"]
    """
    cfg = load_sweep_config(config, overrides)
    if storage is not None:
        cfg["study"]["storage"] = storage
    if study_name is not None:
        cfg["study"]["name"] = study_name
    cfg = load_sweep_config(cfg)  # re-check the overridden values
    if n_trials is None and total_trials is None and cfg["study"]["n_trials"] is None \
            and cfg["study"]["total_trials"] is None:
        raise ValueError("give --n-trials (this worker) or study.total_trials / --total-trials (the study)")
    plan = prepare(cfg, log=log)
    st, desc = resolve_storage(plan.study["storage"], plan.workdir)
    study = open_study(plan, st, log=log)
    worker = SweepWorker(plan, study, desc, log=log)
    summary = worker.run(n_trials, total_trials)
    c = summary.study_counts
    log(f"[sweep] worker {worker_id()} ran {summary.ran} trial(s) ({summary.complete} complete, {summary.pruned} "
        f"pruned, {summary.infeasible} infeasible, {summary.failed} failed); study {plan.study['name']!r}: "
        f"{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed, "
        f"{c.get('running', 0)} running, {c.get('waiting', 0)} waiting")
    log(f"[sweep] report: slimembed report {desc} --study {plan.study['name']}")
    return summary


__all__ = [
    "STUDY_DEFAULTS", "SweepPlan", "SweepWorker", "WorkerSummary", "Lease",
    "load_experiment", "load_sweep_config", "make_pruner", "make_sampler",
    "open_study", "parse_bytes", "prepare", "reap_stale_trials", "resolve_storage", "run_sweep",
    "stale_reason", "train_trial",
]
