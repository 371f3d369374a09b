"""Pareto reports: AUC against embedding-table bytes (``slimembed report STUDY_OR_RESULTS``).

A report reads either an Optuna study written by :mod:`slimembed.search.sweep` (a storage: SQLite
file, journal file or URL, plus ``--study NAME`` when it holds several) or a directory of result
JSONs (``slimembed train``/``demo`` records, sweep ``results/`` files, benchmark ``cells/``), and
writes, generated and never typed by hand:

* ``pareto.csv`` / ``pareto.json``: the non-dominated points (highest AUC for their bytes),
  sorted by bytes; ``points.csv``: every trained point;
* ``report.md``: the front as a Markdown table, with counts and the full-table reference;
* ``pareto.png``: AUC vs table bytes (log x), one marker per method, the front as a step line,
  the full fp32 table as reference lines (its bytes; its AUC when a full-table run exists).

"bytes" are ``memory_report(model).table_bytes``: parameters + buffers of every embedding table
of the model (field and first-order tables), the quantity the sweep minimises.

Usage (needs a finished sweep, so not a doctest)::

    summary = write_report(*load_points("runs/sweep/optuna.db"), out_dir="docs/sweep")
    summary["front"], summary["files"]["png"]
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: Statuses of points that trained and fit their budget (the only ones a front may hold).
TRAINED = ("ok", "reference")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "8")
FIGSIZE = (8.0, 5.0)
DPI = 100
CSV_FIELDS = ("key", "method", "knobs", "table_bytes", "ratio", "val_auc", "test_auc", "val_logloss",
              "test_logloss", "wall_time_s", "status", "seed", "budget")


@dataclass
class Point:
    """One trained (or attempted) configuration."""

    key: str
    method: Optional[str]
    table: Dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    table_bytes: Optional[int] = None
    full_bytes: Optional[int] = None
    val_auc: Optional[float] = None
    test_auc: Optional[float] = None
    val_logloss: Optional[float] = None
    test_logloss: Optional[float] = None
    wall_time_s: Optional[float] = None
    seed: Optional[int] = None
    budget: Optional[float] = None
    message: str = ""

    @property
    def ratio(self) -> Optional[float]:
        if self.table_bytes and self.full_bytes:
            return self.full_bytes / self.table_bytes
        return None

    @property
    def knobs(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.table.items() if k != "method")

    def auc(self, metric: str) -> Optional[float]:
        return self.val_auc if metric == "val" else self.test_auc

    def row(self) -> Dict[str, Any]:
        return {"key": self.key, "method": self.method, "knobs": self.knobs, "table_bytes": self.table_bytes,
                "ratio": _round(self.ratio, 4), "val_auc": _round(self.val_auc, 6),
                "test_auc": _round(self.test_auc, 6), "val_logloss": _round(self.val_logloss, 6),
                "test_logloss": _round(self.test_logloss, 6), "wall_time_s": _round(self.wall_time_s, 2),
                "status": self.status, "seed": self.seed, "budget": self.budget}

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _round(v: Optional[float], n: int) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), n)


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------------------- loading
def point_from_record(rec: Mapping[str, Any], key: str) -> Optional[Point]:
    """A :class:`Point` from a result JSON (a ``run_experiment`` record, optionally with a
    ``sweep`` or ``benchmark`` section carrying ``status``); ``None`` if it is not one."""
    info = rec.get("sweep") or rec.get("benchmark") or {}
    if not isinstance(info, Mapping):
        info = {}
    has_metrics = isinstance(rec.get("metrics"), Mapping) and isinstance(rec.get("memory"), Mapping)
    if not has_metrics and "status" not in info:
        return None
    exp = (rec.get("extra") or {}).get("experiment") or {}
    table = dict(info.get("table") or exp.get("table") or rec.get("table") or {})
    method = table.get("method") or info.get("method")
    status = str(info.get("status") or ("ok" if has_metrics else "unknown"))
    if status == "reference":
        pass
    elif method == "full" and status == "ok" and has_metrics:
        status = "reference"
    p = Point(key=key, method=method, table=table, status=status, seed=info.get("seed"),
              budget=_num(info.get("budget")), message=str(info.get("message") or rec.get("message") or ""))
    if has_metrics:
        mem, met = rec["memory"], rec["metrics"]
        p.table_bytes = int(mem["table_bytes"]) if mem.get("table_bytes") is not None else None
        p.full_bytes = int(mem["full_bytes"]) if mem.get("full_bytes") is not None else None
        p.val_auc = _num((met.get("val") or {}).get("auc"))
        p.test_auc = _num((met.get("test") or {}).get("auc"))
        p.val_logloss = _num((met.get("val") or {}).get("logloss"))
        p.test_logloss = _num((met.get("test") or {}).get("logloss"))
        p.wall_time_s = _num(rec.get("wall_time_s"))
        if p.seed is None:
            p.seed = (rec.get("config") or {}).get("seed")
    return p


def points_from_dir(path: str) -> List[Point]:
    """Every result JSON under ``path`` (recursively; other JSON files are skipped)."""
    out = []
    for f in sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True)):
        try:
            rec = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(rec, Mapping):
            continue
        p = point_from_record(rec, os.path.relpath(f, path))
        if p is not None:
            out.append(p)
    return out


def points_from_study(study: Any) -> List[Point]:
    """The finished trials of a sweep study (RUNNING/WAITING ones are left out)."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        ua = t.user_attrs
        status = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(t.state) or ua.get("status", "ok")
        if t.state == TrialState.PRUNED:
            status = "pruned"
        table = dict(ua.get("table") or {})
        out.append(Point(
            key=f"trial {t.number}", method=ua.get("method") or table.get("method"), table=table, status=status,
            table_bytes=ua.get("table_bytes"), full_bytes=ua.get("full_bytes"), val_auc=_num(ua.get("val_auc")),
            test_auc=_num(ua.get("test_auc")), val_logloss=_num(ua.get("val_logloss")),
            test_logloss=_num(ua.get("test_logloss")), wall_time_s=_num(ua.get("wall_time_s")),
            message=str(ua.get("infeasible") or ua.get("error") or ""),
        ))
    return out


