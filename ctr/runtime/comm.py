"""The process group and its collectives: torchrun's environment, ranks, and the reductions
every :class:`~slimembed.ctr.runtime.Runtime` builds on (``docs/architecture.md`` §4).

Without torchrun's variables nothing is started and every function here is the identity, so a
single-process run is unchanged::

    >>> init_distributed()          # not launched by torchrun: no process group
    False
    >>> get_rank(), get_world_size(), is_main_process()
    (0, 1, True)
    >>> all_reduce_sum([1, 2.5])
    [1.0, 2.5]
    >>> DistributedConfig.from_dict({"sharding": "table_wise"}).model_parallel
    True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger("slimembed.ctr.runtime")

#: ``sharding`` values. ``none``/``data_parallel``: DDP; the others: torchrec DMP.
SHARDINGS = ("none", "data_parallel", "table_wise", "column_wise", "table_column_wise",
             "row_wise", "table_row_wise", "auto")
#: Model-parallel sharding types torchrec offers per device (``BaseEmbeddingSharder.sharding_types``).
CPU_SHARDINGS = ("table_wise", "column_wise", "table_column_wise")
CUDA_SHARDINGS = CPU_SHARDINGS + ("row_wise", "table_row_wise")


# ---------------------------------------------------------------------------------- config
@dataclass
class DistributedConfig:
    """The ``distributed:`` section of an experiment (all optional).

    Attributes:
        sharding: ``none`` (DDP, default), ``data_parallel`` (the same: every table replicated),
            ``table_wise``, ``column_wise``, ``table_column_wise``, ``row_wise`` /
            ``table_row_wise`` (CUDA only) or ``auto`` (torchrec's planner picks per table among
            the model-parallel types the device allows). Non-``none`` types need tables that are
            plain torchrec tables underneath (``unified``/``multiplexed`` with
            ``backend: torchrec``, or ``full``).
        backend: ``gloo`` | ``nccl`` | ``None`` (automatic: ``nccl`` when training on CUDA, else
            ``gloo``).
        column_shard_dim: columns per shard under ``column_wise`` / ``table_column_wise``
            (torchrec's ``ParameterConstraints.min_partition``; a multiple of 4). ``None``: torchrec's
            default (128), i.e. tables up to 128 wide stay one shard.
        timeout_s: collective timeout.
        find_unused_parameters, bucket_cap_mb: passed to ``DistributedDataParallel``.
    """

    sharding: str = "none"
    backend: Optional[str] = None
    column_shard_dim: Optional[int] = None
    timeout_s: float = 1800.0
    find_unused_parameters: bool = False
    bucket_cap_mb: float = 25.0

    def __post_init__(self) -> None:
        if self.sharding not in SHARDINGS:
            raise ValueError(f"distributed.sharding must be one of {list(SHARDINGS)}, got {self.sharding!r}")
        if self.backend not in (None, "gloo", "nccl"):
            raise ValueError(f"distributed.backend must be gloo, nccl or null (automatic), got {self.backend!r}")
        if self.column_shard_dim is not None and (int(self.column_shard_dim) < 4 or int(self.column_shard_dim) % 4):
            raise ValueError("distributed.column_shard_dim must be a positive multiple of 4 (fbgemm's fused "
                             f"kernel needs shard widths divisible by 4), got {self.column_shard_dim}")
        if self.timeout_s <= 0:
            raise ValueError(f"distributed.timeout_s must be > 0, got {self.timeout_s}")

    @property
    def model_parallel(self) -> bool:
        """Whether tables are sharded by torchrec DMP (vs replicated by DDP)."""
        return self.sharding not in ("none", "data_parallel")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Union[None, "DistributedConfig", Mapping[str, Any]]) -> "DistributedConfig":
        """From a plain dict (unknown keys raise, listing the valid ones), ``None`` or a config."""
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"the distributed section must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown distributed keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(d))


# ---------------------------------------------------------------------------------- process group
def launched_by_torchrun() -> bool:
    """Whether torchrun (or any launcher setting ``RANK`` and ``WORLD_SIZE``) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    """Whether a default process group is up (then the trainer runs its distributed paths)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0, and in a single-process run: the process that writes files."""
    return get_rank() == 0


def default_backend(device: Union[str, torch.device, None] = None) -> str:
    """``nccl`` when ``device`` is CUDA (and NCCL is built), else ``gloo``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def init_distributed(config: Union[None, DistributedConfig, Mapping[str, Any]] = None,
                     device: Union[str, torch.device, None] = "cpu") -> bool:
    """Start the default process group from torchrun's environment; returns whether one is up.

    Does nothing (returns False) when the process was not launched by torchrun and no group
    exists, so the same script runs single-process. An existing group is reused. The backend is
    ``config.backend`` or :func:`default_backend` of ``device``; with NCCL the process binds
    ``cuda:LOCAL_RANK``.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    cfg = DistributedConfig.from_dict(config)
    backend = cfg.backend or default_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=cfg.timeout_s))
    if is_main_process():
        logger.info("process group: backend %s, world size %d", backend, get_world_size())
    return True


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"cuda"`` becomes this process's ``cuda:LOCAL_RANK`` in a distributed run."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and is_initialized():
        return torch.device("cuda", get_local_rank())
    return dev


