"""Budgets on the inference footprint, for tables that train with more than they serve with.

``docs/architecture.md`` §2 (budgets): a budget bounds ``memory_report(table).total_bytes``,
except for methods whose training table holds state that inference does not need (an fp32
working copy beside integer codes, per-id query embeddings beside DPQ codes, a dense table that
is exported pruned to CSR). Those set ``budget_counts = "inference"`` through
:class:`InferenceBudget`: their budget bounds :meth:`InferenceBudget.budgeted_bytes`
(= the table's ``inference_bytes()``), and ``memory_report`` stays the honest training footprint.
"""

from __future__ import annotations

from typing import ClassVar


class InferenceBudget:
    """Mixin (before :class:`~slimembed.tables.EmbeddingTable` in the bases): budgets count
    ``inference_bytes()``.

    The class still gives its knob through the base-class hooks (``budget_knob``,
    :meth:`knob_range`, :meth:`budget_build`, :meth:`knob_bytes_fn`, the latter a closed form of
    ``inference_bytes``); ``EmbeddingTable.for_budget`` then checks the built table's
    ``budgeted_bytes()`` (its ``inference_bytes()``), not its ``memory_report``, against the budget.

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
