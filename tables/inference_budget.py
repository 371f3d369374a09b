"""Budgets on the inference footprint, for tables that train with more than they serve with.

``docs/architecture.md`` §2 (budgets): a budget bounds ``memory_report(table).total_bytes``,
except for methods whose training table holds state that inference does not need (an fp32
working copy beside integer codes, per-id query embeddings beside DPQ codes, a dense table that
is exported pruned to CSR). Those set ``budget_counts = "inference"`` through
:class:`InferenceBudget`: their budget bounds :meth:`InferenceBudget.budgeted_bytes`
(= the table's ``inference_bytes()``), and ``memory_report`` stays the honest training footprint.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from .feature import Feature


class InferenceBudget:
    """Mixin (before :class:`~slimembed.tables.EmbeddingTable` in the bases): budgets count
    ``inference_bytes()``.

    The class still gives its knob through the base-class hooks (``budget_knob``,
    :meth:`knob_range`, :meth:`budget_build`, :meth:`knob_bytes_fn`, the latter a closed form of
    ``inference_bytes``); only the final check differs from ``EmbeddingTable.for_budget``: the
    built table's ``inference_bytes()``, not its ``memory_report``, must fit the budget.

    Example::

        >>> from slimembed.tables import Feature, make_table, memory_report
        >>> t = make_table("int8", [Feature("a", 1000, 16)], compression=3)
        >>> t.budgeted_bytes() == t.budget_solution["bytes"] == 16000 < memory_report(t).total_bytes
        True
    """

    #: which bytes a budget bounds: ``"inference"`` (here) or ``"memory"`` (``memory_report``)
    budget_counts: ClassVar[str] = "inference"

    def budgeted_bytes(self) -> int:
        """The bytes a budget bounds: ``inference_bytes()``."""
        return int(self.inference_bytes())  # type: ignore[attr-defined]

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any):
        """``EmbeddingTable.for_budget`` with :meth:`budgeted_bytes` as the bytes that must fit."""
        from .budget import solve_knob

        c: Any = cls
        if c.budget_knob is None:
            raise ValueError(c.budget_refusal.format(method=c.method, budget=int(budget_bytes)))
        features = list(features)
        for k in c.solved_knobs:
            if k in kwargs:
                if c.refuse_solved_knobs:
                    raise TypeError(f"for_budget solves {c.solved_knobs}; do not pass {k!r}")
                kwargs.pop(k)
        lo, hi = c.knob_range(features, int(budget_bytes), **kwargs)
        bytes_of = c.knob_bytes_fn(features, **kwargs)
        if bytes_of is None:  # measure meta-device builds (shapes only)
            def bytes_of(v: int) -> int:
                with torch.device("meta"):
                    return c.budget_build(features, v, **kwargs).budgeted_bytes()
        table = solve_knob(lambda v: c.budget_build(features, v, **kwargs), int(budget_bytes), lo, hi,
                           method=c.method, knob=c.budget_knob, bytes_of=bytes_of,
                           increasing=c.knob_increasing, check=False)  # memory_report has training extras
        got = table.budgeted_bytes()
        if got > budget_bytes:  # guards a wrong knob_bytes_fn
            raise AssertionError(f"{c.method}: {got} inference bytes > budget {int(budget_bytes)}")
        return table
