"""Measure the data pipeline: synthetic TSV generation and ``prepare_criteo`` throughput and memory.

Two entry points (``python -m slimembed.datasets.bench ...`` or ``slimembed bench prepare ...``):

* default: generate ``--rows`` (processed and TSV) at ``--scale``, then time each
  ``--modes`` keyword set of :func:`~.preprocess.prepare_criteo` (one JSON line per step);
* ``--grid``: the preprocessing-at-scale table (docs/architecture.md §7): for every row count of
  ``--rows`` (e.g. ``2000000,45840617``), generate the TSV once under ``--out`` (kept, reused),
  then run prepare in vocabulary and vocabulary-free mode with each ``--workers`` count. Each cell
  runs in a fresh process; its peak memory is the **peak over time of the summed PSS of the
  process and its workers** (sampled every 0.2 s from ``/proc/*/smaps_rollup``; forked workers'
  shared pages are counted once), next to the ``getrusage`` peaks. Cells append one JSON line
  each to ``--json`` and a cell already there is skipped, so an interrupted grid resumes.
  A table is printed at the end.

Example::

    python -m slimembed.datasets.bench --grid --rows 2000000 --scale 1.0 --workers 1,2 \\
        --out runs/prepare_scale --json runs/prepare_scale/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_of() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pss_mb(pid: int) -> float:
    """Summed proportional set size (MiB) of ``pid`` and all its descendants (Linux)."""
    kids = _children_of()
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) / 1024.0
                        break
        except OSError:
            continue
    return total


class PeakSampler:
    """Samples :func:`tree_pss_mb` of a process in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.pid, self.every, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mb(self.pid))
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def _prepare_one(tsv: str, out: str, kwargs: str) -> None:
    from slimembed.datasets import prepare_criteo

    kw = json.loads(kwargs)
    c0 = _cpu()
    rep = prepare_criteo(tsv, out, **kw)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"step": "prepare_criteo", "options": kw, "rows": rep.rows_read,
                      "seconds": rep.seconds, "rows_per_s": rep.rows_per_s,
                      "cpu_seconds": round(_cpu() - c0 + ch.ru_utime + ch.ru_stime, 2),
                      "peak_rss_mb": rep.peak_rss_mb,
                      "children_peak_rss_mb": round(ch.ru_maxrss / 1024.0, 1),
                      "vocabulary_rows": int(sum(rep.vocabulary_sizes.values())),
                      "bad_rows": rep.bad_rows}), flush=True)


def run_cell(tsv: str, out: str, kw: Dict) -> Dict:
    """One prepare run in a fresh process; returns its JSON line plus ``peak_pss_mb`` (tree)."""
    proc = subprocess.Popen([sys.executable, "-m", "slimembed.datasets.bench", "--_prepare", tsv,
                             out, json.dumps(kw)], stdout=subprocess.PIPE, text=True)
    sampler = PeakSampler(proc.pid)
    stdout, _ = proc.communicate()
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"prepare cell {kw} failed with exit code {proc.returncode}")
    rec = json.loads(stdout.strip().splitlines()[-1])
    rec["peak_pss_mb"] = round(peak, 1)
    return rec


def _ensure_tsv(root: Path, rows: int, scale: float, workers: int) -> Dict:
    """Generate (once) ``root/tsv_<rows>_s<scale>/train.txt``; returns its generate record."""
    from slimembed.datasets import generate

    d = root / f"tsv_{rows}_s{scale:g}"
    rep_path = d / "report.json"
    if rep_path.exists() and (d / "train.txt").exists():
        rep = json.loads(rep_path.read_text())
        return {"step": "generate[tsv]", "rows": rep["rows"], "seconds": rep["seconds"],
                "rows_per_s": rep["rows_per_s"], "cached": True, "path": str(d / "train.txt")}
    rep = generate(d, rows=rows, scale=scale, format="tsv", workers=workers)
    return {"step": "generate[tsv]", "rows": rep.rows, "seconds": rep.seconds,
            "rows_per_s": rep.rows_per_s, "workers": workers, "peak_rss_mb": rep.peak_rss_mb,
            "cached": False, "path": str(d / "train.txt")}


