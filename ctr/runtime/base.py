"""The training runtime: everything the trainer asks of "how this process trains"
(``docs/architecture.md`` §4).

A :class:`Runtime` owns the process facts (rank, world size, which rank writes), the reductions
evaluation and logging need (``all_reduce_sum``, ``all_gather_1d``, ``broadcast_object``), the
model's wrapping (DDP, DMP or none), the optimizers, the state that goes into checkpoints, the
memory record and the loader checks. Three implementations:

* :class:`~slimembed.ctr.runtime.LocalRuntime`: one process; every reduction is the identity.
* :class:`~slimembed.ctr.runtime.DDPRuntime`: a process group, every table replicated
  (``DistributedDataParallel``; sparse-gradient tables averaged by hooks).
* :class:`~slimembed.ctr.runtime.DMPRuntime`: a process group, plain torchrec tables sharded by
  ``DistributedModelParallel``; checkpoints gather the shards on rank 0.

The trainer holds one runtime and never branches on which one it is. Defaults here are the
single-process behaviour; :class:`ProcessGroupRuntime` swaps in the collectives.

Example::

    >>> from slimembed.ctr.runtime import LocalRuntime
    >>> rt = LocalRuntime()
    >>> rt.rank, rt.world_size, rt.is_main, rt.reduce_mean(3.0, 2)
    (0, 1, True, 1.5)
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import comm
from .comm import DistributedConfig, unwrap_model

Device = Union[str, torch.device]


class Runtime(abc.ABC):
    """How this process trains: the interface the trainer, evaluation and records call.

    Args:
        config: the experiment's ``distributed:`` section (a :class:`DistributedConfig`, a dict
            or ``None``); only the process-group runtimes read it.
    """

    name: ClassVar[str] = "base"

    def __init__(self, config: Union[None, DistributedConfig, Mapping[str, Any]] = None) -> None:
        self.config = DistributedConfig.from_dict(config)

    # ------------------------------------------------------------------ process and reductions
    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """This process's rank (0 single-process)."""

    @property
    @abc.abstractmethod
    def world_size(self) -> int:
        """Number of processes training together."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (checkpoints, records, progress bars): rank 0."""
        return self.rank == 0

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank arrives."""

    @abc.abstractmethod
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled)."""

    @abc.abstractmethod
    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        """Element-wise float64 sum of ``values`` over ranks."""

    @abc.abstractmethod
    def all_gather_1d(self, t: Tensor) -> Tensor:
        """Every rank's 1-D ``t`` (any lengths ``[n_r]``) concatenated in rank order: ``[sum n_r]``."""

    def reduce_mean(self, total: float, count: float) -> float:
        """``sum(total) / sum(count)`` over ranks (``nan`` when no rank counted anything)."""
        s, n = self.all_reduce_sum([total, count])
        return s / n if n else float("nan")

    def resolve_device(self, device: Device) -> torch.device:
        """The device this process trains on (``"cuda"`` is ``cuda:LOCAL_RANK`` under a process group)."""
        return comm.resolve_device(device)

    # ------------------------------------------------------------------ model and optimizers
    @abc.abstractmethod
    def wrap_model(self, model: nn.Module, train_config: Any = None, device: Optional[Device] = None,
                   batch_size: Optional[int] = None) -> nn.Module:
        """``model`` ready for training steps (a DDP/DMP wrapper, or the model itself)."""

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside a wrapper (evaluation, checkpoints, best weights use it)."""
        return unwrap_model(model)

    def is_sharded(self, model: nn.Module) -> bool:
        """Whether ``model`` holds sharded tables (then every forward is a collective)."""
        return False

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` on the training ``device`` (a sharded model already lives where DMP put it)."""
        return model.to(device)

    def optimizers(self, model: nn.Module, train_config: Any):
        """The :class:`~slimembed.ctr.optim.OptimizerSet` training ``model``
        (:func:`slimembed.ctr.optim.build_optimizers` of the unwrapped module)."""
        from ..optim import build_optimizers

        return build_optimizers(self.unwrap(model), train_config)

    # ------------------------------------------------------------------ state (checkpoints)
    def clone_state(self, module: nn.Module) -> Dict[str, Any]:
        """A detached copy of ``module.state_dict()`` (the best weights kept in memory)."""
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def model_state(self, module: nn.Module, state: Optional[Mapping[str, Any]] = None) -> Optional[Mapping[str, Any]]:
        """What a checkpoint stores for ``module`` (or for ``state``, a :meth:`clone_state` of it):
        full tensors; ``None`` on ranks that do not write."""
        return module.state_dict() if state is None else state

    def load_model_state(self, module: nn.Module, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`model_state` (also takes a :meth:`clone_state`)."""
        module.load_state_dict(state)

    def optimizer_state(self, optimizer: Any) -> Any:
        """What a checkpoint stores for ``optimizer``."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: Any, state: Any) -> None:
        """Inverse of :meth:`optimizer_state`."""
        optimizer.load_state_dict(state)

    def read_checkpoint(self, path: Union[str, Path]) -> Dict[str, Any]:
        """Rank 0 reads ``path`` (on the CPU: RNG states must stay CPU tensors) and every rank
        gets it, so checkpoints need no shared storage."""
        return self.broadcast_object(torch.load(path, map_location="cpu", weights_only=False) if self.is_main else None)

    # ------------------------------------------------------------------ loaders
    def check_even_batches(self, loader: Any) -> None:
        """Raise when ranks would run different numbers of training steps (collectives would hang).

        A loader without ``__len__`` is not checked; ``make_loader(..., rank, world_size,
        drop_last=True)`` gives every rank the same count.
        """
        if self.world_size == 1 or not hasattr(loader, "__len__"):
            return
        counts = self.all_gather_1d(torch.tensor([len(loader)], dtype=torch.long)).tolist()
        if len(set(counts)) != 1:
            raise ValueError(
                f"ranks have different numbers of training batches per epoch {counts}: every DDP step "
                "is a collective, so ranks must step together; build the loader with "
                "make_loader(..., rank=rank, world_size=world_size, drop_last=True)"
            )

    # ------------------------------------------------------------------ records
    def num_parameters(self, model: nn.Module) -> int:
        """Parameter count of the whole (unsharded) model."""
        return sum(p.numel() for p in self.unwrap(model).parameters())

    def memory_record(self, model: nn.Module, optimizer: Any = None) -> Dict[str, Any]:
        """``memory_report(model, optimizer).to_dict()`` of the whole (unsharded) model."""
        from slimembed.tables import memory_report

        return memory_report(self.unwrap(model), optimizer).to_dict()

    def record_fields(self, model: nn.Module) -> Dict[str, Any]:
        """Extra top-level entries of the result record (``{}`` single-process)."""
        return {}


class ProcessGroupRuntime(Runtime):
    """The collectives of a started process group (:func:`~slimembed.ctr.runtime.comm.init_distributed`)."""

    def __init__(self, config: Union[None, DistributedConfig, Mapping[str, Any]] = None) -> None:
        super().__init__(config)
        if not comm.is_initialized():
            raise RuntimeError(f"{type(self).__name__} needs a process group: call init_distributed() under torchrun")

    @property
    def rank(self) -> int:
        return comm.get_rank()

    @property
    def world_size(self) -> int:
        return comm.get_world_size()

    def barrier(self) -> None:
        comm.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return comm.broadcast_object(obj, src)

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        return comm.all_reduce_sum(values)

    def all_gather_1d(self, t: Tensor) -> Tensor:
        return comm.all_gather_1d(t)

    def _device_for(self, train_config: Any, device: Optional[Device]) -> torch.device:
        """``device``, else the train config's (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
        if device is None:
            dv = train_config.get("device", "cpu") if isinstance(train_config, Mapping) else getattr(
                train_config, "device", "cpu")
            device = dv or "cpu"
        return self.resolve_device(device)

    def record_fields(self, model: nn.Module) -> Dict[str, Any]:
        """``{"distributed": {world_size, backend, plan, not_sharded}}``."""
        from .shardability import sharding_summary

        return {"distributed": {"world_size": self.world_size, "backend": str(dist.get_backend()),
                                **sharding_summary(model)}}


__all__ = ["Runtime", "ProcessGroupRuntime"]
