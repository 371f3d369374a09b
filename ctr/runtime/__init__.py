"""One training runtime interface, three implementations (``docs/architecture.md`` §4).

The trainer asks a :class:`Runtime` everything that depends on how the process trains: wrapping
the model, building the optimizers, the reductions of evaluation and logging, checkpoint state,
memory records, which rank writes. Pick one with :func:`make_runtime` (from the experiment's
``distributed:`` section, before wrapping) or :func:`runtime_for` (from an already wrapped model):

============================  ==========================================================
no process group              :class:`LocalRuntime`
``sharding: none``            :class:`DDPRuntime` (``DistributedDataParallel``)
``sharding: table_wise`` ...  :class:`DMPRuntime` (torchrec ``DistributedModelParallel``)
============================  ==========================================================

Run any experiment under ``torchrun`` (see ``docs/distributed.md``)::

    torchrun --nproc_per_node 2 -m slimembed.ctr.cli train --config exp.yaml

Example (single process: the local runtime, the model untouched)::

    >>> from torch import nn
    >>> m = nn.Linear(2, 1)
    >>> rt = make_runtime({"sharding": "table_wise"})
    >>> rt.name, wrap_model(m, {"sharding": "table_wise"}) is m, runtime_for(m).name
    ('local', True, 'local')
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from torch import nn

from . import comm
from .base import Device, ProcessGroupRuntime, Runtime
from .comm import DistributedConfig
from .ddp import DDPRuntime
from .dmp import DMPRuntime
from .local import LocalRuntime

ConfigLike = Union[None, DistributedConfig, Mapping[str, Any]]


def make_runtime(config: ConfigLike = None) -> Runtime:
    """The runtime for the ``distributed:`` section ``config`` in this process: local without a
    process group, else DMP for a model-parallel ``sharding`` and DDP otherwise."""
    cfg = DistributedConfig.from_dict(config)
    if not comm.is_initialized():
        return LocalRuntime(cfg)
    return DMPRuntime(cfg) if cfg.model_parallel else DDPRuntime(cfg)


def runtime_for(model: nn.Module) -> Runtime:
    """The runtime that trains ``model`` as wrapped: local without a process group, DMP when it
    holds sharded tables, DDP otherwise (a DDP-wrapped or plain model under a process group)."""
    if not comm.is_initialized():
        return LocalRuntime()
    if comm.is_sharded(model):
        sharding = getattr(model, "_slimembed_sharding", "auto")
        return DMPRuntime({"sharding": sharding})
    return DDPRuntime()


def wrap_model(model: nn.Module, config: ConfigLike = None, train_config: Any = None,
               device: Optional[Device] = None, batch_size: Optional[int] = None) -> nn.Module:
    """``make_runtime(config).wrap_model(model, ...)``: DDP or DMP under a process group, the model
    itself without one. ``train_config`` (a ``TrainConfig`` or dict) gives the device and the fused
    optimizer of sharded tables; ``batch_size`` (per rank) informs torchrec's planner."""
    return make_runtime(config).wrap_model(model, train_config=train_config, device=device, batch_size=batch_size)


__all__ = ["Runtime", "ProcessGroupRuntime", "LocalRuntime", "DDPRuntime", "DMPRuntime", "DistributedConfig",
           "make_runtime", "runtime_for", "wrap_model"]