def _cell_key(rec: Dict) -> str:
    return json.dumps([rec["rows_total"], rec["mode"], rec["workers"]])


def grid(rows_list: List[int], scale: float, workers_list: List[int], out: Path, json_path: Path,
         min_count: int = 10, keep_data: bool = True) -> List[Dict]:
    """Run the preprocessing-at-scale cells not yet in ``json_path``; returns all cells."""
    out.mkdir(parents=True, exist_ok=True)
    done: Dict[str, Dict] = {}
    if json_path.exists():
        for line in json_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("step") == "cell":
                done[_cell_key(rec)] = rec
    for rows in rows_list:
        gen = _ensure_tsv(out, rows, scale, max(workers_list))
        print(json.dumps(gen), flush=True)
        with open(json_path, "a") as f:
            f.write(json.dumps({**gen, "scale": scale}) + "\n")
        for w in workers_list:  # in the order given: put the cells that matter most first
            for mode in ("vocabulary", "vocabulary_free"):
                key = json.dumps([rows, mode, w])
                if key in done:
                    continue
                kw = {"workers": w, "min_count": min_count,
                      "vocabulary_free": mode == "vocabulary_free"}
                rec = run_cell(gen["path"], str(out / "prepared"), kw)
                rec.update({"step": "cell", "rows_total": rows, "scale": scale, "mode": mode,
                            "workers": w, "cpus": os.cpu_count(),
                            "loadavg_1m": os.getloadavg()[0]})
                done[key] = rec
                print(json.dumps(rec), flush=True)
                with open(json_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        shutil.rmtree(out / "prepared", ignore_errors=True)
        if not keep_data:
            shutil.rmtree(Path(gen["path"]).parent, ignore_errors=True)
    cells = sorted(done.values(), key=lambda r: (r["rows_total"], r["mode"], r["workers"]))
    print(format_table(cells))
    return cells


def format_table(cells: List[Dict]) -> str:
    """Markdown table of grid cells."""
    lines = ["| rows | mode | workers | seconds | CPU seconds (all processes) | rows/s | peak PSS, all processes (MiB) | "
             "peak RSS main / largest worker (MiB) | kept vocabulary rows |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in cells:
        lines.append(f"| {r['rows_total']:,} | {r['mode']} | {r['workers']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {r['peak_pss_mb']:,.0f} | {r['peak_rss_mb']:,.0f} / "
                     f"{r.get('children_peak_rss_mb', 0):,.0f} | "
                     f"{r['vocabulary_rows'] if r['mode'] == 'vocabulary' else '-'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="2000000", help="row count, or a comma list with --grid")
    ap.add_argument("--scale", type=float, default=None,
                    help="cardinality scale (default: 0.02; 1.0 with --grid)")
    ap.add_argument("--profile", default=None, help="synthetic teacher preset (default: the generator's)")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--modes", default='[{}, {"vocabulary_free": true}, {"dense": "bucket"}]',
                    help="JSON list of prepare_criteo keyword sets")
    ap.add_argument("--grid", action="store_true", help="the preprocessing-at-scale table")
    ap.add_argument("--workers", default=None,
                    help="--grid: comma list of worker counts (default: 1 and every core)")
    ap.add_argument("--json", default=None, help="--grid: JSON-lines results file (resumable)")
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--_prepare", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._prepare:
        _prepare_one(*args._prepare)
        return
    if args.grid:
        from slimembed.datasets.parallel import default_workers

        workers = ([int(w) for w in args.workers.split(",")] if args.workers
                   else sorted({1, default_workers()}))
        out = Path(args.out or "runs/prepare_scale")
        grid([int(r) for r in args.rows.split(",")], 1.0 if args.scale is None else args.scale,
             workers, out, Path(args.json or out / "results.jsonl"), min_count=args.min_count)
        return
    from slimembed.datasets import generate

    rows = int(args.rows)
    scale = 0.02 if args.scale is None else args.scale
    work = Path(args.out or tempfile.mkdtemp(prefix="slimembed-bench-"))
    for fmt in ("processed", "tsv"):
        t0, c0 = time.perf_counter(), _cpu()
        kw = {} if args.profile is None else {"profile": args.profile}
        rep = generate(work / fmt, rows=rows, scale=scale, format=fmt, **kw)
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
