"""OptEmbed against the full table on synthetic Criteo-like data: DeepFM and DCN, 3 seeds.

    python examples/reproduce/optembed.py --out runs/optembed_exp          # the full grid
    python examples/reproduce/optembed.py --out /tmp/oe --rows 50000 --seeds 0 \\
        --generations 2 --epochs 1                                       # a smoke run

For every model (``deepfm``, ``dcn``), method (``full``, ``optembed-e``, ``optembed-d``,
``optembed``) and seed, one run directory ``OUT/runs/MODEL/METHOD/seedS``: ``full`` is one
:func:`~slimembed.ctr.trainer.train_and_evaluate` (``result.json``), the OptEmbed variants are
the resumable pipeline of :mod:`slimembed.search.optembed` (``summary.json``). The data is
generated once into ``OUT/data`` (reused while it is what the parameters make: ``grid.py``). Everything resumes: a killed
run continues at its last checkpoint / stage / generation, finished runs are read back, so the
same command can be rerun until the table is complete. The table (test AUC, logloss, kept rows,
exported field-table bytes, search time; mean ± std over seeds) is printed as Markdown and
written to ``OUT/results.md`` (+ ``OUT/results.json``).

Hyper-parameters are CPU-scale, not the paper's GPU setting (D = 64, MLP [1024, 512, 256],
lr 3e-5 for DeepFM, up to 30 epochs): D = 16, MLP [400, 400, 400], batch 2048, Adam lr 1e-3
with weight decay, a few epochs with early stopping on validation AUC (patience 1), and a
threshold regulariser / threshold learning rate large enough for the thresholds to move within
that many steps (``--alpha``, ``--threshold-lr``), and each search candidate scored on the first
2 validation batches (32,768 rows, ``--search-eval-batches``; the same rows for every candidate).
Every knob is a flag. On a shared 2-core machine ``--threads 1`` is faster than two threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # grid.py beside it (also under PYTHONSAFEPATH, which drops the script's folder)
    sys.path.insert(0, _HERE)
from grid import cells, ensure_synthetic, fmt_mean_std, paired_diff, resume  # noqa: E402

METHODS = ("full", "optembed-e", "optembed-d", "optembed")
# Baselines trained under the same protocol at a byte budget (``hash@10x``): the field table
# compressed by the method, the first-order table full, as in the OptEmbed models.
BUDGET_BASELINES = ("hash", "double_hash", "qr", "compositional", "robe", "multiplexed", "unified")


def parse_method(spec: str) -> Tuple[str, Optional[float]]:
    """``"optembed@10x"`` -> ``("optembed", 10.0)``; ``"full"`` -> ``("full", None)``.

    The OptEmbed variants take the budget as their search's ``budget_bytes`` (full fp32 field
    table / C); the baselines in :data:`BUDGET_BASELINES` need one and are built at it.
    """
    name, _, budget = spec.partition("@")
    comp: Optional[float] = None
    if budget:
        try:
            comp = float(budget[:-1] if budget.endswith("x") else budget)
        except ValueError:
            comp = -1.0
        if not comp > 1.0:
            raise ValueError(f"method {spec!r}: the budget after '@' must be a compression > 1 like '10x'")
    if name == "full" and comp is not None:
        raise ValueError(f"method {spec!r}: the full table has no budget")
    if name in BUDGET_BASELINES and comp is None:
        raise ValueError(f"method {spec!r}: a baseline needs a budget, e.g. '{name}@10x'")
    if name not in METHODS and name not in BUDGET_BASELINES:
        raise ValueError(f"method {spec!r}: expected one of {list(METHODS)} (optionally @Cx) or one of "
                         f"{list(BUDGET_BASELINES)} with @Cx")
    return name, comp
MODELS = ("deepfm", "dcn")


def ensure_data(data_dir: Path, rows: int, seed: int = 0, scale: float = 0.02,
                profile: Optional[str] = None) -> Dict[str, Any]:
    """Generate the synthetic Criteo-like data once (reused while it is what rows/seed/scale/profile
    make, :func:`grid.ensure_synthetic`; runs under ``data_dir``'s parent keep theirs)."""
    from slimembed.datasets import load_processed

    ensure_synthetic(data_dir, rows=rows, seed=seed, scale=scale, profile=profile, claimed_by=data_dir.parent,
                     log=lambda s: print(f"[exp] {s}", flush=True))
    return load_processed(str(data_dir)).schema.meta


def model_config(args: argparse.Namespace, model: str) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"name": model, "embedding_dim": args.dim, "hidden_units": list(args.hidden)}
    if model in ("dcn", "dcnv2"):
        cfg["num_cross_layers"] = args.cross_layers
    return cfg


