"""Multiplexed and Unified Embedding against full and per-feature hashing, at equal memory.

The UE paper's Table 1 comparison (Coleman et al., NeurIPS 2023) on the synthetic Criteo-like
data: DCNv2 and DeepFM, three budgets (about 10x, 50x, 250x compression of the fp32 table),
several seeds, four arms:

* ``full``: the uncompressed table (one run per model and seed; it has no budget);
* ``hash``: per-feature hashing, rows split in proportion to cardinality (non-multiplexed);
* ``multiplexed``: one shared table, a salted hash per feature;
* ``unified``: the paper's configuration (and TF Recommenders' ``UnifiedEmbedding``): every feature
  makes ``D / chunk_dim`` salted lookups into the shared table, concatenated to the full width ``D``
  (no projection); small features collision-free at full width;
* ``unified[chunks=by_cardinality]``: OUR variant, not the paper's (the default before issue 14):
  ``clamp(ceil(log10 N) - 1, 1, D / chunk_dim)`` chunks per feature and a learned projection to ``D``.

Records of a plain ``unified`` arm written before the paper's layout became the default (no
``layout`` in their ``unified_experiment`` entry) were the cardinality rule: summaries list them
under ``unified[chunks=by_cardinality]``, and a grid refuses to resume such a cell as ``unified``.

Every run goes through :func:`slimembed.ctr.experiment.run_experiment` (the same trainer, loaders
and JSON records as ``slimembed train``) and writes ``<out>/runs/<model>/<method>_<budget>_s<seed>.json``;
a run whose JSON exists is skipped, so an interrupted grid resumes where it stopped (``grid.py``). The
compression applies to every table of a model (DeepFM's first-order table too). At the end the
records are summarised as a Markdown table of test AUC (mean ± std over seeds) and table bytes,
printed and written to ``<out>/summary.md`` (and ``summary.json``).

Full grid (the lead schedules it)::

    python examples/reproduce/unified.py --rows 2000000 --seeds 0 1 2 --out runs/unified

A smoke run::

    python examples/reproduce/unified.py --rows 50000 --seeds 0 --out /tmp/ue_tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # grid.py beside it (also under PYTHONSAFEPATH, which drops the script's folder)
    sys.path.insert(0, _HERE)
from grid import cells, ensure_synthetic, mean_std, paired_diff, resume  # noqa: E402

METHODS = ("full", "hash", "multiplexed", "unified", "unified[chunks=by_cardinality]")
#: arm -> the label summaries print (whose configuration the arm is)
ARM_LABELS = {
    "unified": "unified (paper: D/chunk_dim chunks, no projection)",
    "unified[chunks=by_cardinality]": "unified[chunks=by_cardinality] (ours: chunks by cardinality + projection)",
}
#: the ``layout`` recorded with every run of a plain ``unified`` arm (older records have none)
UNIFIED_LAYOUT = "paper"


def arm_label(arm: str) -> str:
    """The summary label of an arm.

    >>> arm_label("unified"), arm_label("hash")
    ('unified (paper: D/chunk_dim chunks, no projection)', 'hash')
    """
    return ARM_LABELS.get(arm, arm)


def record_arm(run: Dict[str, Any]) -> str:
    """The arm a record's ``unified_experiment`` entry ran: a plain ``unified`` run without the
    ``layout`` marker predates the paper's default and ran the cardinality rule.

    >>> record_arm({"method": "unified"}), record_arm({"method": "unified", "layout": "paper"})
    ('unified[chunks=by_cardinality]', 'unified')
    """
    if run["method"] == "unified" and run.get("layout") != UNIFIED_LAYOUT:
        return "unified[chunks=by_cardinality]"
    return run["method"]
MODELS = ("dcnv2", "deepfm")
COMPRESSIONS = (10.0, 50.0, 250.0)


def parse_arm(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"unified[chunks=4,output=pad]"`` -> ``("unified", {"chunks": 4, "output": "pad"})``.

    An arm is a registered method, optionally with table knobs in brackets (values parsed as
    YAML scalars), so a variant runs beside the defaults under its own name.
    """
    import yaml

    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]"):
        raise ValueError(f"arm {spec!r}: expected METHOD[key=value,...]")
    method, body = spec[:-1].split("[", 1)
    knobs: Dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        if "=" not in item:
            raise ValueError(f"arm {spec!r}: {item!r} is not key=value")
        k, v = item.split("=", 1)
        knobs[k.strip()] = yaml.safe_load(v)
    return method, knobs


