"""Measure the data pipeline: synthetic generation, ``prepare_criteo`` throughput and memory.

Run ``python -m slimembed.datasets.bench --rows 2000000``. Each preprocessing mode runs in a fresh
process so that its peak RSS is its own (imports included: torch/torchrec alone take ~0.4 GB).
Prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _prepare_one(tsv: str, out: str, kwargs: str) -> None:
    from slimembed.datasets import prepare_criteo

    kw = json.loads(kwargs)
    c0 = _cpu()
    rep = prepare_criteo(tsv, out, **kw)
    print(json.dumps({"step": "prepare_criteo", "options": kw, "rows": rep.rows_read,
                      "seconds": rep.seconds, "rows_per_s": rep.rows_per_s,
                      "cpu_seconds": round(_cpu() - c0, 2), "peak_rss_mb": rep.peak_rss_mb}),
          flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--profile", default=None, help="synthetic teacher preset (default: the generator's)")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--modes", default='[{}, {"vocabulary_free": true}, {"dense": "bucket"}]',
                    help="JSON list of prepare_criteo keyword sets")
    ap.add_argument("--_prepare", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._prepare:
        _prepare_one(*args._prepare)
        return
    from slimembed.datasets import generate

    work = Path(args.out or tempfile.mkdtemp(prefix="slimembed-bench-"))
    for fmt in ("processed", "tsv"):
        t0, c0 = time.perf_counter(), _cpu()
        kw = {} if args.profile is None else {"profile": args.profile}
        rep = generate(work / fmt, rows=args.rows, scale=args.scale, format=fmt, **kw)
        print(json.dumps({"step": f"generate[{fmt}]", "rows": rep.rows, "seconds": rep.seconds,
                          "rows_per_s": rep.rows_per_s, "cpu_seconds": round(_cpu() - c0, 2),
                          "teacher_auc": rep.teacher_auc, "ctr": rep.ctr,
                          "wall": round(time.perf_counter() - t0, 2)}), flush=True)
    tsv = str(work / "tsv" / "train.txt")
    for kw in json.loads(args.modes):
        subprocess.run([sys.executable, "-m", "slimembed.datasets.bench", "--_prepare", tsv,
                        str(work / "prepared"), json.dumps(kw)], check=True)


if __name__ == "__main__":
    main()