def open_study_source(source: str, study_name: Optional[str] = None) -> Any:
    """Load a study from a storage path/URL; the study name may be left out when there is one."""
    import optuna

    from .sweep import resolve_storage

    is_url = "://" in source
    path = source[len("journal:"):] if source.startswith("journal:") else source
    if not is_url and not Path(path).exists():
        raise FileNotFoundError(f"{source!r} is neither a results directory nor a study storage file")
    storage, _ = resolve_storage(source, ".")
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"{source!r} holds studies {names}: name one with --study")
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(f"no study {study_name!r} in {source!r}; studies: {names}")
    return optuna.load_study(study_name=study_name, storage=storage)


def load_points(source: str, study_name: Optional[str] = None) -> Tuple[List[Point], Dict[str, Any]]:
    """``(points, meta)`` from a results directory or a study storage."""
    if Path(source).is_dir():
        return points_from_dir(source), {"source": str(source), "kind": "results"}
    study = open_study_source(source, study_name)
    meta = {"source": str(source), "kind": "study", "study": study.study_name,
            "directions": [d.name.lower() for d in study.directions]}
    cfg = study.user_attrs.get("slimembed:sweep") or {}
    if cfg:
        meta["mode"] = cfg.get("mode")
        meta["budget_bytes"] = cfg.get("budget_bytes")
        meta["full_bytes"] = cfg.get("full_bytes")
    return points_from_study(study), meta


# ---------------------------------------------------------------------------------- front
def pareto_front(points: Iterable[Point], metric: str = "val") -> List[Point]:
    """Non-dominated trained points (maximise AUC, minimise table bytes), by bytes ascending.
    Identical (AUC, bytes) pairs are all kept, as Optuna's ``best_trials`` keeps them."""
    cand = [p for p in points if p.status in TRAINED and p.table_bytes is not None and p.auc(metric) is not None]
    cand.sort(key=lambda p: (p.table_bytes, -p.auc(metric)))
    front: List[Point] = []
    best: Optional[Tuple[float, int]] = None
    for p in cand:
        a = p.auc(metric)
        if best is None or a > best[0]:
            front.append(p)
            best = (a, p.table_bytes)
        elif a == best[0] and p.table_bytes == best[1]:
            front.append(p)
    return front


def reference_point(points: Sequence[Point], metric: str = "val") -> Optional[Point]:
    refs = [p for p in points if p.method == "full" and p.status in TRAINED and p.auc(metric) is not None]
    if not refs:
        return None
    return max(refs, key=lambda p: p.auc(metric))