def train_config(args: argparse.Namespace, model: str, seed: int) -> Dict[str, Any]:
    return {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "seed": seed,
            "early_stop_patience": 1, "num_threads": args.threads, "progress": args.progress,
            "max_eval_batches": None, "device": args.device}


def data_config(args: argparse.Namespace, data_dir: Path) -> Dict[str, Any]:
    return {"path": str(data_dir), "batch_size": args.batch_size, "eval_batch_size": 16384}


def run_full(args: argparse.Namespace, data_dir: Path, run_dir: Path, model: str, seed: int,
             method: str = "full", compression: Optional[float] = None) -> Dict[str, Any]:
    """The uncompressed baseline (or ``method`` at ``compression`` for the field table, the
    first-order table full), resumable through the trainer's checkpoints."""
    return resume(run_dir / "result.json",
                  lambda: _train_full(args, data_dir, run_dir, model, seed, method, compression))[0]


def _train_full(args: argparse.Namespace, data_dir: Path, run_dir: Path, model: str, seed: int,
                method: str, compression: Optional[float]) -> Dict[str, Any]:
    from slimembed.ctr.models import make_model
    from slimembed.ctr.trainer import train_and_evaluate, seed_everything
    from slimembed.datasets import load_processed, make_loader
    from slimembed.tables import make_table, memory_report

    schema = load_processed(str(data_dir)).schema
    mcfg = model_config(args, model)
    name, dim = mcfg.pop("name"), mcfg.pop("embedding_dim")
    features = schema.features(dim)
    seed_everything(seed)
    def factory(fs):
        if compression is None or all(f.embedding_dim == 1 for f in fs):
            return make_table("full", fs)
        return make_table(method, fs, compression=compression)

    net = make_model(name, features, schema.num_dense, table_factory=factory, **mcfg)
    d = data_config(args, data_dir)
    train = make_loader(d["path"], "train", d["batch_size"], shuffle=True, seed=seed)
    val = make_loader(d["path"], "val", d["eval_batch_size"])
    test = make_loader(d["path"], "test", d["eval_batch_size"])
    tcfg = {**train_config(args, model, seed), "checkpoint_dir": str(run_dir / "ckpt"), "resume": True}
    t0 = time.perf_counter()
    rec = train_and_evaluate(net, train, val, test, config=tcfg, output_path=run_dir / "ckpt" / "record.json")
    table_bytes = memory_report(net.embedding).total_bytes
    field_table = net.embedding
    row = {
        "model": model, "method": method if compression is None else f"{method}@{compression:g}x", "seed": seed,
        "test_auc": rec["metrics"]["test"]["auc"], "test_logloss": rec["metrics"]["test"]["logloss"],
        "kept_rows": sum(f.num_embeddings for f in features), "rows": sum(f.num_embeddings for f in features),
        "exported_bytes": table_bytes, "full_bytes": field_table.full_bytes(),
        "search_time_s": 0.0, "total_time_s": time.perf_counter() - t0, "epochs": rec["epochs_completed"],
        "device": args.device,
    }
    return row


def run_optembed(args: argparse.Namespace, data_dir: Path, run_dir: Path, model: str, method: str,
                 seed: int, compression: Optional[float] = None) -> Dict[str, Any]:
    """One OptEmbed pipeline (resumes at its last stage / generation)."""
    return resume(run_dir / "row.json",
                  lambda: _search_optembed(args, data_dir, run_dir, model, method, seed, compression))[0]


