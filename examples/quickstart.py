"""Quickstart: generate Criteo-like data, train DeepFM with a full table, print the memory report.

    python examples/quickstart.py                  # 200k rows, about a minute on 2 cores
    python examples/quickstart.py --rows 20000 --hidden 32   # seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from slimembed.ctr.models import make_model
from slimembed.ctr.trainer import TrainConfig, seed_everything, train_and_evaluate
from slimembed.datasets import generate, load_processed, make_loader
from slimembed.tables import make_table, memory_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--out", default=None, help="data directory (default: a temporary one)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    p.add_argument("--method", default="full", help="table method (any of slimembed.tables.available_methods())")
    p.add_argument("--compression", type=float, default=None)
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="slimembed-quickstart-"))

    # 1. Data: synthetic Criteo-like rows in the processed format (schema.json + .npy arrays).
    report = generate(str(out), rows=a.rows, seed=0)
    print(f"generated {a.rows:,} rows, CTR {report.ctr:.3f}, teacher AUC {report.teacher_auc:.4f}")
    schema = load_processed(str(out)).schema
    features = schema.features(embedding_dim=16)

    # 2. Model: DeepFM; every table (field and first-order) comes from the same factory.
    seed_everything(0)
    kw = {} if a.compression is None else {"compression": a.compression}
    model = make_model("deepfm", features, schema.num_dense, hidden_units=a.hidden,
                       table_factory=lambda fs: make_table(a.method, fs, **kw))

    # 3. Train one epoch, evaluate on the test split.
    train = make_loader(str(out), "train", 4096, shuffle=True, seed=0)
    val = make_loader(str(out), "val", 16384)
    test = make_loader(str(out), "test", 16384)
    record = train_and_evaluate(model, train, val, test, config=TrainConfig(epochs=1, seed=0))
    t = record["metrics"]["test"]
    print(f"test AUC {t['auc']:.4f}, logloss {t['logloss']:.4f}, {record['samples_per_s']:.0f} samples/s")

    # 4. Memory: every byte of the tables, against the uncompressed fp32 baseline.
    print(memory_report(model))


if __name__ == "__main__":
    main()
