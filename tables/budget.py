"""Budget solvers: size a method's integer knob so its memory lands on a byte budget from below.

docs/architecture.md §2 (budgets): every ``for_budget`` solves its knob (rows, collisions, rank, width, array
size...) so that ``memory_report(table).total_bytes <= budget`` and as close as the method's
granularity allows. Memory must be *monotone* in the knob (non-decreasing, or non-increasing with
``increasing=False``, e.g. QR's collision count); the solvers bisect.

Building a 10M-row table thirty times is too slow, so the solvers measure bytes cheaply:

* ``bytes_of(knob)``: a closed-form byte count (preferred: exact and instant), then one real build;
* otherwise ``build(knob)`` is run on the ``meta`` device (no storage allocated, no init) and measured
  with :func:`memory_report`; the winner is then built once for real.

Example::

    >>> from slimembed.tables import Feature, HashTable
    >>> from slimembed.tables.budget import solve_knob
    >>> features = [Feature("C1", 10**6, 16)]
    >>> t = solve_knob(lambda m: HashTable(features, rows=m), budget_bytes=10**6, lo=1, hi=10**6,
    ...                method="hash", knob="rows")
    >>> t.budget_solution["value"], t.budget_solution["bytes"] <= 10**6 < t.budget_solution["next_bytes"]
    (15624, True)
"""

from __future__ import annotations

import math

from typing import Callable, Optional, Tuple, TypeVar

import torch
from torch import nn

from .memory import memory_report

M = TypeVar("M", bound=nn.Module)


def budget_error(method: str, need: int, budget: int, what: str = "") -> ValueError:
    """The one error message for a budget below a method's minimum (tests match on it)."""
    extra = f" ({what})" if what else ""
    return ValueError(
        f"method {method!r} needs at least {int(need)} bytes for these features{extra}; "
        f"budget is {int(budget)}"
    )


def module_bytes(module: nn.Module) -> int:
    """``memory_report(module).total_bytes`` (parameters + buffers, no optimizer)."""
    return int(memory_report(module).total_bytes)


