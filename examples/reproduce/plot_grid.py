"""Plot test AUC against table bytes (log x) from a benchmark's results.csv, one line per method,
with the full table as a dashed reference: the front page's chart.

    python examples/reproduce/plot_grid.py runs/grid_v3/results.csv docs/results/grid_v3.png
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src, out = (argv if argv is not None else sys.argv[1:])[:2]
    lines = defaultdict(list)
    full = None
    for row in csv.DictReader(open(src)):
        if row["status"] != "ok" or not row["test_auc"]:
            continue
        x, y = float(row["table_bytes"]), float(row["test_auc"])
        s = float(row["test_auc_std"]) if row["test_auc_std"] else 0.0
        if row["method"] == "full":
            full = (x, y)
        else:
            lines[row["method"]].append((x, y, s))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4,
                    capsize=2, label=m)
    if full is not None:
        ax.axhline(full[1], color="k", ls="--", lw=1, label=f"full ({full[0] / 2**20:.1f} MiB)")
    ax.set_xscale("log")
    ax.set_xlabel("embedding tables of the whole model (bytes)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