def destroy() -> None:
    """Tear the process group down (if one is up)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors live: the CUDA device under NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled); the identity single-process."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def all_reduce_sum(values: Sequence[float]) -> List[float]:
    """Element-wise sum over ranks (float64); the identity single-process."""
    if not is_initialized():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def reduce_mean(total: float, count: float) -> float:
    """``sum(total) / sum(count)`` over ranks (``nan`` when no rank counted anything)."""
    s, n = all_reduce_sum([total, count])
    return s / n if n else float("nan")


def all_gather_1d(t: Tensor, group: Optional[Any] = None) -> Tensor:
    """Concatenate a 1-D tensor of any length from every rank, in rank order."""
    world = dist.get_world_size(group) if is_initialized() else 1
    if world == 1:
        return t
    dev = _comm_device()
    n = torch.tensor([t.numel()], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes_l = [int(s) for s in sizes]
    m = max(sizes_l)
    pad = torch.zeros(m, dtype=t.dtype, device=dev)
    pad[: t.numel()] = t.to(dev)
    out = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(out, pad, group=group)
    return torch.cat([o[:s] for o, s in zip(out, sizes_l)]).to(t.device)


# ---------------------------------------------------------------------------------- model helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside a ``DistributedDataParallel`` / ``DistributedModelParallel``."""
    seen = 0
    while seen < 4:
        seen += 1
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
            continue
        if type(model).__name__ == "DistributedModelParallel" and hasattr(model, "module"):
            model = model.module
            continue
        break
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds torchrec sharded modules (forward passes are then collective)."""
    if not is_initialized():  # DMP needs a process group; skip importing torchrec.distributed
        return False
    try:
        from torchrec.distributed.types import ShardedModule
    except Exception:  # pragma: no cover - torchrec missing
        return False
    return any(isinstance(m, ShardedModule) for m in unwrap_model(model).modules())


def _sharded_tensor_type() -> Optional[type]:
    try:
        from torch.distributed._shard.sharded_tensor import ShardedTensor
    except Exception:  # pragma: no cover
        return None
    return ShardedTensor


def is_sharded_tensor(v: Any) -> bool:
    """Whether ``v`` is a ``ShardedTensor`` (a DMP table's weight or fused-optimizer state)."""
    st = _sharded_tensor_type()
    return st is not None and isinstance(v, st)


__all__ = [
    "SHARDINGS", "CPU_SHARDINGS", "CUDA_SHARDINGS", "DistributedConfig", "launched_by_torchrun",
    "init_distributed", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
    "default_backend", "resolve_device", "destroy", "barrier", "broadcast_object", "all_reduce_sum",
    "reduce_mean", "all_gather_1d", "unwrap_model", "is_sharded", "is_sharded_tensor",
]
