"""OptEmbed end to end: supernet -> evolutionary dim search -> retrain -> compact export.

    python examples/optembed_pipeline.py                       # tiny data, seconds
    python examples/optembed_pipeline.py --rows 200000 --generations 30 --dim 16

Every stage writes its artifacts (JSON + .pt) under --out; rerunning the script with the same
--out resumes after the last finished stage (and the search after its last generation).
The same pipeline runs from a YAML file with ``slimembed optembed --config FILE.yaml``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from slimembed.datasets import generate, make_loader
from slimembed.search import OptEmbedPipeline, load_exported, load_pipeline_config
from slimembed.tables import memory_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--variant", default="optembed", choices=["optembed", "optembed-e", "optembed-d"])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--generations", type=int, default=3)
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="slimembed-optembed-"))

    # 1. Tiny synthetic Criteo-like data (small vocabularies so it runs in seconds).
    data = out / "data"
    if not (data / "schema.json").exists():
        rep = generate(str(data), rows=a.rows, seed=0, scale=0.0005, small_field_max=300)
        print(f"generated {a.rows:,} rows, teacher AUC {rep.teacher_auc:.4f}")

    # 2. One config: the data/model/train sections of `slimembed train`, plus `optembed`.
    hidden_key = "hidden_units" if a.model != "dlrm" else "top_hidden_units"
    cfg = load_pipeline_config(config={
        "data": {"path": str(data), "batch_size": 512, "eval_batch_size": 4096},
        "model": {"name": a.model, "embedding_dim": a.dim, hidden_key: a.hidden},
        "train": {"epochs": a.epochs, "lr": 3e-3, "seed": 0, "early_stop_patience": 1},
        "optembed": {"variant": a.variant, "alpha": 1e-3, "threshold_lr": 1e-2,
                     "generations": a.generations, "search_max_eval_batches": 1},
        "output": str(out / "run"),
    })
    pipe = OptEmbedPipeline(cfg, progress=False)

    # 3. The stages one by one (pipe.run() does the same, skipping finished stages).
    sup = pipe.stage_result("supernet") if pipe.is_done("supernet") else pipe.run_supernet()
    print(f"supernet: val AUC {sup['val']['auc']:.4f}, kept rows {sup['kept_rows_total']:,}/{sup['rows_total']:,}")
    sea = pipe.stage_result("search") if pipe.is_done("search") else pipe.run_search()
    print(f"search: dims {sea['dims']}, best val AUC {sea['best_val_auc']:.4f}, "
          f"{sea['evaluations']} candidates evaluated in {sea['search_time_s']:.1f} s")
    ret = pipe.stage_result("retrain") if pipe.is_done("retrain") else pipe.run_retrain()
    print(f"retrain: test AUC {ret['test']['auc']:.4f}, logloss {ret['test']['logloss']:.4f}")
    exp = pipe.stage_result("export") if pipe.is_done("export") else pipe.run_export()
    summary = pipe.run()  # everything is done: just collects the summary
    print(f"export: field table {exp['table_bytes']:,} bytes vs full fp32 {exp['full_table_bytes']:,} "
          f"({exp['compression']:.2f}x), remap {exp['remap_bytes']:,} bytes")

    # 4. The exported inference model, rebuilt from disk, against the masked retrained model.
    model = load_exported(pipe.out)
    masked = pipe.masked_model("retrain").eval()
    batch = next(iter(make_loader(str(data), "test", 1024)))
    with torch.no_grad():
        diff = (model(batch.dense, batch.sparse) - masked(batch.dense, batch.sparse)).abs().max().item()
    print(f"exported model: {memory_report(model.embedding)}")
    print(f"max |logit difference| exported vs masked: {diff:.3g}")
    print(f"summary: test AUC {summary['test_auc']:.4f}, compression {summary['compression']:.2f}x "
          f"-> {pipe.out / 'summary.json'}")


if __name__ == "__main__":
    main()
