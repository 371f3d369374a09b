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
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .space import COMPRESSION, SearchSpace, check_space, full_table_bytes, parse_budget_error, resolve_space

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
LEASE_ATTR = "slimembed:lease"
#: The trial constraint (``Trial.set_constraint``, <= 0 feasible; Optuna 5's successor of
#: ``constraints_func``, read by TPE, NSGA-II and ``best_trial(s)``): bytes over the budget, or
#: over the failing table's own budget when the method cannot be built at its compression.
CONSTRAINT = "bytes_over_budget"
CONFIG_ATTR = "slimembed:sweep"
#: Objective values of a trial that could not be built (AUC of a constant predictor).
INFEASIBLE_AUC = 0.5


# ---------------------------------------------------------------------------------- config
def parse_bytes(v: Any) -> int:
    """``1500000``, ``"1.5MB"``, ``"2 MiB"``, ``"512k"`` -> bytes (KB = 1000, KiB = 1024)."""
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
    check the keys (what each section allows). The experiment is validated by :func:`prepare`."""
    import yaml

    from slimembed.ctr.experiment import deep_merge, parse_override

    if source is None:
        cfg: Dict[str, Any] = {}
    elif isinstance(source, Mapping):
        cfg = copy.deepcopy(dict(source))
    else:
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"sweep config {str(p)!r} does not exist")
        cfg = yaml.safe_load(p.read_text()) or {}
        if not isinstance(cfg, Mapping):
            raise ValueError(f"sweep config {str(p)!r} must hold a mapping, got {type(cfg).__name__}")
        cfg = dict(cfg)
        if isinstance(cfg.get("experiment"), str) and not Path(cfg["experiment"]).is_absolute():
            cfg["experiment"] = str(p.parent / cfg["experiment"])
    for item in overrides:
        cfg = deep_merge(cfg, parse_override(item))
    unknown = sorted(set(cfg) - set(SWEEP_SECTIONS))
    if unknown:
        raise ValueError(f"unknown sweep config sections {unknown}; allowed: {list(SWEEP_SECTIONS)}")
    if cfg.get("experiment") is None:
        raise ValueError("the sweep config needs an 'experiment' (a `slimembed train` config: data, model, train)")
    study = dict(cfg.get("study") or {})
    bad = sorted(set(study) - set(STUDY_DEFAULTS))
    if bad:
        raise ValueError(f"unknown study keys {bad}; allowed: {sorted(STUDY_DEFAULTS)}")
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


# ---------------------------------------------------------------------------------- storage
def resolve_storage(spec: Optional[str], workdir: Union[str, Path]) -> Tuple[Any, str]:
    """``(storage, description)``: ``None`` -> SQLite ``WORKDIR/optuna.db``; ``*.db``/``*.sqlite``
    -> that SQLite file; ``*.log``/``*.journal``/``*.jsonl`` or ``journal:PATH`` -> an Optuna
    ``JournalStorage`` over ``JournalFileBackend(PATH)`` (many processes, one machine or a shared
    file system); anything with ``://`` -> an Optuna RDB URL (``postgresql://``, ``mysql://``,
    ``sqlite:///``) for workers on many machines."""
    import optuna

    spec = None if spec in (None, "") else str(spec)
    if spec is None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        spec = str(Path(workdir) / "optuna.db")
    if spec.startswith("journal:") or (("://" not in spec) and spec.endswith((".log", ".journal", ".jsonl"))):
        path = spec[len("journal:"):] if spec.startswith("journal:") else spec
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"
    if "://" in spec:
        url = spec
    elif spec.endswith((".db", ".sqlite", ".sqlite3")):
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(spec).resolve()}"
    else:
        raise ValueError(f"storage {spec!r}: give a SQLite file (*.db, *.sqlite), a journal file (*.log, "
                         f"*.journal, or journal:PATH) or an Optuna storage URL (postgresql://..., sqlite:///...)")
    kwargs: Dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several local processes on one SQLite file: wait for the write lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    last: Optional[Exception] = None
    for attempt in range(5):  # concurrent first-time schema creation can race on SQLite
        try:
            return optuna.storages.RDBStorage(url, **kwargs), url
        except Exception as e:  # noqa: BLE001
            last = e
            time.sleep(0.2 * (attempt + 1))
    raise last  # type: ignore[misc]


def storage_of(study: Any) -> Any:
    return study._storage  # noqa: SLF001 - the storage the study object wraps (cached for RDB)


