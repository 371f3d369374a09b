"""One memory budget for a whole model, planned before any table is built (docs/architecture.md §2).

A CTR model owns several embedding tables: DeepFM has the field table (``[F, D]``) and a 1-dim
first-order table, DLRM one table, a two-tower model more. A budget ("10x smaller embeddings")
belongs to the *model*: :class:`TablePlan` learns which tables the model asks for (a probe build on
the ``meta`` device, nothing allocated), splits the budget across them, and then hands the model
the planned tables in the order it asks for them. ``plan.summary()`` records the split.

The split: every table starts with a share proportional to its full fp32 bytes (the same ratio for
every table). A table whose method cannot get that small (its *floor*: the bytes at the cheapest
knob, e.g. per-field hash coefficients and offsets of a 1-dim first-order table) gets its floor,
and the rest of the budget is re-split over the other tables; a budget below the sum of the floors
fails at once with one line naming the method, its floor and the smallest reachable ratio. Within a
table, the method's own ``for_budget`` splits the share across fields (e.g. ``hash`` by its
``allocation`` rule) and lands on it from below.

Example::

    >>> from slimembed.tables import Feature
    >>> from slimembed.tables.plan import TablePlan
    >>> feats = [Feature("C1", 1000, 8), Feature("C2", 50, 8)]
    >>> first = [Feature("C1", 1000, 1), Feature("C2", 50, 1)]
    >>> plan = TablePlan("robe", compression=10)
    >>> plan.solve([("field", feats), ("first_order", first)])
    >>> field, first_order = plan(feats), plan(first)
    >>> s = plan.summary()
    >>> s["budget_bytes"], s["table_bytes"] <= s["budget_bytes"]
    (3780, True)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .feature import Feature
from .memory import memory_report
from .registry import get_table_class, make_table

Request = Tuple[str, List[Feature]]
_NEED = re.compile(r"needs at least (\d+) bytes")


def full_bytes(features: Sequence[Feature]) -> int:
    """Bytes of the uncompressed fp32 table for ``features``."""
    return sum(int(f.num_embeddings) * int(f.embedding_dim) * 4 for f in features)


def method_floor(method: str, features: Sequence[Feature], **kwargs: Any) -> int:
    """The fewest bytes ``method`` can reach for ``features`` (its cheapest knob), measured on the
    ``meta`` device. ``full`` cannot shrink: its floor is its full size."""
    if method == "full":
        return full_bytes(features)
    cls = get_table_class(method)
    try:
        with torch.device("meta"):
            table = cls.for_budget(list(features), 1, **kwargs)
    except ValueError as e:  # the one budget error (tables/budget.py budget_error) names the floor
        m = _NEED.search(str(e))
        if m is None:
            raise
        return int(m.group(1))
    return int(memory_report(table).table_bytes)  # pragma: no cover - a 1-byte budget fits


def _role_of(path: str) -> str:
    return {"embedding": "field", "first_order": "first_order"}.get(path, path or "table")


class _Probe(nn.Module):
    """Stands in for a table during the planning build: records features, holds nothing."""

    def __init__(self, features: Sequence[Feature]) -> None:
        super().__init__()
        self.features = list(features)
        self.output_dims = [f.embedding_dim for f in self.features]
        self.feature_names = [f.name for f in self.features]


class TablePlan:
    """A model-level budget: one method (optionally another for the first-order table) sized so
    that all the model's tables together fit ``budget_bytes`` (or full bytes / ``compression``).

    Use it as the model's ``table_factory`` after :meth:`solve` (or let :func:`plan_model` do
    both). Args:
        method: the table method of every table.
        budget_bytes / compression: the model's total budget (one of them; neither: no budget,
            every table built at the method's defaults).
        first_order: a method name or ``{method: ..., **kwargs}`` for tables of dim 1 (e.g.
            ``hash`` beside ``mde``, whose dims cannot go below 1).
        **method_kwargs: the method's own arguments, passed to every table of ``method``.
    """

    def __init__(
        self,
        method: str,
        budget_bytes: Optional[int] = None,
        compression: Optional[float] = None,
        first_order: Any = None,
        **method_kwargs: Any,
    ) -> None:
        if budget_bytes is not None and compression is not None:
            raise ValueError("give budget_bytes or compression, not both")
        if compression is not None and not float(compression) > 0:
            raise ValueError(f"compression must be > 0, got {compression}")
        if budget_bytes is not None and int(budget_bytes) <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}")
        get_table_class(method)  # unknown names fail here, before any data
        self.method = method
        self.budget_bytes = None if budget_bytes is None else int(budget_bytes)
        self.compression = None if compression is None else float(compression)
        self.method_kwargs = dict(method_kwargs)
        fo = {"method": first_order} if isinstance(first_order, str) else dict(first_order or {})
        self.first_order = fo or None
        if self.first_order is not None:
            get_table_class(self.first_order["method"])
        self.requests: List[Request] = []
        self.shares: List[Optional[int]] = []
        self._tables: List[Optional[nn.Module]] = []
        self._next = 0

    # ---------------------------------------------------------------- per-table method
    def _spec(self, features: Sequence[Feature]) -> Tuple[str, Dict[str, Any]]:
        if self.first_order is not None and all(f.embedding_dim == 1 for f in features):
            kw = dict(self.first_order)
            return kw.pop("method"), kw
        return self.method, dict(self.method_kwargs)

    # ---------------------------------------------------------------- planning
    def total_budget(self, requests: Sequence[Request]) -> Optional[int]:
        full = sum(full_bytes(f) for _, f in requests)
        if self.budget_bytes is not None:
            return self.budget_bytes
        if self.compression is not None:
            return int(full / self.compression)
        return None

    def solve(self, requests: Sequence[Request]) -> None:
        """Split the budget over ``requests`` (``[(role, features), ...]`` in build order).

        Raises ``ValueError`` (one line) when the floors of the tables exceed the budget.
        """
        self.requests = [(r, list(f)) for r, f in requests]
        self._tables = [None] * len(self.requests)
        self._next = 0
        budget = self.total_budget(self.requests)
        if budget is None:
            self.shares = [None] * len(self.requests)
            return
        fulls = [full_bytes(f) for _, f in self.requests]
        specs = [self._spec(f) for _, f in self.requests]
        floors = [method_floor(m, f, **kw) for (m, kw), (_, f) in zip(specs, self.requests)]
        fixed: Dict[int, int] = {}
        while True:  # water-filling: tables whose floor exceeds their share are pinned at it
            free = [i for i in range(len(fulls)) if i not in fixed]
            left = budget - sum(fixed.values())
            den = sum(fulls[i] for i in free)
            shares = {i: (left * fulls[i] // den if den else 0) for i in free}
            newly = {i: floors[i] for i in free if floors[i] > shares[i]}
            if not newly:
                break
            fixed.update(newly)
        if sum(fixed.values()) > budget or any(s < 0 for s in shares.values()):
            need = sum(floors)
            methods = sorted({m for m, _ in specs})
            total_full = sum(fulls)
            raise ValueError(
                f"method {'/'.join(methods)!r} needs at least {need} bytes for this model's tables; "
                f"budget is {budget}; the smallest ratio it can reach is {total_full / need:.1f}x"
            )
        self.shares = [fixed.get(i, shares.get(i)) for i in range(len(fulls))]

    # ---------------------------------------------------------------- building
    def build(self, index: int) -> nn.Module:
        """The planned table ``index`` (built once)."""
        if self._tables[index] is None:
            role, feats = self.requests[index]
            method, kw = self._spec(feats)
            share = self.shares[index]
            if share is None or method == "full":
                self._tables[index] = make_table(method, feats, **kw)
            else:
                self._tables[index] = make_table(method, feats, budget_bytes=share, **kw)
        return self._tables[index]

    def __call__(self, features: Sequence[Feature], **more: Any) -> nn.Module:
        """The model's ``table_factory``: returns the planned tables in the order they were
        requested at planning time (checked against ``features``)."""
        if not self.requests:
            raise RuntimeError("TablePlan.solve(...) must run before the plan builds tables "
                               "(plan_model does both)")
        if self._next >= len(self.requests):
            raise RuntimeError(f"the model asked for more tables than the {len(self.requests)} it "
                               "asked for while planning")
        i = self._next
        role, feats = self.requests[i]
        if [f.to_dict() for f in feats] != [f.to_dict() for f in features]:
            raise RuntimeError(f"table {i} ({role}) was planned for other features than the model asks for")
        self._next += 1
        if more:
            raise TypeError(f"TablePlan tables take no extra arguments, got {sorted(more)}")
        return self.build(i)

    def summary(self) -> Dict[str, Any]:
        """The split: budget, and per table its role, method, share, bytes and rows per field."""
        tables = []
        for i, (role, feats) in enumerate(self.requests):
            method, _ = self._spec(feats)
            t = self._tables[i]
            rep = memory_report(t) if t is not None else None
            rows = getattr(t, "rows_per_feature", None) if t is not None else None
            tables.append({
                "role": role, "method": method, "features": len(feats),
                "full_bytes": full_bytes(feats), "share_bytes": self.shares[i] if self.shares else None,
                "bytes": None if rep is None else int(rep.table_bytes),
                "knob": getattr(t, "budget_solution", None),
                "rows_per_feature": None if rows is None else dict(zip([f.name for f in feats], map(int, rows))),
            })
        built = [t["bytes"] for t in tables if t["bytes"] is not None]
        return {
            "method": self.method, "compression": self.compression,
            "budget_bytes": self.total_budget(self.requests),
            "full_bytes": sum(t["full_bytes"] for t in tables),
            "table_bytes": sum(built) if len(built) == len(tables) else None,
            "tables": tables,
        }

    def describe(self) -> str:
        """A few lines for a terminal: each table's share and bytes."""
        s = self.summary()
        mib = lambda b: "—" if b is None else f"{b / 2**20:.3f} MiB"  # noqa: E731
        lines = [f"budget {mib(s['budget_bytes'])} for {len(s['tables'])} table(s) "
                 f"(full fp32 {mib(s['full_bytes'])})"]
        for t in s["tables"]:
            lines.append(f"  {t['role']}: {t['method']}, {t['features']} features, share "
                         f"{mib(t['share_bytes'])}, built {mib(t['bytes'])} of full {mib(t['full_bytes'])}")
        return "\n".join(lines)


def probe_requests(build: Callable[[Callable[..., nn.Module]], nn.Module]) -> List[Request]:
    """``[(role, features)]`` of the tables ``build(table_factory)`` asks for, in order.

    The model is built on the ``meta`` device with placeholder tables (nothing allocated); a
    table's role is where the model keeps it (``embedding`` -> ``field``, ``first_order``).
    """
    probes: List[_Probe] = []

    def factory(features: Sequence[Feature], **_: Any) -> nn.Module:
        p = _Probe(features)
        probes.append(p)
        return p

    with torch.device("meta"):
        model = build(factory)
    where = {id(m): n for n, m in model.named_modules()}
    return [(_role_of(where.get(id(p), f"table{i}")), p.features) for i, p in enumerate(probes)]