def budget_tag(compression: Optional[float]) -> str:
    return "full" if compression is None else f"{compression:g}x"


def run_name(model: str, method: str, compression: Optional[float], seed: int) -> str:
    safe = method.replace("[", "-").replace("]", "").replace("=", "").replace(",", "-")
    return f"{model}/{safe}_{budget_tag(compression)}_s{seed}"


def ensure_data(out: Path, rows: int, scale: float, data_seed: int, profile: Optional[str] = None) -> Path:
    """The synthetic dataset of this grid (generated once; reused while it is what these
    arguments make, :func:`grid.ensure_synthetic`)."""
    from slimembed.datasets import DEFAULT_PROFILE

    profile = profile or DEFAULT_PROFILE
    # v1 data keeps its old directory name, so earlier grids resume on the data they started with
    suffix = "" if profile == "v1" else f"_{profile}"
    path = out / f"data_{rows}_scale{scale:g}_seed{data_seed}{suffix}"
    return ensure_synthetic(path, rows=rows, seed=data_seed, scale=scale, profile=profile, claimed_by=out,
                            log=lambda s: print(f"[unified-experiment] {s}", flush=True))


def grid(models: Sequence[str], methods: Sequence[str], compressions: Sequence[float],
         seeds: Sequence[int]) -> List[Dict[str, Any]]:
    """The runs, in an order that gives a complete first seed early.

    >>> [run_name(**r) for r in grid(["deepfm"], ["full", "hash"], [10.0, 50.0], [0])]
    ['deepfm/full_full_s0', 'deepfm/hash_10x_s0', 'deepfm/hash_50x_s0']
    """
    runs = cells([("seed", list(seeds)), ("model", list(models)), ("method", list(methods)),
                  ("compression", list(compressions))], budget_axis="compression")
    return [{k: r[k] for k in ("model", "method", "compression", "seed")} for r in runs]


def experiment_config(run: Dict[str, Any], data: Path, out: Path, args: argparse.Namespace) -> Dict[str, Any]:
    from slimembed.ctr.experiment import DEFAULTS, deep_merge, validate_config

    method, knobs = parse_arm(run["method"])
    table: Dict[str, Any] = {"method": method, **knobs}
    if run["compression"] is not None:
        table["compression"] = float(run["compression"])
    cfg = {
        "data": {"path": str(data), "batch_size": args.batch_size},
        "model": {"name": run["model"], "embedding_dim": args.dim},
        "table": table,
        "train": {"epochs": args.epochs, "lr": args.lr, "seed": int(run["seed"]),
                  "embedding_optimizer": args.embedding_optimizer,
                  "early_stop_patience": 1, "num_threads": args.threads, "progress": False,
                  "log_every": 10**9, "device": args.device},
        "output": str(out / "runs" / f"{run_name(**run)}.json"),
    }
    return validate_config(deep_merge(DEFAULTS, cfg))