def make_sampler(study_cfg: Mapping[str, Any], seed: Optional[int]) -> Any:
    import optuna

    name = study_cfg["sampler"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=int(study_cfg["n_startup_trials"]), multivariate=True,
                                              group=True, constant_liar=True, seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=int(study_cfg["population_size"]), seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(study_cfg: Mapping[str, Any]) -> Any:
    import optuna

    name = study_cfg["pruner"]
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(study_cfg["pruner_startup_trials"]))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def worker_seed(seed: Optional[int]) -> Optional[int]:
    """Sampler seed of this process: ``seed`` mixed with host and pid, so parallel workers given
    the same config do not draw the same random start-up trials (``None`` stays random)."""
    if seed is None:
        return None
    h = hashlib.blake2b(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


def open_study(plan: SweepPlan, storage: Any = None, log: Callable[[str], None] = print) -> Any:
    """Create the study (the one worker that succeeds also stores the config fingerprint and
    enqueues the reference and ``study.enqueue`` trials) or join it (checking the fingerprint)."""
    import optuna

    s = plan.study
    if storage is None:
        storage, _ = resolve_storage(s["storage"], plan.workdir)
    directions = ["maximize", "minimize"] if plan.multi else ["maximize"]
    sampler = make_sampler(s, worker_seed(s["seed"]))
    pruner = make_pruner(s)
    created = False
    try:
        study = optuna.create_study(storage=storage, study_name=s["name"], directions=directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=s["name"], storage=storage, sampler=sampler, pruner=pruner)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ValueError(f"study {s['name']!r} has directions {have}, but mode {s['mode']!r} needs {directions}: "
                         "use another study name")
    fp = json.loads(json.dumps(plan.fingerprint(), default=str))
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, fp)
    elif stored != fp:
        diff = sorted(k for k in set(fp) | set(stored) if fp.get(k) != stored.get(k))
        raise ValueError(f"study {s['name']!r} was created by a different sweep config (differs in: "
                         f"{', '.join(diff)}); use another study name or the same config")
    if created:
        if s["reference"]:
            study.enqueue_trial({}, user_attrs={"reference": "full"})
        for t in s["enqueue"]:
            ms = plan.space.methods[t["method"]]
            params = {"method": t["method"], **{ms.param_name(k): v for k, v in t.items() if k != "method"}}
            study.enqueue_trial(params)
        log(f"[sweep] created study {s['name']!r}")
    else:
        log(f"[sweep] joined study {s['name']!r} ({len(study.get_trials(deepcopy=False))} trials so far)")
    return study


