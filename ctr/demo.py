"""``slimembed demo``: synthetic Criteo-like data -> DeepFM with each table -> AUC against memory.

The data is generated once into ``OUT/data`` (reused when its parameters match), each method's
result is written to ``OUT/METHOD.json``, and a finished method is not rerun (delete the file to
rerun it), so a cut-off demo continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEMO_ROWS = 500_000
DEMO_METHODS = ("full", "hash", "qr", "unified")
DEMO_MODEL = {"name": "deepfm", "embedding_dim": 16, "hidden_units": [400, 400, 400]}
DEMO_TRAIN = {"epochs": 1, "lr": 1e-3, "embedding_optimizer": "sparse_adam", "early_stop_patience": None}


def _ensure_data(data_dir: Path, rows: int, seed: int) -> Tuple[Dict[str, Any], bool]:
    """The demo's data (made when missing or made with other parameters) and whether it was made."""
    from slimembed.datasets import DEFAULT_PROFILE, generate, load_processed

    # the profile is part of the marker: data made by another generator profile is regenerated
    wanted = {"rows": rows, "seed": seed, "profile": DEFAULT_PROFILE}
    marker = data_dir / "demo_params.json"
    if (data_dir / "schema.json").exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"[demo] reusing synthetic data in {data_dir}")
        made = False
    else:
        t0 = time.perf_counter()
        print(f"[demo] generating {rows:,} synthetic Criteo-like rows into {data_dir} ...")
        generate(str(data_dir), rows=rows, seed=seed, format="processed")
        marker.write_text(json.dumps(wanted))
        print(f"[demo] generated in {time.perf_counter() - t0:.1f} s")
        made = True
    return load_processed(str(data_dir)).schema.meta, made


def run_demo(
    out_dir: str = "runs/demo",
    rows: Optional[int] = None,
    methods: Optional[Sequence[str]] = None,
    compression: float = 10.0,
    epochs: int = 1,
    seed: int = 0,
) -> List[Dict[str, Any]]:
    """Run the demo and print one line per method; returns the result records."""
    from slimembed.ctr.experiment import load_config, result_summary, run_experiment
    from slimembed.tables import available_methods

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = int(rows or DEMO_ROWS)
    methods = list(methods or DEMO_METHODS)
    for m in methods:
        if m not in available_methods():
            raise ValueError(f"unknown table method {m!r}; available: {', '.join(available_methods())}")
    meta, made = _ensure_data(out / "data", rows, seed)
    if made:  # records trained on the data that was just replaced are stale
        for m in available_methods():
            (out / f"{m}.json").unlink(missing_ok=True)
    if "teacher_auc" in meta:
        print(f"[demo] teacher AUC (the best any model can reach on this data): {meta['teacher_auc']:.4f}")
    records = []
    for m in methods:
        path = out / f"{m}.json"
        if path.exists():
            print(f"[demo] {m}: reusing {path}")
            rec = json.loads(path.read_text())
        else:
            table: Dict[str, Any] = {"method": m}
            if m != "full":
                table["compression"] = compression
            overrides = [
                f"data.path={out / 'data'}",
                f"output={path}",
            ]
            cfg = load_config(None, overrides)
            cfg["model"] = dict(DEMO_MODEL)
            cfg["table"] = table
            cfg["train"] = {**DEMO_TRAIN, "epochs": epochs, "seed": seed}
            print(f"[demo] training DeepFM with table {m!r} ...")
            rec = run_experiment(cfg)
        records.append(rec)
        print(f"[demo] {m}:")
        for line in result_summary(rec):
            print(f"    {line}")
    if len(records) > 1:
        print("\n| table | test AUC | logloss | table bytes | compression | samples/s |")
        print("|---|---|---|---|---|---|")
        for m, r in zip(methods, records):
            t = r["metrics"]["test"]
            print(f"| {m} | {t['auc']:.4f} | {t['logloss']:.4f} | {r['memory']['table_bytes']:,} | "
                  f"{r['memory']['ratio']:.1f}x | {r['samples_per_s']:.0f} |")
    return records