# ---------------------------------------------------------------------------------- writing
def _write_csv(path: Path, points: Sequence[Point]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for p in points:
            w.writerow(p.row())


def _mib(b: Optional[float]) -> str:
    return "-" if b is None else f"{b / 2**20:.3f}"


def markdown_table(front: Sequence[Point]) -> List[str]:
    lines = ["| # | method | knobs | table MiB | compression | val AUC | test AUC | test logloss | run |",
             "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for i, p in enumerate(front, 1):
        f4 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        ratio = "-" if p.ratio is None else f"{p.ratio:.1f}x"
        lines.append(f"| {i} | {p.method} | {p.knobs or '-'} | {_mib(p.table_bytes)} | {ratio} | {f4(p.val_auc)} | "
                     f"{f4(p.test_auc)} | {f4(p.test_logloss)} | {p.key} |")
    return lines


def seed_table(points: Sequence[Point], metric: str = "test") -> Tuple[List[str], List[Dict[str, Any]]]:
    """Configurations (method + knobs) trained with several seeds: the AUC's mean ± std and the
    paired same-seed difference to the full table with its 95% t-interval (:mod:`.stats`).
    Empty when no configuration has two seeds (a sweep's trials: one seed each)."""
    from .stats import fmt_mean_std, paired_by_seed

    groups: Dict[Tuple[str, str], Dict[int, float]] = {}
    for p in points:
        a = p.auc(metric)
        if p.status in TRAINED and a is not None and p.seed is not None:
            groups.setdefault((str(p.method), p.knobs), {})[int(p.seed)] = float(a)
    if not any(len(v) > 1 for v in groups.values()):
        return [], []
    full = next((v for (m, _), v in groups.items() if m == "full"), {})
    lines = [f"| method | knobs | seeds | {metric} AUC | Δ vs full [95% CI] |", "|---|---|---:|---:|---:|"]
    rows: List[Dict[str, Any]] = []
    for (m, k), by_seed in sorted(groups.items()):
        d = paired_by_seed(by_seed, full) if m != "full" and full else None
        lines.append(f"| {m} | {k or '-'} | {len(by_seed)} | {fmt_mean_std(list(by_seed.values()))} | "
                     f"{'—' if d is None else d.fmt()} |")
        rows.append({"method": m, "knobs": k, "auc": by_seed, "vs_full": None if d is None else d.to_dict()})
    return lines, rows


def counts(points: Sequence[Point]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for p in points:
        out[p.status] = out.get(p.status, 0) + 1
    return out


def plot(points: Sequence[Point], path: Path, metric: str = "val", front: Optional[Sequence[Point]] = None,
         title: str = "", full_bytes: Optional[float] = None, connect: bool = False) -> Tuple[int, int]:
    """Write the AUC-vs-bytes PNG (Agg canvas: no display, no global backend switch).

    One marker per method; all trained points faint, the front bold on a step line; ``connect``
    draws each method's points as a line (the benchmark's budgets). Returns ``(width, height)``
    in pixels (``FIGSIZE * DPI`` = 800 x 500)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    trained = [p for p in points if p.status in TRAINED and p.table_bytes and p.auc(metric) is not None]
    methods = sorted({p.method for p in trained if p.method != "full"})
    front = list(front if front is not None else pareto_front(points, metric))
    front_keys = {id(p) for p in front}
    for i, m in enumerate(methods):
        pts = sorted((p for p in trained if p.method == m), key=lambda p: p.table_bytes)
        mk = MARKERS[i % len(MARKERS)]
        color = f"C{i % 10}"
        xs = [p.table_bytes for p in pts]
        ys = [p.auc(metric) for p in pts]
        ax.scatter(xs, ys, marker=mk, color=color, alpha=0.35, s=28, label=m)
        if connect and len(pts) > 1:
            ax.plot(xs, ys, color=color, alpha=0.6, linewidth=1)
        fx = [p.table_bytes for p in pts if id(p) in front_keys]
        fy = [p.auc(metric) for p in pts if id(p) in front_keys]
        if fx:
            ax.scatter(fx, fy, marker=mk, color=color, edgecolors="black", linewidths=0.8, s=60, zorder=3)
    if len(front) > 1:
        ax.step([p.table_bytes for p in front], [p.auc(metric) for p in front], where="post",
                color="black", linewidth=1, alpha=0.7, label="Pareto front")
    ref = reference_point(points, metric)
    fb = full_bytes or (ref.table_bytes if ref else None) or next((p.full_bytes for p in points if p.full_bytes), None)
    if fb:
        ax.axvline(fb, color="gray", linestyle="--", linewidth=1, label=f"full table fp32 ({fb / 2**20:.2f} MiB)")
    if ref is not None:
        ax.axhline(ref.auc(metric), color="gray", linestyle=":", linewidth=1,
                   label=f"full table AUC {ref.auc(metric):.4f}")
        ax.scatter([ref.table_bytes], [ref.auc(metric)], marker="*", color="black", s=90, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("embedding-table bytes (params + buffers, log scale)")
    ax.set_ylabel(f"{'validation' if metric == 'val' else 'test'} AUC")
    ax.set_title(title or "AUC vs embedding memory")
    ax.grid(True, which="both", alpha=0.25)
    if methods or ref is not None or fb:
        ax.legend(loc="best", fontsize=8)
    fig.savefig(str(path), dpi=DPI)
    return int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)


def write_report(points: Sequence[Point], meta: Optional[Mapping[str, Any]] = None, out_dir: str = "report",
                 metric: str = "val", title: Optional[str] = None) -> Dict[str, Any]:
    """Write ``pareto.csv``, ``pareto.json``, ``points.csv``, ``report.md`` and ``pareto.png``
    into ``out_dir``; returns a summary (counts, the front, the file paths)."""
    if metric not in ("val", "test"):
        raise ValueError(f"metric must be 'val' or 'test', got {metric!r}")
    meta = dict(meta or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    front = pareto_front(points, metric)
    trained = [p for p in points if p.status in TRAINED]
    ref = reference_point(points, metric)
    full_bytes = meta.get("full_bytes") or next((p.full_bytes for p in points if p.full_bytes), None)
    c = counts(points)
    title = title or (f"study {meta['study']}" if meta.get("study") else f"results {meta.get('source', '')}")
    files = {"csv": out / "pareto.csv", "json": out / "pareto.json", "points": out / "points.csv",
             "md": out / "report.md", "png": out / "pareto.png"}
    _write_csv(files["csv"], front)
    _write_csv(files["points"], sorted(trained, key=lambda p: (p.table_bytes or 0)))
    size = plot(points, files["png"], metric, front, title=f"{title}: AUC vs table bytes", full_bytes=full_bytes)
    summary = {
        "title": title, "metric": metric, "meta": meta, "counts": c, "points": len(trained),
        "front": len(front), "full_bytes": full_bytes,
        "reference": None if ref is None else {"key": ref.key, "val_auc": ref.val_auc, "test_auc": ref.test_auc,
                                                "table_bytes": ref.table_bytes},
        "png_size": list(size),
        "pareto": [p.to_dict() for p in front],
        "files": {k: str(v) for k, v in files.items()},
    }
    files["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mname = "validation AUC" if metric == "val" else "test AUC"
    md = [f"# Pareto front: {mname} vs embedding-table bytes — {title}", "",
          f"Generated by `slimembed report` from `{meta.get('source', '')}`"
          + (f" (study `{meta['study']}`)" if meta.get("study") else "") + ".",
          f"Points: {len(trained)} trained; statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + ".",
          f"The front keeps the points no other point beats on both {mname} (higher) and bytes (lower); "
          "bytes are parameters + buffers of all embedding tables (field and first-order)."]
    if meta.get("budget_bytes"):
        md.append(f"Budget: {int(meta['budget_bytes']):,} bytes ({_mib(meta['budget_bytes'])} MiB).")
    if full_bytes:
        md.append(f"Full fp32 tables: {int(full_bytes):,} bytes ({_mib(full_bytes)} MiB)"
                  + (f", {mname} {ref.auc(metric):.4f} ({ref.key})." if ref is not None else
                     " (no full-table run among the points)."))
    md += ["", *markdown_table(front), "", f"![AUC vs bytes]({files['png'].name})", ""]
    seed_lines, seed_rows = seed_table(points, metric)
    if seed_lines:
        from .stats import INTERVAL_METHOD

        md += ["## Configurations with several seeds", "",
               f"Mean ± std over seeds; Δ: the {INTERVAL_METHOD} against the full table; `*`: the "
               "interval excludes 0.", "", *seed_lines, ""]
        summary["seeds"] = seed_rows
        files["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["md"].write_text("\n".join(md))
    return summary


def default_out_dir(source: str, study: Optional[str]) -> str:
    if Path(source).is_dir():
        return str(Path(source) / "report")
    if "://" not in source:
        path = source[len("journal:"):] if source.startswith("journal:") else source
        return str(Path(path).parent / f"report-{study or Path(path).stem}")
    return f"report-{study or 'study'}"


def report(source: str, out_dir: Optional[str] = None, study: Optional[str] = None, metric: str = "val",
           log=print) -> Dict[str, Any]:
    """``slimembed report``: load, write, print a short summary."""
    points, meta = load_points(source, study)
    if not points:
        raise ValueError(f"no result records found in {source!r}")
    out_dir = out_dir or default_out_dir(source, meta.get("study"))
    s = write_report(points, meta, out_dir, metric)
    log(f"[report] {s['points']} trained points, {s['front']} on the Pareto front ({metric} AUC vs table bytes); "
        f"statuses: {s['counts']}")
    for line in markdown_table([Point(**{k: v for k, v in d.items() if k != 'ratio'}) for d in s["pareto"]]):
        log(line)
    log(f"[report] wrote {', '.join(s['files'].values())}")
    return s


__all__ = ["Point", "TRAINED", "load_points", "markdown_table", "open_study_source", "pareto_front", "plot",
           "point_from_record", "points_from_dir", "points_from_study", "reference_point", "report",
           "write_report"]