# ---------------------------------------------------------------------------------- leases
def _host_key() -> str:
    """This host and pid namespace (a pid is only meaningful inside one)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


HOST_KEY = _host_key()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead too
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """Renew ``slimembed:lease`` of a running trial every ``interval`` s on a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lease-{trial_id}")

    def renew(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, LEASE_ATTR, {
            "host": socket.gethostname(), "node": HOST_KEY, "pid": os.getpid(), "time": time.time()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - finished trial, transient lock: try again later
                pass

    def __enter__(self) -> "Lease":
        self.renew()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stale_reason(trial: Any, grace_period: float, now: Optional[float] = None) -> Optional[str]:
    """Why a RUNNING ``trial`` is presumed dead (``None``: alive)."""
    now = time.time() if now is None else now
    lease = trial.system_attrs.get(LEASE_ATTR)
    if lease:
        pid = int(lease.get("pid") or 0)
        if lease.get("node") == HOST_KEY and pid > 0 and not _pid_alive(pid):
            return f"its worker {lease.get('host')}:{lease.get('pid')} is gone"
        last = float(lease.get("time", 0))
    else:
        last = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    if now - last > grace_period:
        return f"no heartbeat for {now - last:.0f} s (grace period {grace_period:g} s)"
    return None


def reap_stale_trials(study: Any, grace_period: float, log: Callable[[str], None] = print) -> List[int]:
    """Fail the RUNNING trials of dead workers and re-queue each with the same parameters
    (``retry_of``: the first trial of the chain, whose checkpoint the retry resumes).
    Safe to run from any number of workers: only the one whose FAIL lands re-queues."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_of(study)
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = stale_reason(t, grace_period)
        if why is None:
            continue
        try:
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile, or another worker failed it first
        root = int(t.user_attrs.get("retry_of", t.number))
        attrs = {"retry_of": root, "retried_from": t.number}
        if t.user_attrs.get("reference"):
            attrs["reference"] = t.user_attrs["reference"]
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        log(f"[sweep] trial {t.number} failed: {why}; re-queued (retry of trial {root})")
        requeued.append(t.number)
    return requeued


# ---------------------------------------------------------------------------------- training
class _Pruned(Exception):
    def __init__(self, record: Dict[str, Any]) -> None:
        super().__init__("pruned")
        self.record = record


def train_trial(cfg: Mapping[str, Any], report: Optional[Callable[[float, int], bool]] = None) -> Dict[str, Any]:
    """Train one experiment via :func:`slimembed.ctr.experiment.run_experiment`.

    With ``report(val_auc, step) -> prune?`` the training runs in segments ending at each
    evaluation point (``train.eval_every`` steps, else each epoch), resuming from
    ``train.checkpoint_dir`` (required), reports every new validation AUC and raises ``_Pruned``
    when ``report`` says so. The final record equals one uninterrupted run's."""
    from slimembed.ctr.experiment import run_experiment

    cfg = copy.deepcopy(dict(cfg))
    train = cfg["train"]
    if report is None:
        return run_experiment(cfg)
    if not train.get("checkpoint_dir"):
        raise ValueError("segmented training needs train.checkpoint_dir")
    every = train.get("eval_every")
    epochs = int(train.get("epochs", 1))
    user_max = train.get("max_steps")
    reported: set = set()
    wall = 0.0
    seg = 1
    last_steps = -1
    while True:
        c = copy.deepcopy(cfg)
        c["train"]["resume"] = True
        if every:
            stop = seg * int(every)
            c["train"]["max_steps"] = stop if user_max is None else min(stop, int(user_max))
        else:
            c["train"]["epochs"] = min(seg, epochs)
        rec = run_experiment(c)
        wall += float(rec.get("wall_time_s") or 0.0)
        prune = False
        for h in rec.get("history", []):
            if h.get("val_auc") is not None and h["step"] not in reported:
                reported.add(h["step"])
                prune = bool(report(float(h["val_auc"]), int(h["step"])))
        done = (rec.get("stopped_early") or rec.get("epochs_completed", 0) >= epochs
                or (user_max is not None and rec.get("steps", 0) >= int(user_max))
                or rec.get("steps", 0) == last_steps)
        last_steps = rec.get("steps", 0)
        rec["config"] = {**rec["config"], "max_steps": user_max, "epochs": epochs}
        rec.setdefault("extra", {})["experiment"] = cfg
        rec["wall_time_s"] = wall
        rec["segments"] = seg
        if done:
            return rec
        if prune:
            raise _Pruned(rec)
        seg += 1


def _compact(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The record's essentials as user attrs (the full record is the trial's JSON file)."""
    mem = record.get("memory") or {}
    keep = ("metrics", "best", "wall_time_s", "train_time_s", "samples_per_s", "train_samples", "steps",
            "epochs_completed", "stopped_early", "segments", "created")
    out = {k: record.get(k) for k in keep if k in record}
    out["memory"] = mem
    out["config"] = (record.get("extra") or {}).get("experiment")
    return out


def _fmt_table(table: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in table.items() if k != "method")
    return f"{table.get('method')}({args})"


@dataclass
class WorkerSummary:
    study: str
    storage: str
    ran: int = 0
    complete: int = 0
    pruned: int = 0
    infeasible: int = 0
    failed: int = 0
    requeued: int = 0
    study_counts: Dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


class SweepWorker:
    """One worker process of a study (see the module docstring)."""

    def __init__(self, plan: SweepPlan, study: Any, storage_desc: str = "",
                 log: Callable[[str], None] = print) -> None:
        self.plan, self.study, self.log = plan, study, log
        self.summary = WorkerSummary(plan.study["name"], storage_desc)

    # ------------------------------------------------------------ counting
    def _counts(self) -> Dict[str, int]:
        from optuna.trial import TrialState

        out = {s.name.lower(): 0 for s in TrialState}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name.lower()] += 1
        return out

    def _rank(self, number: int) -> int:
        """Live or finished trials numbered below ``number`` (who gets the cap's last slots)."""
        from optuna.trial import TrialState

        live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=live) if t.number < number)

    # ------------------------------------------------------------ loop
    def run(self, n_trials: Optional[int] = None, total_trials: Optional[int] = None) -> WorkerSummary:
        from optuna.trial import TrialState

        s = self.plan.study
        n_trials = s["n_trials"] if n_trials is None else n_trials
        total = s["total_trials"] if total_trials is None else total_trials
        if n_trials is None and total is None:
            raise ValueError("give --n-trials (this worker) or study.total_trials / --total-trials (the study)")
        grace, beat = float(s["grace_period"]), float(s["heartbeat_interval"])
        waiting_said = False
        while n_trials is None or self.summary.ran < n_trials:
            self.summary.requeued += len(reap_stale_trials(self.study, grace, self.log))
            if total is not None:
                c = self._counts()
                if c["complete"] + c["pruned"] >= total:
                    break
                if c["complete"] + c["pruned"] + c["running"] >= total:
                    if not waiting_said:
                        self.log(f"[sweep] the study's last {c['running']} trial(s) run in other workers; waiting")
                        waiting_said = True
                    time.sleep(min(2.0, beat))
                    continue
            trial = self.study.ask()
            if total is not None and self._rank(trial.number) >= total:
                # Another worker took the last slot at the same moment: back to the queue, unrun.
                storage_of(self.study).set_trial_state_values(trial._trial_id, state=TrialState.WAITING)  # noqa: SLF001
                continue
            self._run_trial(trial)
        self.summary.study_counts = self._counts()
        return self.summary

    def _run_trial(self, trial: Any) -> None:
        import optuna
        from optuna.trial import TrialState

        plan, s = self.plan, self.plan.study
        self.summary.ran += 1
        with Lease(storage_of(self.study), trial._trial_id, s["heartbeat_interval"]):  # noqa: SLF001
            try:
                outcome, values, record = self._objective(trial)
            except KeyboardInterrupt:
                self.study.tell(trial, state=TrialState.FAIL)
                self.study.enqueue_trial(dict(trial.params), user_attrs={
                    "retry_of": int(trial.user_attrs.get("retry_of", trial.number)), "retried_from": trial.number,
                    **({"reference": "full"} if trial.user_attrs.get("reference") else {})})
                self.log(f"[sweep] interrupted: trial {trial.number} re-queued")
                raise
            except Exception as e:  # noqa: BLE001 - a failing trial must not stop the sweep
                msg = f"{type(e).__name__}: {e}"
                trial.set_user_attr("status", "failed")
                trial.set_user_attr("error", msg[:2000])
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
                self.study.tell(trial, state=TrialState.FAIL)
                self.summary.failed += 1
                self.log(f"[sweep] trial {trial.number} failed: {msg}")
                self._write_result(trial, "failed", None, {"error": msg})
                return
        if outcome == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
            self.summary.pruned += 1
        else:
            self.study.tell(trial, values)
            if outcome == "infeasible":
                self.summary.infeasible += 1
            else:
                self.summary.complete += 1
        self._write_result(trial, outcome, values, record)
        if not s["keep_checkpoints"]:
            shutil.rmtree(plan.checkpoint_dir(int(trial.user_attrs.get("retry_of", trial.number))),
                          ignore_errors=True)

    def _write_result(self, trial: Any, status: str, values: Any, record: Optional[Mapping[str, Any]]) -> None:
        from slimembed.ctr.trainer import atomic_write_json

        out = dict(record or {})
        out["sweep"] = {
            "study": self.plan.study["name"], "trial": trial.number, "status": status,
            "params": dict(trial.params), "values": values,
            "user_attrs": {k: v for k, v in storage_of(self.study).get_trial(trial._trial_id).user_attrs.items()  # noqa: SLF001
                           if k not in ("result", "traceback")},
        }
        try:
            atomic_write_json(out, self.plan.result_path(trial.number))
        except OSError as e:  # the study holds the record anyway
            self.log(f"[sweep] could not write {self.plan.result_path(trial.number)}: {e}")

    def _finished_twin(self, table: Mapping[str, Any]) -> Any:
        """A COMPLETE trial of the study that trained exactly ``table`` (``None`` if none)."""
        from optuna.trial import TrialState

        want = json.dumps(table, sort_keys=True, default=str)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("table") is not None and \
                    json.dumps(t.user_attrs["table"], sort_keys=True, default=str) == want:
                return t
        return None

    def _objective(self, trial: Any) -> Tuple[str, Any, Optional[Dict[str, Any]]]:
        """``(outcome, values, record)``; outcome in ok | infeasible | pruned."""
        plan = self.plan
        ref = bool(trial.user_attrs.get("reference"))
        table = {"method": "full"} if ref else plan.space.suggest(trial)
        key = int(trial.user_attrs.get("retry_of", trial.number))
        cfg = plan.trial_experiment(table, key)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("method", table["method"])
        trial.set_user_attr("table", table)
        ck = plan.checkpoint_dir(key)
        marker = ck / "table.json"
        if ck.exists():
            same = marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(table))
            if same and (ck / "last.pt").exists():
                trial.set_user_attr("resumed", True)
            elif not same:
                shutil.rmtree(ck, ignore_errors=True)
        if "checkpoint_dir" in cfg["train"]:
            ck.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(table))
        limit = plan.budget_bytes
        dup = self._finished_twin(table)
        if dup is not None:  # the sampler proposed a finished configuration again: same seed, same result
            for k, v in dup.user_attrs.items():
                if k not in ("worker", "method", "table", "resumed", "retry_of", "retried_from", "reference"):
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", dup.number)
            trial.set_constraint(CONSTRAINT, float(dup.user_attrs.get("constraint", 0.0)))
            self.log(f"[sweep] trial {trial.number}: {_fmt_table(table)} = trial {dup.number}: result reused")
            values = list(dup.values) if plan.multi else dup.values[0]
            return ("infeasible" if dup.user_attrs.get("status") == "infeasible" else "ok"), values, \
                {"duplicate_of": dup.number}
        t0 = time.perf_counter()
        report = None
        if plan.pruning:
            def report(value: float, step: int) -> bool:
                trial.report(value, step)
                return trial.should_prune()
        try:
            record = train_trial(cfg, report)
            outcome = "ok"
        except _Pruned as p:
            record, outcome = p.record, "pruned"
        except ValueError as e:
            nb = parse_budget_error(e)
            if nb is None:
                raise
            need, budget = nb
            trial.set_user_attr("status", "infeasible")
            trial.set_user_attr("feasible", False)
            trial.set_user_attr("infeasible", str(e))
            trial.set_user_attr("constraint", float(need - budget))
            trial.set_constraint(CONSTRAINT, float(need - budget))
            trial.set_user_attr("full_bytes", plan.full_bytes)
            self.log(f"[sweep] trial {trial.number}: {_fmt_table(table)} infeasible: {e}")
            values: Any = [INFEASIBLE_AUC, float(need)] if plan.multi else INFEASIBLE_AUC
            return "infeasible", values, {"status": "infeasible", "message": str(e), "table": table,
                                          "needed_bytes": need, "budget_bytes": budget}
        mem = record["memory"]
        val = (record["metrics"].get("val") or {})
        test = (record["metrics"].get("test") or {})
        auc = val.get("auc")
        if auc is None or not math.isfinite(float(auc)):
            raise FloatingPointError(f"validation AUC is {auc} (training diverged?)")
        tb = int(mem["table_bytes"])
        over = tb - limit if limit is not None else 0
        feasible = over <= 0
        attrs = {
            "status": outcome if feasible or outcome == "pruned" else "over_budget",
            "feasible": feasible, "constraint": float(over) if not feasible else 0.0,
            "val_auc": float(auc), "val_logloss": val.get("logloss"),
            "test_auc": test.get("auc"), "test_logloss": test.get("logloss"),
            "table_bytes": tb, "full_bytes": int(mem["full_bytes"]), "ratio": mem.get("ratio"),
            "total_bytes": int(mem["total_bytes"]),
            "wall_time_s": time.perf_counter() - t0, "train_time_s": record.get("train_time_s"),
            "steps": record.get("steps"),
            "history": [[h["step"], h.get("val_auc")] for h in record.get("history", [])],
            "result": _compact(record),
        }
        if ref:
            attrs["status"] = "reference" if outcome == "ok" else outcome
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_constraint(CONSTRAINT, float(over) if not feasible else 0.0)
        ratio = mem["full_bytes"] / tb if tb else float("nan")
        self.log(f"[sweep] trial {trial.number}: {_fmt_table(table)} -> val AUC {auc:.4f}, test AUC "
                 f"{(test.get('auc') or float('nan')):.4f}, tables {tb / 2**20:.3f} MiB ({ratio:.1f}x)"
                 f"{' PRUNED' if outcome == 'pruned' else ''}{'' if feasible else ' OVER BUDGET'}, "
                 f"{attrs['wall_time_s']:.1f} s")
        values = [float(auc), float(tb)] if plan.multi else float(auc)
        return outcome, values, record


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

    Usage (trains models, so not a doctest)::

        summary = run_sweep("sweep.yaml", n_trials=20)          # run on each worker
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
