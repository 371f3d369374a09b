"""Budget-aware "small fields stay whole" thresholds (docs/architecture.md §2, budgets).

Several methods keep fields with at most ``T`` values uncompressed: QR / compositional and TT
(``threshold``, DLRM's 200) and Unified Embedding (``collisionless_max``, 200). Such a rule is a
hard floor: with 8 fields of at most 200 values (538 values at D = 16, ~34 KB) the table can never
be smaller than those fields, whatever the budget. Following "compress only the fields where
compression saves memory" (VLDB'24 benchmark), a *default* threshold gives way to the budget:
:func:`for_budget_with_threshold` keeps the method's default ``T`` when its floor fits the budget
(nothing changes then), else the largest ``T`` over the distinct cardinalities below the default
(then 0: every field compressed) whose floor fits. The ``T`` used is recorded in
``budget_solution[key]`` and in the table's ``config()``, so a rebuild from config is identical.

A threshold the user passes explicitly is a hard floor: the budget error names it.

Example::

    >>> from slimembed.tables import Feature, make_table
    >>> feats = [Feature("big", 2000, 16), Feature("small", 150, 16)]
    >>> t = make_table("qr", feats, budget_bytes=8000)     # 150 x 64 B = 9,600 B cannot stay whole
    >>> t.threshold, t.budget_solution["threshold"], t.collisions
    (0, 0, [29, 10])
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, List, Sequence

from .budget import budget_error
from .feature import Feature

_NEED = re.compile(r"needs at least (\d+) bytes")
_WHAT = re.compile(r"for these features \((.*)\); budget is")


def _what(err: ValueError, more: str) -> str:
    """The solver's own detail (e.g. ``rank=1``) followed by ``more``."""
    m = _WHAT.search(str(err))
    return f"{m.group(1)}; {more}" if m else more


def default_of(cls: type, key: str) -> int:
    """The constructor default of ``key`` on ``cls`` (e.g. ``threshold=200``)."""
    return int(inspect.signature(cls.__init__).parameters[key].default)


def threshold_candidates(features: Sequence[Feature], default: int) -> List[int]:
    """``default``, then each distinct cardinality below it (descending), then 0.

    Between two cardinalities a threshold changes nothing, so these are all the distinct layouts.
    """
    sizes = sorted({int(f.num_embeddings) for f in features if 0 < int(f.num_embeddings) < default},
                   reverse=True)
    out = [int(default)] + sizes + ([0] if default > 0 else [])
    return list(dict.fromkeys(out))


def for_budget_with_threshold(cls: type, solve: Callable[..., Any], features: Sequence[Feature],
                              budget_bytes: int, key: str, kwargs: dict) -> Any:
    """``solve(features, budget_bytes, **kwargs, key=T)`` with the largest feasible ``T``.

    Args:
        cls: the table class (its ``method`` names errors; its constructor default of ``key``
            is the first candidate).
        solve: the plain budget solve (``super().for_budget`` of the class).
        key: the threshold argument (``"threshold"`` or ``"collisionless_max"``).
        kwargs: the caller's method arguments; ``key`` in them is an explicit, hard threshold.
    Raises:
        ValueError: one line, "method X needs at least N bytes ...; budget is B", N being the
            floor with every field compressed (``key=0``), or with the explicit threshold.
    """
    features = list(features)
    if key in kwargs:  # explicit: a hard floor, named in the error
        try:
            return solve(features, budget_bytes, **kwargs)
        except ValueError as e:
            m = _NEED.search(str(e))
            if m is None:
                raise
            raise budget_error(cls.method, int(m.group(1)), budget_bytes,
                               _what(e, f"{key}={kwargs[key]} given explicitly keeps fields with at most "
                                        f"{kwargs[key]} values whole; lower it or leave it out")) from None
    last: ValueError = ValueError("no threshold tried")
    need = None
    for t in threshold_candidates(features, default_of(cls, key)):
        try:
            table = solve(features, budget_bytes, **kwargs, **{key: t})
        except ValueError as e:
            m = _NEED.search(str(e))
            if m is None:
                raise
            last, need = e, int(m.group(1))
            continue
        table.budget_solution[key] = t  # type: ignore[index]
        return table
    if need is None:
        raise last
    raise budget_error(cls.method, need, budget_bytes, _what(last, f"every field compressed, {key}=0")) from None
