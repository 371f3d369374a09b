"""Memory accounting (docs/architecture.md §2): every ratio the project prints comes from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch
from torch import nn


@dataclass
class MemoryReport:
    """Bytes of a table or a whole model.

    ``param_bytes``/``buffer_bytes`` count every parameter and buffer once (hash seeds, id remaps
    and masks are memory too); ``optimizer_bytes`` the optimizer state of the module's parameters;
    ``total_bytes`` their sum. ``table_bytes`` is what the slimembed tables store for inference:
    their parameters and buffers, except for tables that train through training-only state
    (int8/int16/alpt's fp32 working copy, deeplight's dense rows, dpq/mgqe's query embeddings:
    classes with ``budgeted_bytes()``), which count their inference footprint and report the rest
    as ``training_only_bytes``. ``full_bytes`` is the uncompressed fp32 baseline for the same
    features and dims, and ``ratio = full_bytes / table_bytes`` the compression of the stored tables.
    """

    param_bytes: int
    buffer_bytes: int
    optimizer_bytes: int
    total_bytes: int
    table_bytes: int
    full_bytes: int
    ratio: float
    training_only_bytes: int = 0

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        mb = lambda b: f"{b / 2**20:.3f} MiB"  # noqa: E731
        return (
            f"params {mb(self.param_bytes)}, buffers {mb(self.buffer_bytes)}, optimizer "
            f"{mb(self.optimizer_bytes)}, total {mb(self.total_bytes)}; tables {mb(self.table_bytes)} "
            f"vs full fp32 {mb(self.full_bytes)} ({self.ratio:.2f}x)"
        )


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        return _tensor_bytes(t._values()) + _tensor_bytes(t._indices())
    return t.numel() * t.element_size()


def _module_bytes(module: nn.Module, seen: set) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    return total


def memory_report(module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> MemoryReport:
    """Report the bytes of ``module`` (a table or a model) and, optionally, its optimizer state.

    Example::

        >>> from slimembed.tables import Feature, make_table, memory_report
        >>> rep = memory_report(make_table("full", [Feature("C1", 1000, 16)]))
        >>> rep.param_bytes, round(rep.ratio, 4)    # the row offsets are buffers on top
        (64000, 0.9998)
    """
    from .base import EmbeddingTable  # local: base imports torchrec lazily

    params = {id(p): p for p in module.parameters()}
    buffers = {id(b): b for b in module.buffers()}
    param_bytes = sum(_tensor_bytes(p) for p in params.values())
    buffer_bytes = sum(_tensor_bytes(b) for b in buffers.values())
    optimizer_bytes = 0
    if optimizer is not None:
        for p, state in optimizer.state.items():
            if id(p) not in params:
                continue
            for v in state.values():
                if torch.is_tensor(v):
                    optimizer_bytes += _tensor_bytes(v)
    tables = [m for m in module.modules() if isinstance(m, EmbeddingTable)]
    # Nested tables (a table built from tables) count once, through the outermost.
    outer = [t for t in tables if not any(t is not o and t in set(o.modules()) for o in tables)]
    seen: set = set()
    table_bytes, training_only = 0, 0
    for t in outer:
        held = _module_bytes(t, seen)
        if getattr(t, "budget_counts", "memory") == "inference":  # the rest only exists while training
            stored = int(t.budgeted_bytes())
            table_bytes += stored
            training_only += max(0, held - stored)
        else:
            table_bytes += held
    full_bytes = sum(t.full_bytes() for t in outer)
    return MemoryReport(
        param_bytes=param_bytes,
        buffer_bytes=buffer_bytes,
        optimizer_bytes=optimizer_bytes,
        total_bytes=param_bytes + buffer_bytes + optimizer_bytes,
        table_bytes=table_bytes,
        full_bytes=full_bytes,
        ratio=(full_bytes / table_bytes) if table_bytes else float("nan"),
        training_only_bytes=training_only,
    )
