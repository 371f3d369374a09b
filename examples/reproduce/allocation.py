"""Compare the allocation rules of hash / double_hash (issue 13): which split of a hashed table's
rows over fields gives the best AUC at the same model-level budget.

Reads the cells of one benchmark directory per rule (``runs/alloc_<rule>``, made by the commands in
``docs/grid_allocation.yaml``; ``proportional200`` is the former hash default: proportional rows
with fields of at most 200 values kept whole, ``examples/reproduce/device_plan_grid_more.sh``) and the full-table cells of ``runs/grid_v3`` (same data, protocol
and device), and writes a Markdown table: per method, budget and rule the test AUC (mean ± std over
seeds), the paired difference to full and to the proportional rule (95% t-interval over seeds).

    python examples/reproduce/allocation.py --out docs/results/allocation.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from slimembed.search.stats import INTERVAL_METHOD, fmt_mean_std, paired_by_seed

RULES = ("proportional", "sqrt", "frequency", "proportional200")


def load_cells(d: Path) -> List[dict]:
    out = []
    for p in sorted((d / "cells").glob("*.json")):
        rec = json.loads(p.read_text())
        if (rec.get("benchmark") or {}).get("status") == "ok":
            out.append(rec)
    return out


def aucs(cells: Sequence[dict], method: str, budget: float) -> Dict[int, float]:
    return {int(c["benchmark"]["seed"]): float(c["metrics"]["test"]["auc"]) for c in cells
            if c["benchmark"]["method"] == method and float(c["benchmark"]["budget"]) == float(budget)}


def device_of(cells: Sequence[dict]) -> str:
    return "+".join(sorted({str((c.get("config") or {}).get("device", "cpu")) for c in cells})) or "-"


def table(runs: Path, reference: Path) -> Tuple[List[str], Dict[str, object]]:
    by_rule = {r: load_cells(runs / f"alloc_{r}") for r in RULES if (runs / f"alloc_{r}").exists()}
    full_cells = [c for c in load_cells(reference) if c["benchmark"]["method"] == "full"]
    full = {int(c["benchmark"]["seed"]): float(c["metrics"]["test"]["auc"]) for c in full_cells}
    devices = {device_of(cs) for cs in list(by_rule.values()) + [full_cells] if cs}
    lines = ["| method | budget | rule | test AUC | Δ vs full [95% CI] | Δ vs proportional [95% CI] | "
             "Δ vs former default [95% CI] | Δ vs sqrt [95% CI] |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    summary: Dict[str, object] = {"devices": sorted(devices), "rows": []}
    keys = sorted({(c["benchmark"]["method"], float(c["benchmark"]["budget"]))
                   for cs in by_rule.values() for c in cs})
    for method, budget in keys:
        base = aucs(by_rule.get("proportional", []), method, budget)
        former = aucs(by_rule.get("proportional200", []), method, budget)
        sq = aucs(by_rule.get("sqrt", []), method, budget)
        for rule, cells in by_rule.items():
            a = aucs(cells, method, budget)
            if not a:
                continue
            vf = paired_by_seed(a, full)
            vp = paired_by_seed(a, base) if rule != "proportional" else None
            vd = paired_by_seed(a, former) if rule != "proportional200" and former else None
            vs = paired_by_seed(a, sq) if rule != "sqrt" and sq else None
            lines.append(f"| {method} | {budget:g}x | {rule} | {fmt_mean_std(list(a.values()))} | {vf.fmt()} | "
                         f"{'—' if vp is None else vp.fmt()} | {'—' if vd is None else vd.fmt()} | "
                         f"{'—' if vs is None else vs.fmt()} |")
            summary["rows"].append({"method": method, "budget": budget, "rule": rule, "auc": a,
                                    "vs_full": vf.to_dict(), "vs_proportional": None if vp is None else vp.to_dict(),
                                    "vs_former_default": None if vd is None else vd.to_dict(),
                                    "vs_sqrt": None if vs is None else vs.to_dict()})
    return lines, summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs", help="folder holding alloc_<rule>/ (default runs)")
    ap.add_argument("--reference", default="runs/grid_v3", help="benchmark dir with the full cells")
    ap.add_argument("--out", default=None, help="write the Markdown here (default: print)")
    a = ap.parse_args(argv)
    lines, summary = table(Path(a.runs), Path(a.reference))
    head = [f"Test AUC of DeepFM at one model-level budget, by allocation rule; {INTERVAL_METHOD}; "
            f"`*`: the interval excludes 0. Device(s): {', '.join(summary['devices']) or '-'}.", ""]
    text = "\n".join(head + lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
        Path(a.out).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
