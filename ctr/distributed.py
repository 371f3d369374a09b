"""Distributed training: the names scripts import, re-exported from :mod:`slimembed.ctr.runtime`.

The logic lives in the runtime package (``docs/distributed.md``): process group and collectives
in :mod:`~slimembed.ctr.runtime.comm`, DDP in :mod:`~slimembed.ctr.runtime.ddp`, torchrec DMP in
:mod:`~slimembed.ctr.runtime.dmp`, which tables can be sharded in
:mod:`~slimembed.ctr.runtime.shardability`, sharded checkpoint state in
:mod:`~slimembed.ctr.runtime.sharded_state`. The per-model services the old module offered as
functions (optimizers, memory records, parameter counts, the even-batches check) are methods of
:class:`~slimembed.ctr.runtime.Runtime`: ``runtime_for(model).memory_record(model, opt)``.

Example (a user script launched by torchrun)::

    >>> from slimembed.ctr import distributed as D
    >>> D.init_distributed()                                # no-op without torchrun
    False
    >>> D.get_rank(), D.get_world_size(), D.is_main_process()
    (0, 1, True)
"""

from __future__ import annotations

from slimembed.tables.torchrec_full import TorchrecFullTable

from .metrics import evaluate
from .runtime import DDPRuntime, DMPRuntime, LocalRuntime, Runtime, make_runtime, runtime_for, wrap_model
from .runtime.comm import (
    CPU_SHARDINGS, CUDA_SHARDINGS, SHARDINGS, DistributedConfig, all_gather_1d, all_reduce_sum, barrier,
    broadcast_object, default_backend, destroy, get_local_rank, get_rank, get_world_size, init_distributed,
    is_initialized, is_main_process, is_sharded, launched_by_torchrun, reduce_mean, resolve_device, unwrap_model,
)
from .runtime.dmp import fused_params_for, shard_model
from .runtime.shardability import check_method_shardable, sharding_candidates, sharding_summary, why_not_shardable
from .runtime.sharded_state import (
    clone_state, full_state_dict, load_full_state_dict, load_optimizer_state, optimizer_state_for_checkpoint,
)

to_torchrec_full = TorchrecFullTable.from_full

__all__ = [
    "SHARDINGS", "CPU_SHARDINGS", "CUDA_SHARDINGS", "DistributedConfig", "launched_by_torchrun",
    "init_distributed", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
    "default_backend", "resolve_device", "destroy", "barrier", "broadcast_object", "all_reduce_sum",
    "reduce_mean", "all_gather_1d", "unwrap_model", "is_sharded", "evaluate", "wrap_model", "shard_model",
    "to_torchrec_full", "TorchrecFullTable", "why_not_shardable", "sharding_candidates", "check_method_shardable",
    "fused_params_for", "clone_state", "load_full_state_dict", "full_state_dict", "optimizer_state_for_checkpoint",
    "load_optimizer_state", "sharding_summary", "Runtime", "LocalRuntime", "DDPRuntime", "DMPRuntime",
    "make_runtime", "runtime_for",
]