def run_grid(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from slimembed.ctr.experiment import claim_output_data, run_experiment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else ensure_data(out, args.rows, args.scale, args.data_seed, args.profile)
    claim_output_data(out, data)
    runs = grid(args.models, args.methods, args.compressions, args.seeds)
    done = 0
    for i, run in enumerate(runs):
        cfg = experiment_config(run, data, out, args)
        path = Path(cfg["output"])
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        entry = {**run, "layout": UNIFIED_LAYOUT} if run["method"] == "unified" else run
        if path.exists() and record_arm(json.loads(path.read_text()).get("extra", {}).get(
                "unified_experiment", run)) != run["method"]:
            raise ValueError(f"{path}: a 'unified' run from before the paper's layout became the default "
                             "(the cardinality rule); move it away to rerun the cell")
        # the record keeps the key "unified_experiment": summaries of older grids read it
        rec, resumed = resume(path, lambda: run_experiment(cfg, extra={"unified_experiment": entry}))
        if resumed:
            done += 1
            continue
        auc = (rec["metrics"].get("test") or {}).get("auc")
        print(f"[{i + 1}/{len(runs)}] {run_name(**run)}: test AUC {auc:.4f}, "
              f"tables {rec['memory']['table_bytes']:,} B, {time.perf_counter() - t0:.0f} s", flush=True)
    if done:
        print(f"[unified-experiment] {done} finished runs skipped (resumed)", flush=True)
    return runs


def summarize(out: Path, runs: Optional[Sequence[Dict[str, Any]]] = None,
              include: Sequence[Path] = ()) -> str:
    """Markdown table of mean ± std test AUC and bytes per (model, method, budget); ``summary.json``
    adds each arm's paired AUC difference to ``full`` (same model and seeds) with its 95% t-interval.

    ``include``: more grid directories (e.g. runs made on a GPU machine) merged in; a run
    (model, arm, budget, seed) found in several is taken from the first (``out`` first). The
    ``device`` column says where each row's runs trained.
    """
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    seen = set()
    for d in [out, *include]:
        for path in sorted((Path(d) / "runs").glob("*/*.json")):
            rec = json.loads(path.read_text())
            run = rec.get("extra", {}).get("unified_experiment")
            if run is None:
                continue
            key = (run["model"], record_arm(run), run["compression"])
            if key + (run["seed"],) in seen:
                continue
            seen.add(key + (run["seed"],))
            groups.setdefault(key, []).append(rec)
    order = {m: i for i, m in enumerate(METHODS)}
    keys = sorted(groups, key=lambda k: (k[0], -1 if k[2] is None else k[2], order.get(k[1], 99), k[1]))
    lines = ["| model | budget | method | test AUC (mean ± std) | Δ vs full [95% CI] | table bytes | compression | "
             "seeds | device |", "|---|---|---|---|---|---|---|---|---|"]
    rows_json = []
    for model, method, comp in keys:
        recs = groups[(model, method, comp)]
        aucs = [r["metrics"]["test"]["auc"] for r in recs if (r["metrics"].get("test") or {}).get("auc") is not None]
        mean, std = mean_std(aucs)
        tb = statistics.fmean(r["memory"]["table_bytes"] for r in recs)
        ratio = statistics.fmean(r["memory"]["ratio"] for r in recs)
        devices = sorted({str(r.get("config", {}).get("device", "cpu")) for r in recs})
        diff = None
        if method != "full" and (model, "full", None) in groups:
            diff = paired_diff(_auc_by_seed(recs), _auc_by_seed(groups[(model, "full", None)]))
        dtxt = "—" if diff is None else (f"{diff['mean']:+.4f}" + (
            " (1 seed)" if diff["ci95"] is None else
            f" [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]" + (" *" if diff["significant"] else "")))
        lines.append(f"| {model} | {budget_tag(comp)} | {arm_label(method)} | {mean:.4f} ± {std:.4f} | {dtxt} | "
                     f"{tb:,.0f} | {ratio:.1f}x | {len(aucs)} | {'+'.join(devices)} |")
        row = {"model": model, "method": method, "label": arm_label(method), "compression": comp, "auc_mean": mean,
               "auc_std": std, "table_bytes": tb, "ratio": ratio, "seeds": len(aucs), "devices": devices}
        if diff is not None:
            row["auc_diff_vs_full"] = diff
        rows_json.append(row)
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(rows_json, indent=2))
    return text


def _auc_by_seed(recs: Sequence[Dict[str, Any]]) -> Dict[int, float]:
    return {r["extra"]["unified_experiment"]["seed"]: r["metrics"]["test"]["auc"] for r in recs
            if (r["metrics"].get("test") or {}).get("auc") is not None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from slimembed.datasets.synthetic import DEFAULT_PROFILE, PROFILES

    p = argparse.ArgumentParser(prog="python examples/reproduce/unified.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/unified")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--scale", type=float, default=0.02, help="synthetic cardinality scale")
    p.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                   help="synthetic teacher preset (the committed Unified results used v1)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="arms: registered methods, optionally with table knobs, e.g. 'unified[chunks=4]'")
    p.add_argument("--compressions", nargs="+", type=float, default=list(COMPRESSIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--embedding-optimizer", default="sparse_adam",
                   help="adam | sparse_adam | rowwise_adagrad | adagrad (the same for every arm)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--summary-only", action="store_true", help="only summarise finished runs")
    p.add_argument("--device", default="cpu", help="torch device (e.g. cuda)")
    p.add_argument("--include", nargs="+", default=[],
                   help="more grid directories whose runs join the summary (e.g. a GPU machine's)")
    p.add_argument("--data", default=None,
                   help="an existing processed dataset directory instead of generating one under --out")
    args = p.parse_args(argv)
    for arm in args.methods:
        parse_arm(arm)  # fail before any training on a malformed arm
    if not args.summary_only:
        run_grid(args)
    print(summarize(Path(args.out), include=[Path(d) for d in args.include]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
