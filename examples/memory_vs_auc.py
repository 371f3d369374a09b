"""Memory against AUC in seconds: a small Optuna sweep over compressed tables, and its Pareto report.

Generates tiny synthetic Criteo-like data, runs a multi-objective sweep (maximise validation AUC,
minimise embedding-table bytes) over a few table methods and their knobs, then writes the Pareto
front as CSV/JSON/Markdown and a PNG plot. The same thing at scale is::

    slimembed generate --out runs/synth --rows 1000000
    slimembed sweep --config my_sweep.yaml            # in as many workers as you like
    slimembed report runs/sweep/optuna.db --out docs/sweep

Run::

    python examples/memory_vs_auc.py --out runs/memory_vs_auc --trials 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/memory_vs_auc")
    ap.add_argument("--trials", type=int, default=8, help="sweep trials (the full-table reference included)")
    ap.add_argument("--rows", type=int, default=8000, help="synthetic rows (tiny: this is a demo)")
    ap.add_argument("--methods", nargs="+", default=["hash", "qr", "robe", "double_hash"])
    args = ap.parse_args(argv)

    from slimembed.datasets import generate
    from slimembed.search.report import load_points, write_report, markdown_table, pareto_front
    from slimembed.search.sweep import run_sweep

    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    if not (data / "schema.json").exists():
        # Small vocabularies so a few thousand rows carry signal.
        rep = generate(str(data), rows=args.rows, scale=0.0001, small_field_max=50, seed=0)
        print(f"generated {rep.rows} rows, {rep.total_vocabulary} values; teacher AUC {rep.teacher_auc:.4f}")
    sweep = {
        "experiment": {
            "data": {"path": str(data), "batch_size": 512, "eval_batch_size": 4096},
            # DCN: no first-order table, whose per-field floor would cap compression on tiny data
            "model": {"name": "dcn", "embedding_dim": 8, "num_cross_layers": 2, "hidden_units": [32]},
            "train": {"epochs": 2, "lr": 0.01, "seed": 0, "early_stop_patience": None, "progress": False,
                      "num_threads": 1},  # tiny batches: one thread beats an oversubscribed pool
        },
        "methods": args.methods,
        "space": {"compression": {"low": 2, "high": 200, "log": True}},
        "study": {"name": "memory-vs-auc", "workdir": str(out), "mode": "multi", "sampler": "tpe",
                  "n_startup_trials": 4, "total_trials": args.trials, "seed": 0, "checkpoints": False},
    }
    run_sweep(sweep)
    points, meta = load_points(str(out / "optuna.db"), "memory-vs-auc")
    summary = write_report(points, meta, str(out / "report"), metric="val")
    print()
    print("\n".join(markdown_table(pareto_front(points, "val"))))
    print(f"\n{summary['points']} points, {summary['front']} on the front; files: {', '.join(summary['files'].values())}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
