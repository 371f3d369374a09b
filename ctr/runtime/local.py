"""One process, no process group: the runtime of every run not launched by torchrun.

Every reduction is the identity, the model is not wrapped and this process writes every file, so
the trainer's code path is the same as under DDP or DMP (``docs/architecture.md`` §4).

Example::

    >>> import torch
    >>> from torch import nn
    >>> rt = LocalRuntime()
    >>> m = nn.Linear(3, 1)
    >>> rt.wrap_model(m) is m and rt.unwrap(m) is m and not rt.is_sharded(m)
    True
    >>> rt.all_gather_1d(torch.tensor([1.0, 2.0])).tolist(), rt.all_reduce_sum([2, 3])
    ([1.0, 2.0], [2.0, 3.0])
    >>> rt.broadcast_object({"a": 1}), rt.record_fields(m)
    ({'a': 1}, {})
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from torch import Tensor, nn

from .base import Device, Runtime


class LocalRuntime(Runtime):
    """A single process: rank 0 of 1; collectives return their input."""

    name = "local"

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if src != 0:
            raise ValueError(f"broadcast_object: src={src} does not exist in a single-process run (rank 0 only)")
        return obj

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def all_gather_1d(self, t: Tensor) -> Tensor:
        return t

    def wrap_model(self, model: nn.Module, train_config: Any = None, device: Optional[Device] = None,
                   batch_size: Optional[int] = None) -> nn.Module:
        """The model itself: nothing to replicate or shard (the trainer moves it to its device)."""
        return model


__all__ = ["LocalRuntime"]