def _search_optembed(args: argparse.Namespace, data_dir: Path, run_dir: Path, model: str, method: str,
                     seed: int, compression: Optional[float]) -> Dict[str, Any]:
    from slimembed.search.optembed import run_pipeline

    t0 = time.perf_counter()
    cfg = {
        "data": data_config(args, data_dir),
        "model": model_config(args, model),
        "train": train_config(args, model, seed),
        "optembed": {"variant": method, "alpha": args.alpha, "threshold_lr": args.threshold_lr,
                     "generations": args.generations,
                     "search_max_eval_batches": args.search_eval_batches or None,
                     "retrain_from": args.retrain_from,
                     "budget_bytes": None if compression is None else int(full_field_bytes(data_dir, args) / compression)},
        "output": str(run_dir),
    }
    summary = run_pipeline(cfg, log=lambda s: print(f"    {s}", flush=True), progress=args.progress)
    row = {
        "model": model, "method": method if compression is None else f"{method}@{compression:g}x", "seed": seed,
        "test_auc": summary["test_auc"], "test_logloss": summary["test_logloss"],
        "kept_rows": summary["kept_rows"], "rows": summary["rows"],
        "exported_bytes": summary["exported_table_bytes"], "full_bytes": summary["full_table_bytes"],
        "search_time_s": summary["search_time_s"],
        "total_time_s": summary["supernet_time_s"] + summary["search_time_s"] + summary["retrain_time_s"],
        "this_process_s": time.perf_counter() - t0,
        "dims": summary["dims"], "device": args.device,
    }
    return row


def full_field_bytes(data_dir: Path, args: argparse.Namespace) -> int:
    """fp32 bytes of the full field table (every value a row of ``--dim`` floats): the reference
    a budget ``@Cx`` divides."""
    from slimembed.datasets import load_processed

    return sum(int(f.num_embeddings) for f in load_processed(str(data_dir)).schema.features(args.dim)) * args.dim * 4


_ms = fmt_mean_std


