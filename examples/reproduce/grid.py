"""What the reproduction grids (``unified.py``, ``optembed.py``) share: cells, resume, data, statistics.

* :func:`cells`: the cartesian product of the grid's axes in run order, an unbudgeted arm
  (``full``) once per other-axes combination.
* :func:`resume`: one JSON file per cell; a cell whose file exists is read back, not rerun, so an
  interrupted grid continues where it stopped.
* :func:`ensure_synthetic`: the one data-cache rule: synthetic data in a directory is reused
  exactly when it is what the generator arguments would make
  (:func:`slimembed.search.benchmark.synthetic_mismatch`, the rule of ``slimembed benchmark`` too);
  other data is regenerated, unless runs already claim the directory's data.
* :func:`mean_std`, :func:`paired_diff`: mean ± std over seeds, and an arm's paired difference
  to the reference (``full``) over the seeds both have, with a 95% Student-t interval.

These scripts are not part of the installed package: run them from a checkout, e.g.
``python examples/reproduce/unified.py --help``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple



def cells(axes: Sequence[Tuple[str, Sequence[Any]]], *, budget_axis: Optional[str] = None,
          unbudgeted: Collection[str] = ("full",), method_axis: str = "method") -> List[Dict[str, Any]]:
    """The grid's cells in run order (first axis outermost).

    A cell whose ``method_axis`` value is in ``unbudgeted`` has ``budget_axis`` ``None`` and
    appears once where its first budget would be.

    >>> cells([("seed", [0]), ("method", ["full", "hash"]), ("c", [10, 50])], budget_axis="c")
    [{'seed': 0, 'method': 'full', 'c': None}, {'seed': 0, 'method': 'hash', 'c': 10}, {'seed': 0, 'method': 'hash', 'c': 50}]
    """
    names = [name for name, _ in axes]
    out: List[Dict[str, Any]] = []
    seen = set()
    for values in itertools.product(*(vals for _, vals in axes)):
        cell = dict(zip(names, values))
        if budget_axis is not None and cell.get(method_axis) in unbudgeted:
            cell[budget_axis] = None
        key = tuple(cell[n] for n in names)
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


def resume(path: Path, compute: Callable[[], Dict[str, Any]]) -> Tuple[Dict[str, Any], bool]:
    """``(record, resumed)``: the cell's JSON at ``path`` if it exists, else ``compute()``, written
    to ``path`` atomically unless ``compute`` wrote it itself."""
    from slimembed.ctr.trainer import atomic_write_json

    path = Path(path)
    if path.exists():
        return json.loads(path.read_text()), True
    rec = compute()
    if not path.exists():
        atomic_write_json(rec, path)
    return rec, False


def ensure_synthetic(path: Path, *, rows: int, seed: int = 0, scale: float = 0.02,
                     profile: Optional[str] = None, claimed_by: Optional[Path] = None,
                     log: Callable[[str], None] = print) -> Path:
    """Synthetic Criteo-like data at ``path``, generated unless the data there is already what
    these arguments make. ``claimed_by``: a grid directory whose runs were trained on the data
    at ``path`` once it holds ``data_identity.json``; data it claims is never replaced.
    """
    from slimembed.datasets import DEFAULT_PROFILE, generate
    from slimembed.search.benchmark import synthetic_mismatch

    path = Path(path)
    gen = {"rows": rows, "seed": seed, "scale": scale, "profile": profile or DEFAULT_PROFILE}
    if (path / "schema.json").exists():
        diff = synthetic_mismatch(path, gen)
        if diff == {}:
            return path
        if claimed_by is not None and (Path(claimed_by) / "data_identity.json").exists():
            detail = "not synthetic" if diff is None else ", ".join(
                f"{k}: {b!r} (wanted {a!r})" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"{path} was made with other parameters than {gen} ({detail}) and "
                             f"{claimed_by} holds runs on it; use another --out")
    t0 = time.perf_counter()
    log(f"[grid] generating {rows:,} synthetic Criteo-like rows ({gen['profile']}) into {path} ...")
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(str(path), rows=rows, seed=seed, scale=scale, profile=gen["profile"])
    log(f"[grid] generated in {time.perf_counter() - t0:.0f} s")
    return path


def _finite(values: Sequence[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values: Sequence[Optional[float]]) -> Tuple[float, float]:
    """Mean and sample std of the finite values (NaN, 0.0 when there are none; std 0.0 for one).

    >>> [round(x, 4) for x in mean_std([0.80, 0.81, None, 0.82])]
    [0.81, 0.01]
    """
    vals = _finite(values)
    if not vals:
        return math.nan, 0.0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), std


def paired_diff(arm: Mapping[int, float], ref: Mapping[int, float]) -> Optional[Dict[str, Any]]:
    """``arm - ref`` paired by seed over the seeds both have (the library's rule,
    :func:`slimembed.search.stats.paired_by_seed`): mean, n and the 95% t-interval (``ci95`` is
    ``None`` with one seed). ``None`` when no seed is shared.

    >>> d = paired_diff({0: 0.80, 1: 0.81, 2: 0.79}, {0: 0.79, 1: 0.79, 2: 0.78})
    >>> d["n"], round(d["mean"], 4), [round(x, 4) for x in d["ci95"]]
    (3, 0.0133, [-0.001, 0.0277])
    """
    from slimembed.search.stats import paired_by_seed

    seeds = sorted(s for s in arm if s in ref and len(_finite([arm[s], ref[s]])) == 2)
    if not seeds:
        return None
    d = paired_by_seed({s: arm[s] for s in seeds}, {s: ref[s] for s in seeds})
    return {"mean": d.mean, "n": d.n, "ci95": None if d.low is None else [d.low, d.high],
            "significant": d.significant, "seeds": seeds}


def fmt_mean_std(values: Sequence[Optional[float]], fmt: str) -> str:
    """``"m ± s"`` over the finite values, the bare value for one, ``"—"`` for none.

    >>> fmt_mean_std([0.8, 0.82], ".3f"), fmt_mean_std([0.8], ".3f"), fmt_mean_std([], ".3f")
    ('0.810 ± 0.014', '0.800', '—')
    """
    vals = _finite(values)
    if not vals:
        return "—"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(statistics.mean(vals), fmt)} ± {format(statistics.stdev(vals), fmt)}"
