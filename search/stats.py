"""Statistics for every comparison the project prints (docs/architecture.md §6).

One rule everywhere: a method is compared with its baseline on the *same seeds*; the summary gives
the mean ± sample std over seeds, the mean paired difference (method − baseline, per seed) and its
95% confidence interval from Student's t over the seeds (``n - 1`` degrees of freedom). A
difference is called *significant* only when that interval excludes 0. With fewer than 2 paired
seeds there is no interval and nothing is significant.

Example::

    >>> d = paired_difference([0.80, 0.81, 0.79], [0.785, 0.794, 0.776])
    >>> round(d.mean, 4), d.n, d.significant
    (0.015, 3, True)
    >>> d.fmt()
    '+0.0150 [+0.0125, +0.0175] *'
    >>> paired_difference([0.80, 0.70], [0.75, 0.76]).significant
    False
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

#: The method used for every interval the project prints (said beside each table).
INTERVAL_METHOD = "95% t-interval over seeds of the paired (same-seed) difference"


def mean_std(xs: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """``(mean, sample std)``; std is ``None`` for one value, both ``None`` for none.

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value (``scipy.stats.t``; scipy ships with scikit-learn).

    >>> round(t_critical(2), 3)
    4.303
    """
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, df))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``method - baseline`` over paired seeds, with its confidence interval."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (needs at least 2 pairs)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def fmt(self, digits: int = 4) -> str:
        """``+0.0012 [-0.0003, +0.0027]``, with `` *`` when significant; ``—`` without pairs."""
        if self.mean is None:
            return "—"
        s = f"{self.mean:+.{digits}f}"
        if self.low is None:
            return s + " (1 seed: no interval)"
        return f"{s} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]" + (" *" if self.significant else "")

    def to_dict(self) -> Dict[str, object]:
        return {**asdict(self), "significant": self.significant}


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """The paired difference of two equally long per-seed sequences (pair ``i`` = seed ``i``).

    Pairs where either side is missing (``None``/NaN) are dropped.
    """
    if len(values) != len(baseline):
        raise ValueError(f"paired_difference needs equally long sequences, got {len(values)} and {len(baseline)}")
    diffs = [float(a) - float(b) for a, b in zip(values, baseline)
             if a is not None and b is not None and not math.isnan(float(a)) and not math.isnan(float(b))]
    if not diffs:
        return PairedDifference(None, None, None, 0)
    m, s = mean_std(diffs)
    if s is None:
        return PairedDifference(m, None, None, 1)
    half = t_critical(len(diffs) - 1, confidence) * s / math.sqrt(len(diffs))
    return PairedDifference(m, m - half, m + half, len(diffs))


def paired_by_seed(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> PairedDifference:
    """:func:`paired_difference` over the seeds both mappings hold (``{seed: metric}``).

    >>> paired_by_seed({0: 0.8, 1: 0.82, 2: 0.81}, {0: 0.8, 1: 0.8, 5: 0.7}).n
    2
    """
    seeds = sorted(set(values) & set(baseline))
    return paired_difference([values[s] for s in seeds], [baseline[s] for s in seeds], confidence)


def fmt_mean_std(xs: Sequence[float], digits: int = 4) -> str:
    """``0.8012 ± 0.0010 (n=3)``; ``—`` for no values.

    >>> fmt_mean_std([0.8, 0.81, 0.79])
    '0.8000 ± 0.0100 (n=3)'
    """
    m, s = mean_std(xs)
    if m is None:
        return "—"
    n = len([x for x in xs if x is not None])
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})" if s is not None else f"{m:.{digits}f} (n=1)"
