"""The sweep's workers (:mod:`slimembed.search.sweep`): the Optuna storage, sampler and pruner,
trial leases and dead-worker recovery, and the trial loop that trains each trial.

Split out of ``sweep.py`` (which re-exports these names); see that module's docstring for the
config, the objectives, pruning, workers and dead workers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .space import parse_budget_error

if TYPE_CHECKING:  # annotations only: sweep.py imports this module
    from .sweep import SweepPlan

LEASE_ATTR = "slimembed:lease"
#: The trial constraint (``Trial.set_constraint``, <= 0 feasible; Optuna 5's successor of
#: ``constraints_func``, read by TPE, NSGA-II and ``best_trial(s)``): bytes over the budget, or
#: over the failing table's own budget when the method cannot be built at its compression.
CONSTRAINT = "bytes_over_budget"
CONFIG_ATTR = "slimembed:sweep"
#: Objective values of a trial that could not be built (AUC of a constant predictor).
INFEASIBLE_AUC = 0.5


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


__all__ = [
    "CONFIG_ATTR", "CONSTRAINT", "INFEASIBLE_AUC", "LEASE_ATTR", "Lease", "SweepWorker", "WorkerSummary",
    "make_pruner", "make_sampler", "open_study", "reap_stale_trials", "resolve_storage", "stale_reason",
    "train_trial", "worker_id",
]