def meta_bytes(build: Callable[[int], nn.Module], knob: int) -> int:
    """Bytes of ``build(knob)`` built on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        module = build(knob)
    return module_bytes(module)


def solve_int(
    bytes_of: Callable[[int], int],
    budget_bytes: int,
    lo: int,
    hi: int,
    method: str,
    knob: str,
    increasing: bool = True,
) -> int:
    """The knob in ``[lo, hi]`` with the most bytes ``<= budget_bytes`` (bisection).

    ``increasing=True``: bytes grow with the knob, the answer is the largest feasible knob.
    ``increasing=False``: bytes shrink as the knob grows, the answer is the smallest feasible knob.

    Raises:
        ValueError: when even the cheapest end (``lo``, or ``hi`` when decreasing) exceeds the
            budget; the message names the method and the minimum bytes.
    """
    lo, hi = int(lo), int(hi)
    if hi < lo:
        raise ValueError(f"{method}: empty range for {knob}: [{lo}, {hi}]")
    cheapest = lo if increasing else hi
    need = int(bytes_of(cheapest))
    if need > budget_bytes:
        raise budget_error(method, need, budget_bytes, f"{knob}={cheapest}")
    if increasing:
        good, bad = lo, hi + 1  # invariant: bytes(good) <= budget; bad is infeasible or past hi
        if bytes_of(hi) <= budget_bytes:
            return hi
        bad = hi
        while bad - good > 1:
            mid = (good + bad) // 2
            if bytes_of(mid) <= budget_bytes:
                good = mid
            else:
                bad = mid
        return good
    good, bad = hi, lo - 1
    if bytes_of(lo) <= budget_bytes:
        return lo
    bad = lo
    while good - bad > 1:
        mid = (good + bad) // 2
        if bytes_of(mid) <= budget_bytes:
            good = mid
        else:
            bad = mid
    return good


def solve_knob(
    build: Callable[[int], M],
    budget_bytes: int,
    lo: int,
    hi: int,
    method: str,
    knob: str,
    bytes_of: Optional[Callable[[int], int]] = None,
    increasing: bool = True,
    check: bool = True,
) -> M:
    """Build the module with the best integer knob in ``[lo, hi]`` under ``budget_bytes``.

    Args:
        build: ``knob -> module``. Must not depend on the default device beyond creating tensors
            (it is also run under ``torch.device("meta")`` when ``bytes_of`` is not given).
        budget_bytes: the budget on ``memory_report(module).total_bytes``.
        lo, hi: the knob's range; ``lo`` (``hi`` if decreasing) is the cheapest setting.
        method, knob: names for error messages.
        bytes_of: optional closed-form ``knob -> bytes``; must equal the built module's bytes.
        increasing: whether bytes grow with the knob (see :func:`solve_int`).
        check: verify the real module's bytes against the budget (guards a wrong ``bytes_of``).
    Returns:
        ``build(best_knob)``, built once for real, with a plain-dict attribute ``budget_solution``
        (``method``, ``knob``, ``value``, ``bytes``, ``next_bytes``: the bytes one knob step more
        expensive, which exceed the budget; their difference is the granularity at this point).
    Raises:
        ValueError("method X needs at least N bytes for these features; budget is B").
    """
    measure = bytes_of if bytes_of is not None else (lambda k: meta_bytes(build, k))
    best = solve_int(measure, budget_bytes, lo, hi, method, knob, increasing)
    module = build(best)
    step = 1 if increasing else -1
    nxt = best + step
    module.budget_solution = {  # type: ignore[assignment]
        "method": method, "knob": knob, "value": best, "budget_bytes": int(budget_bytes),
        "bytes": int(measure(best)),
        # bytes of the next more expensive setting (None at the end of the range): the granularity
        "next_bytes": int(measure(nxt)) if lo <= nxt <= hi else None,
    }
    if check:
        got = module_bytes(module)
        if got > budget_bytes:
            raise AssertionError(
                f"{method}: {knob}={best} built {got} bytes > budget {budget_bytes}; "
                f"its byte formula says {measure(best)}"
            )
    return module


def row_floors(sizes, min_rows: int = 1, collisionless_max: int = 0):
    """Per-field row floors: a field of at most ``collisionless_max`` values keeps all its rows
    (tiny fields cost almost nothing and lose the most from collisions: a 3-value field folded
    into 1 row loses all its signal); others at least ``min_rows``."""
    return [int(n) if int(n) <= int(collisionless_max) else min(int(n), int(min_rows)) for n in sizes]


def row_range(features, budget_bytes: int, min_rows: int, collisionless_max: int) -> Tuple[int, int]:
    """``(lo, hi)`` of a hashed table's ``total_rows`` knob (one common dim ``D``): from the row
    floors (:func:`row_floors`) to the rows ``budget_bytes`` could hold (at most every id's row).
    Granularity: one row, ``4 * D`` bytes."""
    dim = int(features[0].embedding_dim)
    sizes = [int(f.num_embeddings) for f in features]
    floor = sum(row_floors(sizes, min_rows, collisionless_max))
    return floor, max(floor, min(sum(sizes), int(budget_bytes) // (4 * dim)))


def allocate_rows(total: int, sizes, minimum=1, exact: bool = True, weights=None):
    """Split ``total`` rows over fields proportionally to their sizes, capped at each size.

    ``minimum`` is one floor for every field or a list of per-field floors (:func:`row_floors`).

    Water-filling: field ``f`` gets ``min(N_f, max(min(N_f, minimum), lam * N_f))`` rows with one
    common ``lam`` (an exact rational, so every field's share is monotone in ``total``), floored.
    A field whose share reaches ``N_f`` is capped there (it can stay collision-free) and
    ``minimum`` rows are a floor (e.g. 1). With ``exact=True`` the rows the floors left over are
    handed out by largest remainder so the result sums to ``min(total, sum(sizes))``; with
    ``exact=False`` each field's count is monotone in ``total`` (what per-field solvers need).

    ``weights`` (one per field, > 0) replace ``N_f`` in the shares: ``lam * w_f``, still capped at
    ``N_f`` and floored, e.g. ``sqrt(N_f)`` (see :func:`allocation_weights`). Then fields whose share
    reaches ``N_f`` stay whole and their leftover goes to the others; ``lam`` is found by bisection.

    Returns a list of ints. Raises ``ValueError`` when ``total`` cannot cover the floors.

    >>> allocate_rows(30, [300, 20, 10])                       # proportional: 30 x N_f / 330
    [27, 2, 1]
    >>> allocate_rows(30, [300, 20, 10], weights=[300**.5, 20**.5, 10**.5])   # sqrt: small fields win
    [21, 5, 4]
    """
    if weights is not None:
        return _allocate_weighted(int(total), [int(s) for s in sizes], minimum, exact, [float(w) for w in weights])
    sizes = [int(s) for s in sizes]
    total = int(total)
    n = len(sizes)
    mins = [int(minimum)] * n if isinstance(minimum, (int, float)) else [int(m) for m in minimum]
    floor_rows = [min(s, m) for s, m in zip(sizes, mins)]
    if total < sum(floor_rows):
        raise ValueError(f"{total} rows cannot give each of {n} fields its minimum ({sum(floor_rows)} in all)")
    if total >= sum(sizes):
        return list(sizes)
    # Fields pinned at their floor: those whose proportional share is below it. Grow the set until
    # stable (shares are monotone in N_f, so the pinned fields are the smallest ones).
    pinned = [False] * n
    while True:
        rest = [i for i in range(n) if not pinned[i]]
        num = total - sum(floor_rows[i] for i in range(n) if pinned[i])
        den = sum(sizes[i] for i in rest)
        changed = False
        for i in rest:
            if num * sizes[i] < floor_rows[i] * den:  # lam * N_i < floor_i
                pinned[i] = True
                changed = True
        if not changed:
            break
    alloc = [0] * n
    rema = [0] * n
    for i in range(n):
        if pinned[i]:
            alloc[i] = floor_rows[i]
        else:
            q, r = divmod(num * sizes[i], den)
            alloc[i] = min(sizes[i], q)
            rema[i] = r if q < sizes[i] else -1
    if exact:
        left = total - sum(alloc)
        order = sorted((i for i in range(n) if not pinned[i] and alloc[i] < sizes[i]),
                       key=lambda i: (-rema[i], i))
        for i in order[:left]:
            alloc[i] += 1
    return alloc


#: Rules that split a hashed table's rows over its fields (``allocation=`` of hash / double_hash).
ALLOCATIONS = ("proportional", "sqrt", "frequency")


def allocation_weights(rule: str, sizes, frequency=None) -> Optional[list]:
    """Per-field weights of an allocation ``rule`` (``None`` = proportional to ``N_f``).

    ``sqrt``: ``sqrt(N_f)``, so a 300-value field is not folded into one row while a 10M-value
    field keeps thousands. ``frequency``: the given per-field weights (e.g. each field's effective
    number of values in the training split, :func:`slimembed.datasets.counts.frequency_weights`).

    >>> allocation_weights("sqrt", [100, 4])
    [10.0, 2.0]
    """
    if rule not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {rule!r}")
    if rule == "proportional":
        return None
    if rule == "sqrt":
        return [math.sqrt(int(n)) for n in sizes]
    if frequency is None:
        raise ValueError("allocation 'frequency' needs field_weights (per-field training-traffic weights); "
                         "slimembed train computes them from the training split")
    w = [float(x) for x in frequency]
    if len(w) != len(sizes) or not all(x > 0 and math.isfinite(x) for x in w):
        raise ValueError(f"field_weights must be {len(sizes)} positive numbers, got {w}")
    return w


def _allocate_weighted(total: int, sizes: list, minimum, exact: bool, weights: list) -> list:
    """:func:`allocate_rows` with shares ``lam * w_f`` clamped to ``[floor_f, N_f]``."""
    n = len(sizes)
    if len(weights) != n or not all(w > 0 and math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be {n} positive numbers, got {weights}")
    mins = [int(minimum)] * n if isinstance(minimum, (int, float)) else [int(m) for m in minimum]
    floors = [min(s, m) for s, m in zip(sizes, mins)]
    if total < sum(floors):
        raise ValueError(f"{total} rows cannot give each of {n} fields its minimum ({sum(floors)} in all)")
    if total >= sum(sizes):
        return list(sizes)

    def rows(lam: float) -> list:
        return [min(s, max(f, int(lam * w))) for s, f, w in zip(sizes, floors, weights)]

    lo, hi = 0.0, max(s / w for s, w in zip(sizes, weights)) + 1.0  # rows(hi) = sizes
    for _ in range(200):  # the largest lam whose rows fit: every field's count is monotone in total
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if sum(rows(mid)) <= total:
            lo = mid
        else:
            hi = mid
    alloc = rows(lo)
    if exact:  # the few rows int() left over go to the fields with the largest remainders
        left = total - sum(alloc)
        order = sorted((i for i in range(n) if alloc[i] < sizes[i] and lo * weights[i] >= floors[i]),
                       key=lambda i: (-(lo * weights[i] - int(lo * weights[i])), i))
        for i in order[:left]:
            alloc[i] += 1
    return alloc
