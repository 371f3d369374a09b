"""The fixed benchmark grid (``slimembed benchmark``): every registered method x budgets x seeds,
one model and one dataset per run, with a results table (Markdown + CSV) and the AUC-vs-bytes plot.

Default grid (:data:`DEFAULT_BENCHMARK`), sized for about an hour on 2 CPU cores: 1M synthetic
Criteo-like rows (scale 0.02: ~730k values, 800k train / 100k val / 100k test), DeepFM with
``embedding_dim`` 16 and an MLP [256, 128], 1 epoch of Adam at batch 4096, budgets
{2x, 10x, 100x, 1000x} of the full fp32 tables, seeds {0, 1}, plus the full table per seed as the
reference: ~2 x 25 trained cells of ~1 minute (hashing-family tables train at ~20k samples/s on
one loaded core; the full table with dense Adam at ~10k/s), the rest infeasible at 1000x.
``tt`` (~1.8k samples/s: ~9 min a cell) and ``dhe`` (~2.5k-11k samples/s: several minutes a cell) are excluded
by default, and the OptEmbed tables are left out (their memory comes from their own pipeline,
``slimembed optembed``); the reasons are printed, and a config can change all of it
(``exclude: {}`` runs every method). ``mde`` cells are infeasible with DeepFM: its 1-dim
first-order table cannot shrink by dimension (recorded as such).

Each cell is one experiment (:func:`slimembed.ctr.experiment.run_experiment`) and one JSON file
``OUT/cells/METHOD__BUDGETx__seedS.json`` (the run's record plus a ``benchmark`` section with the
cell and its ``status``): ``ok``, ``infeasible`` (the budget is below the method's minimum: found by
a dry build before any training, recorded with the message), ``excluded`` (with the reason) or
``failed`` (with the error). A rerun skips the ``ok``/``infeasible`` cells whose experiment is
unchanged, so a cut-off benchmark continues where it stopped.

Config (YAML, merged onto the defaults)::

    experiment: {data: {path: runs/benchmark/data}, model: {...}, train: {...}}
    generate: {rows: 1000000, seed: 0}     # make data.path with the synthetic generator if missing
    methods: null                          # default: every registered method a budget can size
    budgets: [2, 10, 100, 1000]            # compression ratios vs the full fp32 tables
    seeds: [0, 1]
    knobs: {qr: {operation: mult}}         # fixed method arguments (default: each method's own)
    exclude: {tt: "too slow on CPU"}
    reference: true                        # the full table once per seed
    out: runs/benchmark
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import json
import math
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .space import check_method, not_swept_reason, parse_knob, probe, allowed_knobs

DEFAULT_BENCHMARK: Dict[str, Any] = {
    "experiment": {
        "data": {"path": "runs/benchmark/data", "batch_size": 4096, "eval_batch_size": 16384},
        "model": {"name": "deepfm", "embedding_dim": 16, "hidden_units": [256, 128]},
        # one thread: on a shared 2-core machine a 2-thread pool oversubscribed by other processes
        # runs several times slower (set 2 on an idle machine)
        "train": {"epochs": 1, "lr": 0.001, "embedding_optimizer": "adam", "seed": 0,
                  "early_stop_patience": None, "progress": False, "num_threads": 1},
    },
    "generate": {"rows": 1_000_000, "seed": 0},
    "methods": None,
    "budgets": [2, 10, 100, 1000],
    "seeds": [0, 1],
    "knobs": {},
    "exclude": {
        "tt": "too slow for the default CPU grid: ~1.8k samples/s on one core against ~20k for the "
              "hashing tables (three TT cores, two batched matmuls per id): ~9 min a cell at 800k rows",
        "dhe": "slow for the default CPU grid: ~2.5k-11k samples/s forward+backward (`slimembed bench "
               "tables`; 1024 hashes + a 5-layer MLP per distinct id): ~3-6 min a cell at 800k rows",
    },
    "reference": True,
    "out": "runs/benchmark",
}
SECTIONS = tuple(DEFAULT_BENCHMARK)
DONE = ("ok", "infeasible")


def load_benchmark_config(source: Union[str, Path, Mapping[str, Any], None] = None,
                          overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Defaults <- YAML file/dict <- ``section.key=value`` overrides; checks keys, methods, knobs,
    budgets and seeds (before any data is generated or read)."""
    from slimembed.ctr.config import deep_merge, load_config

    user = load_config(source, "benchmark", overrides)  # keys and types; the grid's rules follow
    unknown = sorted(set(user) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown benchmark config sections {unknown}; allowed: {list(SECTIONS)}")
    cfg = deep_merge(DEFAULT_BENCHMARK, {k: v for k, v in user.items() if k not in ("exclude", "knobs")})
    if isinstance(user.get("experiment"), Mapping) and "model" in user["experiment"]:
        cfg["experiment"]["model"] = copy.deepcopy(user["experiment"]["model"])  # a model replaces, not merges
    # exclude/knobs replace the defaults (an empty mapping runs everything)
    for k in ("exclude", "knobs"):
        if k in user:
            cfg[k] = copy.deepcopy(user[k]) or {}
    for k in ("exclude", "knobs"):
        if not isinstance(cfg[k], Mapping):
            raise ValueError(f"{k} must be a mapping of method -> ..., got {type(cfg[k]).__name__}")
    budgets = cfg["budgets"]
    if not isinstance(budgets, list) or not budgets or any(
            isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 1 for b in budgets):
        raise ValueError(f"budgets must be a non-empty list of compression ratios > 1, got {budgets!r}")
    seeds = cfg["seeds"]
    if not isinstance(seeds, list) or not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for m in cfg["exclude"]:
        check_method(m, "exclude")
    for m, kn in cfg["knobs"].items():
        check_method(m, "knobs")
        allowed, solved = allowed_knobs(m)
        if not isinstance(kn, Mapping):
            raise ValueError(f"knobs.{m} must map knob -> value, got {kn!r}")
        for k, v in kn.items():
            if k == "compression" or k not in allowed:
                hint = f"; solved from the budget (not a knob): {', '.join(solved)}" if solved else ""
                ok = [a for a in allowed if a != "compression"]
                raise ValueError(f"method {m!r} has no knob {k!r}; allowed: {', '.join(ok)}{hint}")
            if parse_knob(k, v, f"knobs.{m}").kind != "fixed":
                raise ValueError(f"knobs.{m}.{k}: the grid takes one fixed value per knob, got {v!r}")
    from slimembed.tables import available_methods

    if cfg["methods"] is None:
        cfg["methods"] = [m for m in available_methods() if skip_reason(m) is None]
    else:
        if not isinstance(cfg["methods"], list) or not cfg["methods"]:
            raise ValueError(f"methods must be a non-empty list, got {cfg['methods']!r}")
        for m in cfg["methods"]:
            check_method(m, "methods")
            if m == "full":
                raise ValueError("'full' is the reference of every grid (reference: true), not a grid method")
    gen = cfg.get("generate")
    if gen is not None:
        from slimembed.datasets import generate

        if not isinstance(gen, Mapping):
            raise ValueError("generate must be a mapping of synthetic-data arguments (rows, seed, scale, ...) or null")
        allowed_gen = set(inspect.signature(generate).parameters) - {"out_dir", "format", "progress"}
        bad = sorted(set(gen) - allowed_gen)
        if bad:
            raise ValueError(f"unknown generate keys {bad}; allowed: {sorted(allowed_gen)}")
    return cfg


def cell_id(method: str, budget: float, seed: int) -> str:
    return f"{method}__{budget:g}x__seed{seed}"


def _fingerprint(exp: Mapping[str, Any]) -> str:
    e = {k: v for k, v in exp.items() if k != "output"}
    e["data"] = {k: v for k, v in e["data"].items() if k not in ("path", "eval_batch_size")}
    # Where a cell trains (threads, device) is not what it measures: a cell run on a GPU machine
    # counts for the same grid (its record and the results table say which device).
    e["train"] = {k: v for k, v in e["train"].items()
                  if k not in ("progress", "num_threads", "log_every", "device")}
    return hashlib.sha1(json.dumps(e, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe_fingerprint(exp: Mapping[str, Any]) -> Optional[str]:
    try:
        return _fingerprint(exp)
    except (KeyError, TypeError, AttributeError):
        return None


def ensure_data(cfg: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    """Generate the synthetic dataset at ``experiment.data.path`` if it is missing and
    ``generate`` is set; else a missing path fails (in :func:`load_experiment`)."""
    path = Path(cfg["experiment"]["data"]["path"])
    if cfg.get("generate") is None:
        return
    if (path / "schema.json").exists():
        _check_generated(path, cfg["generate"])
        return
    from slimembed.datasets import generate

    t0 = time.perf_counter()
    log(f"[benchmark] generating synthetic data into {path} ({cfg['generate']}) ...")
    rep = generate(str(path), format="processed", **cfg["generate"])
    log(f"[benchmark] generated {rep.rows:,} rows in {time.perf_counter() - t0:.0f} s "
        f"(teacher AUC {rep.teacher_auc:.4f}: the best achievable)")


def synthetic_mismatch(path: Union[str, Path], gen: Mapping[str, Any]) -> Optional[Dict[str, Tuple[Any, Any]]]:
    """How the synthetic data at ``path`` differs from what :func:`slimembed.datasets.generate`
    would make from the arguments ``gen`` (rows, seed, scale, profile, knobs): ``{key: (wanted,
    found)}``, empty when it is that data, ``None`` when ``path`` holds no synthetic data.

    The one data-cache rule of the benchmark and of the reproduction grids
    (``examples/reproduce/grid.py``): data is reused exactly when this is empty
    (docs/architecture.md §5). Data made before profiles existed reads as ``v1``.
    """
    from slimembed.ctr.experiment import data_identity
    from slimembed.datasets.synthetic import DEFAULT_PROFILE, PROFILES, generate, resolve_profile

    have = data_identity(path)
    if "profile" not in have:
        return None
    # everything `generate` would use: its defaults, the profile's knobs, then what `gen` says
    defaults = {k: p.default for k, p in inspect.signature(generate).parameters.items()
                if k in ("rows", "scale", "seed", "target_ctr", "small_field_max")}
    want = {**defaults, **gen}
    profile = want.pop("profile", None) or DEFAULT_PROFILE
    overrides = {k: want.pop(k) for k in list(want) if k in PROFILES.get(profile, {})}
    want.update(resolve_profile(profile, **overrides), profile=profile)
    return {k: (v, have[k]) for k, v in want.items() if k in have and have[k] != v}


def _check_generated(path: Path, gen: Mapping[str, Any]) -> None:
    """Existing synthetic data at ``path`` must be what ``generate`` asks for (rows, seed, profile,
    knobs): a grid never trains on data of another profile without saying so."""
    diff = synthetic_mismatch(path, gen)
    if diff:  # None: not synthetic; `generate` only says how to make the data when it is missing
        detail = ", ".join(f"{k}: config {a!r}, data {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{path} holds synthetic data other than `generate` asks for ({detail}); "
                         "point experiment.data.path elsewhere or remove the directory")


def skip_reason(method: str) -> Optional[str]:
    """Why grids leave ``method`` out by default (``None``: it is swept), from its table class."""
    from slimembed.tables import get_table_class

    cls = get_table_class(method)
    if hasattr(cls, "not_swept_reason"):
        return cls.not_swept_reason
    return not_swept_reason(method)  # tables without the class attribute yet (docs/architecture.md §3)


def plan_cells(cfg: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The grid in run order: per seed, the reference, then each method from the highest budget."""
    cells = []
    for seed in cfg["seeds"]:
        if cfg["reference"]:
            cells.append({"id": cell_id("full", 1, seed), "method": "full", "budget": 1, "seed": seed,
                          "table": {"method": "full"}})
        for m in cfg["methods"]:
            for b in cfg["budgets"]:
                table = {"method": m, "compression": b, **dict(cfg["knobs"].get(m) or {})}
                cells.append({"id": cell_id(m, b, seed), "method": m, "budget": b, "seed": seed, "table": table})
    return cells


def run_benchmark(config: Union[str, Path, Mapping[str, Any], None] = None, overrides: Sequence[str] = (),
                  out: Optional[str] = None, dry_run: bool = False,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or continue) the grid; returns the summary and writes ``OUT/results.{md,csv}`` and
    ``OUT/benchmark.png``."""
    from slimembed.ctr.experiment import run_experiment
    from slimembed.ctr.trainer import atomic_write_json

    from .sweep import load_experiment

    cfg = load_benchmark_config(config, overrides)
    if out is not None:
        cfg["out"] = out
    outdir = Path(cfg["out"])
    for m, why in cfg["exclude"].items():
        if m in cfg["methods"]:
            log(f"[benchmark] excluded {m}: {why}")
    ensure_data(cfg, log)
    base = load_experiment(cfg["experiment"])
    cells = plan_cells(cfg)
    (outdir / "cells").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    todo: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []
    n_skip = 0
    for cell in cells:
        exp = copy.deepcopy(base)
        exp["table"] = dict(cell["table"])
        exp["train"]["seed"] = cell["seed"]
        fp = _fingerprint(exp)
        path = outdir / "cells" / f"{cell['id']}.json"
        info = {**cell, "fingerprint": fp}
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
            ob = old.get("benchmark") or {}
            stored = (old.get("extra") or {}).get("experiment")
            # the stored experiment re-fingerprinted, so cells written by an older fingerprint
            # rule (or on another device) still count
            same = ob.get("fingerprint") == fp or (isinstance(stored, dict) and _safe_fingerprint(stored) == fp)
            if ob.get("status") in DONE and same:
                n_skip += 1
                continue
        if cell["method"] in cfg["exclude"]:
            atomic_write_json({"benchmark": {**info, "status": "excluded", "message": cfg["exclude"][cell["method"]]}},
                              path)
            continue
        pr = probe(exp, cell["table"])
        if pr.status == "infeasible":
            atomic_write_json({"benchmark": {**info, "status": "infeasible", "message": pr.message,
                                             "needed_bytes": pr.needed, "budget_bytes": pr.budget}}, path)
            log(f"[benchmark] {cell['id']}: infeasible ({pr.message})")
            continue
        if pr.status in ("not_budgeted", "error"):
            why = skip_reason(cell["method"]) or pr.message
            status = "excluded" if pr.status == "not_budgeted" else "failed"
            atomic_write_json({"benchmark": {**info, "status": status, "message": why}}, path)
            log(f"[benchmark] {cell['id']}: {status}: {why}")
            continue
        todo.append((exp, {**info, "planned_table_bytes": pr.table_bytes}))
    log(f"[benchmark] {len(cells)} cells: {n_skip} already done, {len(todo)} to train"
        + (" (dry run: nothing trained)" if dry_run else ""))
    if not dry_run:
        for i, (exp, info) in enumerate(todo, 1):
            path = outdir / "cells" / f"{info['id']}.json"
            t0 = time.perf_counter()
            try:
                rec = run_experiment(exp)
            except Exception as e:  # noqa: BLE001 - one cell's failure must not stop the grid
                atomic_write_json({"benchmark": {**info, "status": "failed", "message": f"{type(e).__name__}: {e}",
                                                 "traceback": traceback.format_exc()[-4000:]}}, path)
                log(f"[benchmark] [{i}/{len(todo)}] {info['id']}: FAILED: {type(e).__name__}: {e}")
                continue
            rec["benchmark"] = {**info, "status": "ok"}
            atomic_write_json(rec, path)
            t = rec["metrics"].get("test") or {}
            log(f"[benchmark] [{i}/{len(todo)}] {info['id']}: test AUC {t.get('auc') or float('nan'):.4f}, tables "
                f"{rec['memory']['table_bytes'] / 2**20:.3f} MiB ({rec['memory']['ratio']:.1f}x), "
                f"{time.perf_counter() - t0:.0f} s")
    summary = write_results(outdir, cells, cfg)
    summary["seconds"] = time.perf_counter() - t_start
    log(f"[benchmark] wrote {summary['files']['md']}, {summary['files']['csv']}, {summary['files']['png']} "
        f"({summary['seconds']:.0f} s)")
    return summary


def _mean_std(xs: List[float]) -> Tuple[Optional[float], Optional[float]]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def write_results(outdir: Path, cells: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Aggregate the cell files over seeds into ``results.csv``, ``results.md``, ``benchmark.png``."""
    from .report import Point, plot, point_from_record

    rows: Dict[Tuple[str, float], Dict[str, Any]] = {}
    order: List[Tuple[str, float]] = []
    for cell in cells:
        k = (cell["method"], float(cell["budget"]))
        if k not in rows:
            rows[k] = {"method": cell["method"], "budget": cell["budget"], "cells": []}
            order.append(k)
        path = outdir / "cells" / f"{cell['id']}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"benchmark": {**cell, "status": "pending"}}
        rows[k]["cells"].append(rec)
    from .stats import INTERVAL_METHOD, paired_by_seed

    def device_of(c: Mapping[str, Any]) -> str:
        return str((c.get("config") or {}).get("device", "cpu"))

    def seed_aucs(cs: Sequence[Mapping[str, Any]]) -> Dict[int, float]:
        out = {}
        for c in cs:
            auc = ((c.get("metrics") or {}).get("test") or {}).get("auc")
            if auc is not None:
                out[int(c["benchmark"]["seed"])] = float(auc)
        return out

    # one device per table: a (method, budget) row per device its cells ran on
    devices = sorted({device_of(c) for k in order for c in rows[k]["cells"]
                      if (c.get("benchmark") or {}).get("status") == "ok"}) or ["cpu"]
    ok_by = {(k, d): [c for c in rows[k]["cells"] if (c.get("benchmark") or {}).get("status") == "ok"
                      and device_of(c) == d] for k in order for d in devices}
    refs = {d: seed_aucs(next((ok_by[(k, d)] for k in order if k[0] == "full"), [])) for d in devices}
    hashes = {(b, d): seed_aucs(ok_by.get((("hash", b), d), [])) for (_, b) in order for d in devices}
    table: List[Dict[str, Any]] = []
    points: List[Any] = []
    for d in devices:
        for k in order:
            r = rows[k]
            statuses = [(c.get("benchmark") or {}).get("status", "pending") for c in r["cells"]
                        if (c.get("benchmark") or {}).get("status") != "ok" or device_of(c) == d]
            ok = ok_by[(k, d)]
            if not ok and len(devices) > 1 and d != devices[0]:
                continue  # untrained cells are listed once, under the first device
            pts = [point_from_record(c, c["benchmark"]["id"]) for c in ok]
            auc_m, auc_s = _mean_std([p.test_auc for p in pts])
            vauc_m, _ = _mean_std([p.val_auc for p in pts])
            ll_m, _ = _mean_std([p.test_logloss for p in pts])
            tb = [p.table_bytes for p in pts if p.table_bytes is not None]
            times = [c.get("train_time_s") for c in ok]
            sps = [c.get("samples_per_s") for c in ok]
            status = statuses[0] if len(set(statuses)) == 1 else "/".join(sorted(set(statuses)))
            msg = next(((c.get("benchmark") or {}).get("message") for c in r["cells"]
                        if (c.get("benchmark") or {}).get("message")), "")
            mine = seed_aucs(ok)
            vs_full = paired_by_seed(mine, refs[d]) if r["method"] != "full" else None
            vs_hash = (paired_by_seed(mine, hashes.get((k[1], d), {}))
                       if r["method"] not in ("full", "hash") else None)
            row = {
                "method": r["method"], "budget": r["budget"], "status": status, "seeds_done": len(ok),
                "table_bytes": int(statistics.fmean(tb)) if tb else None,
                "ratio": (pts[0].full_bytes / statistics.fmean(tb)) if tb and pts[0].full_bytes else None,
                "test_auc": auc_m, "test_auc_std": auc_s, "val_auc": vauc_m, "test_logloss": ll_m,
                "train_time_s": _mean_std(times)[0], "samples_per_s": _mean_std(sps)[0], "message": msg,
                "device": d if ok else "-",
                "diff_vs_full": None if vs_full is None or vs_full.mean is None else vs_full.to_dict(),
                "diff_vs_hash": None if vs_hash is None or vs_hash.mean is None else vs_hash.to_dict(),
                "_vs_full": vs_full, "_vs_hash": vs_hash,
            }
            table.append(row)
            if ok:
                points.append(Point(key=f"{r['method']}@{r['budget']:g}x" + (f"/{d}" if len(devices) > 1 else ""),
                                    method=r["method"], table=dict(pts[0].table),
                                    status="reference" if r["method"] == "full" else "ok",
                                    table_bytes=row["table_bytes"], full_bytes=pts[0].full_bytes,
                                    val_auc=vauc_m, test_auc=auc_m, test_logloss=ll_m, budget=r["budget"]))
    files = {"csv": outdir / "results.csv", "md": outdir / "results.md", "png": outdir / "benchmark.png",
             "json": outdir / "results.json"}
    fields = ["method", "budget", "status", "seeds_done", "table_bytes", "ratio", "test_auc", "test_auc_std",
              "diff_vs_full", "diff_vs_full_low", "diff_vs_full_high", "diff_vs_hash", "diff_vs_hash_low",
              "diff_vs_hash_high", "val_auc", "test_logloss", "train_time_s", "samples_per_s", "device", "message"]
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in table:
            flat = {k: v for k, v in row.items() if k in fields and not k.startswith("diff_")}
            for name in ("full", "hash"):
                dd = row[f"diff_vs_{name}"] or {}
                flat.update({f"diff_vs_{name}": dd.get("mean"), f"diff_vs_{name}_low": dd.get("low"),
                             f"diff_vs_{name}_high": dd.get("high")})
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in flat.items()})
    f4 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    e = cfg["experiment"]
    gen = cfg.get("generate")
    md = ["# Benchmark: every method x budget x seed", "",
          f"Generated by `slimembed benchmark` into `{outdir}`. Model `{e['model']}`, train `{e['train']}`, "
          f"data `{e['data']['path']}`" + (f" (synthetic: {gen})" if gen else "") + f"; seeds {cfg['seeds']}.",
          "Budget = compression target vs the full fp32 tables of the whole model (field + first-order, "
          "planned once by `TablePlan`); bytes are the tables' stored (inference) bytes. AUC: test, mean (± std) "
          f"over the finished seeds. Δ: the {INTERVAL_METHOD} (method − full; method − hash at the same "
          "budget); `*` marks an interval that excludes 0. One table per device."]
    head = ["| method | budget | status | table MiB | compression | test AUC | Δ vs full [95% CI] | "
            "Δ vs hash [95% CI] | val AUC | test logloss | train s | samples/s | device |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    last_device = None
    for row in table:
        if row["device"] != "-" and row["device"] != last_device:
            md += ["", f"### {row['device']}", ""] + head
            last_device = row["device"]
        elif last_device is None:
            md += [""] + head
            last_device = row["device"]
        auc = f4(row["test_auc"]) + (f" ± {row['test_auc_std']:.4f}" if row["test_auc_std"] else "")
        mib = "-" if row["table_bytes"] is None else f"{row['table_bytes'] / 2**20:.3f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        ts = "-" if row["train_time_s"] is None else f"{row['train_time_s']:.0f}"
        sps = "-" if row["samples_per_s"] is None else f"{row['samples_per_s']:.0f}"
        dfull = "-" if row["_vs_full"] is None else row["_vs_full"].fmt()
        dhash = "-" if row["_vs_hash"] is None else row["_vs_hash"].fmt()
        md.append(f"| {row['method']} | {row['budget']:g}x | {row['status']} | {mib} | {ratio} | {auc} | {dfull} | "
                  f"{dhash} | {f4(row['val_auc'])} | {f4(row['test_logloss'])} | {ts} | {sps} | {row['device']} |")
    notes = [(row["method"], row["budget"], row["status"], row["message"]) for row in table
             if row["status"] not in ("ok",) and row["message"]]
    if notes:
        md += ["", "Cells not trained:", ""]
        seen = set()
        for m, b, s, msg in notes:
            key = (m, s, msg if s != "infeasible" else b)
            if key in seen:
                continue
            seen.add(key)
            md.append(f"- {m} {b:g}x: {s}: {msg}")
    md += ["", f"![AUC vs bytes]({files['png'].name})", ""]
    files["md"].write_text("\n".join(md))
    plot(points, files["png"], metric="test", title="benchmark: test AUC vs table bytes (mean over seeds)",
         connect=True)
    for row in table:
        row.pop("_vs_full"), row.pop("_vs_hash")
    summary = {"rows": table, "files": {k: str(v) for k, v in files.items()},
               "counts": _count([row["status"] for row in table])}
    files["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _count(xs: Sequence[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


__all__ = ["DEFAULT_BENCHMARK", "cell_id", "ensure_data", "load_benchmark_config", "plan_cells",
           "run_benchmark", "skip_reason", "synthetic_mismatch", "write_results"]