def paired_vs_full(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per (model, method) other than ``full``: the test-AUC difference to ``full`` paired by seed,
    with its 95% t-interval (:func:`grid.paired_diff`)."""
    auc: Dict[tuple, Dict[int, float]] = {}
    for r in rows:
        auc.setdefault((r["model"], r["method"]), {})[r["seed"]] = r["test_auc"]
    return [{"model": m, "method": meth, "test_auc_diff": paired_diff(by_seed, auc[(m, "full")])}
            for (m, meth), by_seed in auc.items() if meth != "full" and (m, "full") in auc]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Mean ± std over seeds per (model, method)."""
    lines = [
        "| model | method | seeds | test AUC | Δ AUC vs full [95% CI] | test logloss | kept rows | exported bytes | "
        "vs full | search time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    diffs = {(d["model"], d["method"]): d["test_auc_diff"] for d in paired_vs_full(rows)}
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"]), []).append(r)
    for (model, method), rs in groups.items():
        kept = statistics.mean(r["kept_rows"] / r["rows"] for r in rs)
        nbytes = statistics.mean(r["exported_bytes"] for r in rs)
        ratio = statistics.mean(r["full_bytes"] / r["exported_bytes"] for r in rs)
        search = "—" if method == "full" else _ms([r["search_time_s"] for r in rs], ".0f")
        d = diffs.get((model, method))
        dtxt = "—" if d is None else (f"{d['mean']:+.4f}" + (" (1 seed)" if d["ci95"] is None else
                                                             f" [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                                                             + (" *" if d["significant"] else "")))
        lines.append(
            f"| {model} | {method} | {len(rs)} | {_ms([r['test_auc'] for r in rs], '.4f')} | {dtxt} | "
            f"{_ms([r['test_logloss'] for r in rs], '.4f')} | {100 * kept:.1f}% | {nbytes:,.0f} | "
            f"{ratio:.2f}x | {search} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from slimembed.datasets.synthetic import DEFAULT_PROFILE, PROFILES

    p = argparse.ArgumentParser(prog="python examples/reproduce/optembed.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/optembed_exp")
    p.add_argument("--rows", type=int, default=2_000_000, help="synthetic rows (8:1:1 train/val/test)")
    p.add_argument("--scale", type=float, default=0.02, help="cardinality scale vs Criteo Kaggle")
    p.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                   help="synthetic teacher preset (the committed OptEmbed results used v1)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=["deepfm", "dcn", "fnn", "ipnn", "dcnv2", "wdl"])
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"{', '.join(METHODS)}; a budget as METHOD@Cx (e.g. optembed@10x: the search keeps "
                        f"the export under the full field table / C), and baselines at a budget: "
                        f"{', '.join(BUDGET_BASELINES)} (e.g. hash@10x)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    p.add_argument("--cross-layers", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3, help="max epochs per training stage (early stop on val AUC)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--alpha", type=float, default=1e-3, help="threshold regulariser weight")
    p.add_argument("--threshold-lr", type=float, default=1e-2)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--search-eval-batches", type=int, default=2,
                   help="validation batches (of 16384 rows) per candidate fitness; 0 = the whole split")
    p.add_argument("--retrain-from", choices=["rewind", "supernet"], default="rewind")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--summary-only", action="store_true",
                   help="only tabulate the finished runs under OUT/runs (e.g. after parallel workers)")
    p.add_argument("--device", default="cpu", help="torch device for training, search and export (e.g. cuda)")
    p.add_argument("--data", default=None,
                   help="an existing processed dataset directory to use instead of generating OUT/data")
    return p


def finished_rows(out: Path) -> List[Dict[str, Any]]:
    """Every finished run under ``OUT/runs/MODEL/METHOD/seedS`` (in model, method, seed order)."""
    rows = []
    for model_dir in sorted(p for p in (out / "runs").glob("*") if p.is_dir()):
        def order(d: Path) -> tuple:
            name, comp = parse_method(d.name)
            return (comp or 0.0, name not in METHODS, METHODS.index(name) if name in METHODS else 0, name)

        for method_dir in sorted((d for d in model_dir.iterdir() if d.is_dir()), key=order):
            for seed_dir in sorted(method_dir.glob("seed*"), key=lambda p: int(p.name[4:])):
                for done in (seed_dir / "result.json", seed_dir / "row.json"):
                    if done.exists():
                        rows.append(json.loads(done.read_text()))
    return rows


def write_summary(out: Path, rows: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    from slimembed.ctr.trainer import atomic_write_json

    table = markdown_table(rows)
    atomic_write_json({"args": vars(args), "rows": rows, "vs_full": paired_vs_full(rows)}, out / "results.json")
    (out / "results.md").write_text(table + "\n")
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for m in args.methods:
        parse_method(m)  # fail before any training
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summary_only:
        print(write_summary(out, finished_rows(out), args))
        return 0
    from slimembed.ctr.experiment import claim_output_data

    if args.data:
        from slimembed.datasets import load_processed

        data_dir = Path(args.data)
        claim_output_data(out, data_dir)
        meta = load_processed(str(data_dir)).schema.meta
    else:
        data_dir = out / "data"
        if (data_dir / "schema.json").exists() and any((out / "runs").glob("*/*/*/*.json")):
            claim_output_data(out, data_dir)  # runs exist: their data must not be replaced
        meta = ensure_data(data_dir, args.rows, seed=0, scale=args.scale, profile=args.profile)
        claim_output_data(out, data_dir)
    gen = meta.get("generator") or {}
    if "teacher_auc" in gen:
        print(f"[exp] teacher AUC (the best achievable on this data): {gen['teacher_auc']:.4f}", flush=True)
    rows = []
    t0 = time.perf_counter()
    for cell in cells([("model", args.models), ("method", args.methods), ("seed", args.seeds)]):
        model, method, seed = cell["model"], cell["method"], cell["seed"]
        run_dir = out / "runs" / model / method / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[exp] {model} / {method} / seed {seed}  ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        name, comp = parse_method(method)
        if name == "full" or name in BUDGET_BASELINES:
            row = run_full(args, data_dir, run_dir, model, seed, method=name, compression=comp)
        else:
            row = run_optembed(args, data_dir, run_dir, model, name, seed, compression=comp)
        print(f"[exp]   test AUC {row['test_auc']:.4f}, logloss {row['test_logloss']:.4f}, "
              f"kept rows {row['kept_rows']:,}/{row['rows']:,}, exported {row['exported_bytes']:,} bytes",
              flush=True)
        rows.append(row)
    table = write_summary(out, rows, args)
    print()
    print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
