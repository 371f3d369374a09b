"""Distributed training: DDP for the dense parts and compressed tables, torchrec's
DistributedModelParallel (DMP) for tables that are plain torchrec tables underneath.

Run any experiment under ``torchrun`` (one process per CPU socket / GPU, any number of nodes)::

    torchrun --nproc_per_node 2 -m slimembed.ctr.cli train --config exp.yaml
    # exp.yaml may add:  distributed: {sharding: table_wise}

What this module does (see ``docs/distributed.md``):

* :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and starts the process group: ``gloo`` when the
  training device is the CPU, ``nccl`` when it is CUDA (each process takes ``cuda:LOCAL_RANK``).
  Without torchrun's variables it does nothing, and everything below is the identity, so a
  single-process run is unchanged.
* :func:`wrap_model` wraps a model for training:

  - ``sharding: none`` (default) or ``data_parallel``: ``DistributedDataParallel``. Every table is
    replicated and its gradient averaged; this is the path for compressed tables (small by design).
    Tables built with ``sparse=True`` (sparse COO row gradients, for ``sparse_adam`` /
    ``rowwise_adagrad`` / ``adagrad``) are kept out of DDP (its reducer only knows
    ``nn.Embedding``/``nn.EmbeddingBag`` as sparse and fails with "Cannot access storage of
    SparseTensorImpl" on any other module's sparse gradient) and their gradients are averaged by a
    post-accumulate hook: an all-gather of the touched rows on a dedicated process group (works
    with gloo and nccl).
  - ``table_wise | column_wise | table_column_wise | row_wise | table_row_wise | auto``: torchrec
    DMP. Every plain ``EmbeddingBagCollection`` child in the model (``unified`` / ``multiplexed``
    with ``backend="torchrec"``; ``full`` tables are moved onto one first, see
    :class:`TorchrecFullTable`) is planned by torchrec's ``EmbeddingShardingPlanner`` under that
    sharding type and sharded; the rest of the model is replicated by DMP's DDP wrapper. On CPU
    torchrec offers table-wise, column-wise and table-column-wise only (row-wise needs CUDA:
    ``EmbeddingBagCollectionSharder.sharding_types("cpu")``). Sharded tables use fbgemm's fused
    kernels (the optimizer runs inside the backward; ``embedding_optimizer`` picks it, see
    :func:`fused_params_for`) and need dims divisible by 4; tables whose dims are not (a 1-dim
    first-order table) stay replicated. Methods whose rows are not a plain lookup table (hash, qr,
    tt, dhe, robe, mde, optembed, the gather backend) cannot be sharded: :func:`wrap_model` says so
    and why.
* :func:`evaluate` gathers every rank's logits and labels (``all_gather``) and computes the exact
  AUC and logloss on the whole evaluation set, the same numbers on every rank (so early-stopping
  decisions agree); AUC is never averaged over ranks.
* :func:`is_main_process` guards every file the trainer writes (checkpoints, result records):
  only rank 0 writes. Checkpoints of sharded models hold the gathered (full) weights.

The trainer (:mod:`slimembed.ctr.trainer`) and the experiment runner
(:mod:`slimembed.ctr.experiment`) call these helpers; they are no-ops when no process group is
initialised.

Usage (a user script launched by torchrun, so not a doctest)::

    from slimembed.ctr import distributed as D
    D.init_distributed()                                # gloo on CPU
    train = make_loader(path, "train", 2048, shuffle=True, rank=D.get_rank(),
                        world_size=D.get_world_size(), drop_last=True)
    model = D.wrap_model(make_model("deepfm", features, 13), {"sharding": "none"})
    record = train_and_evaluate(model, train, val, test, config=cfg)  # rank 0 writes
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger("slimembed.ctr.distributed")

#: ``sharding`` values. ``none``/``data_parallel``: DDP; the others: torchrec DMP.
SHARDINGS = ("none", "data_parallel", "table_wise", "column_wise", "table_column_wise",
             "row_wise", "table_row_wise", "auto")
#: Model-parallel sharding types torchrec offers per device (``BaseEmbeddingSharder.sharding_types``).
CPU_SHARDINGS = ("table_wise", "column_wise", "table_column_wise")
CUDA_SHARDINGS = CPU_SHARDINGS + ("row_wise", "table_row_wise")

# Why a method has no plain torchrec table for DMP to shard (DMP dispatches sharders by the exact
# module type: torchrec/distributed/model_parallel.py, ``self._sharder_map[type(module)]``).
_WHY_NOT_SHARDABLE = {
    "hash": "its rows are one fused parameter read through slimembed's gather engine (hashed ids), "
            "not a torchrec EmbeddingBagCollection",
    "double_hash": "two hashed lookups into one fused parameter are summed per id by slimembed's "
                   "gather engine; there is no torchrec EmbeddingBagCollection",
    "compositional": "k complementary partitions are gathered from one fused parameter and combined "
                     "per id (mult/add/concat) before pooling; a pooled torchrec lookup cannot express that",
    "qr": "the quotient and remainder rows are combined per id (mult by default) before pooling; "
          "torchrec pools each table separately, so no EmbeddingBagCollection can express it",
    "robe": "embeddings are windows of one shared 1-D array at hashed offsets; there are no rows to place",
    "tt": "embeddings are contracted from three tensor-train cores by matmuls; there are no rows to place",
    "dhe": "an MLP computes each embedding from 1024 hashes; there is no table at all",
    "mde": "per-field tables of different dims with projections live in slimembed modules, "
           "not in a torchrec EmbeddingBagCollection",
    "optembed": "row and dimension masks (learned thresholds) are applied inside the lookup; "
                "torchrec's sharded kernels cannot apply them",
    "quantized": "int8/fp16 rows are an inference export, not a trainable table",
}
_WHY_GATHER_BACKEND = ("backend='gather' keeps the shared rows in one fused parameter read by slimembed's "
                       "gather engine; build it with backend='torchrec' (a child EmbeddingBagCollection "
                       "that DMP shards)")
_WHY_DIM4 = ("fbgemm's fused TBE kernel needs dims divisible by 4 "
             "(torchrec/distributed/batched_embedding_kernel.py: _assert_local_cols_divisible_by_4), and "
             "table/column-wise sharding on CPU offers only that kernel "
             "(EmbeddingBagCollectionSharder.compute_kernels: DENSE only for data_parallel)")


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


def _is_sharded_tensor(v: Any) -> bool:
    st = _sharded_tensor_type()
    return st is not None and isinstance(v, st)


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: Optional[Union[str, torch.device]] = None,
             max_batches: Optional[int] = None) -> Dict[str, float]:
    """AUC and logloss over the union of every rank's ``loader`` (call on every rank).

    Each rank runs its own batches (a loader sharded by rank: batch ``b`` on rank ``b % W``);
    the logits and labels are all-gathered and the exact AUC and logloss computed on all of them,
    so every rank returns the same ``{"auc", "logloss", "num_samples"}`` and the result equals a
    single process evaluating the whole set. ``max_batches`` caps each rank's batches (with the
    experiment's global ``eval_batch_size``, split over the ranks, that is the rows one process
    would evaluate). With sharded tables every
    forward is a collective, so ranks step in lockstep (a rank out of batches repeats a batch
    whose outputs are dropped). Without a process group this is
    :func:`slimembed.ctr.metrics.evaluate`.
    """
    from .metrics import _batch_parts, auc, evaluate as _evaluate

    if not is_initialized():
        return _evaluate(model, loader, device=device, max_batches=max_batches)
    limit = None if max_batches is None else int(max_batches)
    inner = unwrap_model(model)
    lockstep = is_sharded(inner)
    was_training = inner.training
    inner.eval()
    logits: List[Tensor] = []
    labels: List[Tensor] = []
    try:
        it = iter(loader)
        pending = None if limit == 0 else next(it, None)
        dummy = pending
        if lockstep:  # a rank without any batch borrows the first batch of the first rank with one
            has = all_gather_1d(torch.tensor([0 if pending is None else 1], dtype=torch.long)).tolist()
            if 0 in has and 1 in has:
                first = broadcast_object(pending, src=has.index(1))
                dummy = first if dummy is None else dummy
        i = 0
        while True:
            if pending is not None:
                batch, pending = pending, None
            else:
                batch = None if (limit is not None and i >= limit) else next(it, None)
            if lockstep:
                more = all_reduce_sum([0.0 if batch is None else 1.0])[0]
                if more == 0:
                    break
                if batch is None:  # keep the collectives in step; the outputs are dropped
                    _forward(inner, dummy, device)
                    continue
            elif batch is None:
                break
            dense, sparse, y = _batch_parts(_to(batch, device))
            logits.append(_forward_parts(inner, dense, sparse).detach().reshape(-1).float().cpu())
            labels.append(y.detach().reshape(-1).float().cpu())
            i += 1
    finally:
        inner.train(was_training)
    z = torch.cat(logits) if logits else torch.empty(0)
    y = torch.cat(labels) if labels else torch.empty(0)
    z_all = all_gather_1d(z)
    y_all = all_gather_1d(y)
    n = int(z_all.numel())
    if n == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "num_samples": 0}
    loss = float(F.binary_cross_entropy_with_logits(z_all.double(), y_all.double(), reduction="sum")) / n
    return {"auc": auc(y_all, z_all), "logloss": loss, "num_samples": n}


def _to(batch: Any, device: Optional[Union[str, torch.device]]) -> Any:
    if device is not None and hasattr(batch, "to"):
        return batch.to(device)
    return batch


def _forward_parts(model: nn.Module, dense: Any, sparse: Any) -> Tensor:
    return model(dense, sparse)


def _forward(model: nn.Module, batch: Any, device: Optional[Union[str, torch.device]]) -> None:
    from .metrics import _batch_parts

    dense, sparse, _ = _batch_parts(_to(batch, device))
    model(dense, sparse)


# ---------------------------------------------------------------------------------- loaders
def check_even_batches(loader: Any) -> None:
    """Raise when ranks would run different numbers of training steps (DDP would hang).

    A loader without ``__len__`` is not checked. ``make_loader(..., rank, world_size,
    drop_last=True)`` gives every rank the same count.
    """
    if not is_initialized() or get_world_size() == 1 or not hasattr(loader, "__len__"):
        return
    n = len(loader)
    counts = all_gather_1d(torch.tensor([n], dtype=torch.long)).tolist()
    if len(set(counts)) != 1:
        raise ValueError(
            f"ranks have different numbers of training batches per epoch {counts}: every DDP step "
            "is a collective, so ranks must step together; build the loader with "
            "make_loader(..., rank=rank, world_size=world_size, drop_last=True)"
        )


# ---------------------------------------------------------------------------------- DDP
class _SparseGradSync:
    """Averages the gradients of parameters kept out of DDP (sparse-gradient tables).

    A post-accumulate-grad hook per parameter all-gathers the touched rows (sparse COO gradients:
    coalesced indices and values; dense gradients: the whole tensor by all-reduce) on its own
    process group and replaces ``p.grad`` by the mean over ranks, which is the gradient of the
    global-batch loss (each rank's loss is the mean over its equal-size local batch, as in DDP).
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.group = dist.new_group()  # every rank calls this, in the same order
        self.world = get_world_size()
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, p: Tensor) -> None:
        g = p.grad
        if g is None:
            return
        if not g.is_sparse:
            dist.all_reduce(g, group=self.group)
            g.div_(self.world)
            return
        from .optim import _row_sparse, _to_row_sparse

        idx, vals = _row_sparse(g)  # unique rows, [n, row_size]
        row_size = vals.shape[1] if vals.dim() == 2 else 1
        all_idx = all_gather_1d(idx, group=self.group)
        all_vals = all_gather_1d(vals.reshape(-1), group=self.group).reshape(-1, row_size)
        uniq, inverse = torch.unique(all_idx, sorted=True, return_inverse=True)
        summed = all_vals.new_zeros(uniq.numel(), row_size).index_add_(0, inverse, all_vals)
        p.grad = _to_row_sparse(p, uniq, summed / self.world)


# model -> its _SparseGradSync (kept off the module so that it stays picklable / deep-copyable)
_SPARSE_SYNC: "weakref.WeakKeyDictionary[nn.Module, _SparseGradSync]" = weakref.WeakKeyDictionary()


def _sparse_table_params(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """Parameters of tables built with ``sparse=True`` (they may produce sparse COO gradients)."""
    from slimembed.tables import EmbeddingTable

    ids = set()
    for m in model.modules():
        if isinstance(m, EmbeddingTable) and getattr(m, "sparse", False):
            ids.update(id(p) for p in m.parameters())
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]


def _ddp(model: nn.Module, device: torch.device, cfg: DistributedConfig) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    sparse = _sparse_table_params(model)
    if sparse:
        names = [n for n, _ in sparse]
        DDP._set_params_and_buffers_to_ignore_for_model(model, names)
        with torch.no_grad():
            for _, p in sparse:  # DDP broadcasts the others from rank 0; same here
                dist.broadcast(p.data, src=0)
        _SPARSE_SYNC[model] = _SparseGradSync([p for _, p in sparse])
        if is_main_process():
            logger.info("DDP: %d sparse-gradient table parameters averaged by hooks (not by DDP's reducer)",
                        len(names))
    dense_left = [p for p in model.parameters() if p.requires_grad and id(p) not in {id(q) for _, q in sparse}]
    if not dense_left:
        return model  # nothing for DDP's reducer; the hooks do it all
    return DDP(model, device_ids=[device] if device.type == "cuda" else None,
               find_unused_parameters=cfg.find_unused_parameters, bucket_cap_mb=cfg.bucket_cap_mb)


# ---------------------------------------------------------------------------------- torchrec full
def _torchrec_full_table_class():
    from slimembed.tables import EmbeddingTable

    class TorchrecFullTable(EmbeddingTable):
        """The ``full`` method as a plain torchrec ``EmbeddingBagCollection`` (``self.ebc``), so
        DMP can shard it: one torchrec table per feature (``full_<name>``, ``N_f x D``), the same
        rows as :class:`~slimembed.tables.FullTable` (built from one with :meth:`from_full`).

        Dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` (unweighted only).
        """

        method = "full"
        sparse = False

        def __init__(self, features: Sequence[Any], init_scale: float = 0.05) -> None:
            super().__init__(features)
            from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
            from torchrec.modules.embedding_modules import EmbeddingBagCollection

            dims = {int(f.embedding_dim) for f in self.features}
            if len(dims) != 1:
                raise ValueError(f"TorchrecFullTable needs one embedding_dim, got {sorted(dims)}")
            self.init_scale = float(init_scale)
            self.ebc = EmbeddingBagCollection(tables=[
                EmbeddingBagConfig(num_embeddings=int(f.num_embeddings), embedding_dim=int(f.embedding_dim),
                                   name=f"full_{f.name}", feature_names=[f.name],
                                   pooling=PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM,
                                   weight_init_min=-self.init_scale, weight_init_max=self.init_scale)
                for f in self.features])

        @classmethod
        def from_full(cls, table: nn.Module) -> "nn.Module":
            new = cls(table.features, init_scale=getattr(table, "init_scale", 0.05))
            with torch.no_grad():
                w = table.weight.detach()
                start = 0
                for f in table.features:
                    n = int(f.num_embeddings)
                    new.ebc.embedding_bags[f"full_{f.name}"].weight.copy_(w[start:start + n])
                    start += n
            return new.to(table.weight.device)

        def config(self) -> Dict[str, Any]:
            return {**super().config(), "sparse": False, "init_scale": self.init_scale}

        @property
        def rows_per_feature(self) -> List[int]:
            return [int(f.num_embeddings) for f in self.features]

        def _fields(self, kt: Any, b: int) -> Tensor:
            """The EBC's pooled output as ``[B, F, D]`` in feature order (a sharded EBC returns its
            keys grouped by shard, not in config order)."""
            v = kt.values().view(b, self.num_features, -1)
            keys = kt.keys()
            if keys != self.feature_names:
                v = v[:, [keys.index(n) for n in self.feature_names]]
            return v

        def forward_dense(self, ids: Tensor) -> Tensor:
            from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

            b, nf = ids.shape
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=self.feature_names, values=ids.t().reshape(-1),
                lengths=torch.ones(b * nf, dtype=torch.long, device=ids.device))
            return self._fields(self.ebc(kjt), b)

        def forward_kjt(self, kjt: Any) -> Any:
            names = self.feature_names
            if kjt.keys() != names:
                missing = [n for n in names if n not in kjt.keys()]
                if missing:
                    raise ValueError(f"KeyedJaggedTensor lacks features {missing}; it has {kjt.keys()}")
                kjt = kjt.permute([kjt.keys().index(n) for n in names])
            if kjt.weights_or_none() is not None:
                raise ValueError("TorchrecFullTable builds an unweighted EmbeddingBagCollection")
            per_key = torch.tensor(kjt.length_per_key(), device=kjt.values().device)
            self.check_ids(kjt.values(), torch.repeat_interleave(torch.arange(len(names), device=per_key.device), per_key))
            from torchrec.sparse.jagged_tensor import KeyedTensor

            b = kjt.stride()
            return KeyedTensor(keys=names, length_per_key=self.output_dims,
                               values=self._fields(self.ebc(kjt), b).reshape(b, -1))

        def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
            raise RuntimeError("TorchrecFullTable has no per-id path; use FullTable for nn.EmbeddingBag drop-ins")

    return TorchrecFullTable


def to_torchrec_full(table: nn.Module) -> nn.Module:
    """A :class:`~slimembed.tables.FullTable` as a torchrec-backed table with the same rows."""
    return _torchrec_full_table_class().from_full(table)


# ---------------------------------------------------------------------------------- shardability
def _plain_ebcs(module: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    return [(f"{prefix}{n}", m) for n, m in module.named_modules() if type(m) is EmbeddingBagCollection]


def _outer_tables(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    from slimembed.tables import EmbeddingTable

    out: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, EmbeddingTable) and not any(name.startswith(o + ".") for o, _ in out):
            out.append((name, m))
    return out


def why_not_shardable(table: nn.Module) -> Optional[str]:
    """``None`` when DMP can shard ``table`` (it has a plain torchrec EBC child, or is ``full``),
    else the reason, in words."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    if any(type(m) is EmbeddingBagCollection for m in table.modules()):
        return None
    method = getattr(table, "method", type(table).__name__)
    if method == "full" and hasattr(table, "weight"):
        return None  # converted onto a torchrec EBC by shard_model
    if method in ("unified", "multiplexed") and getattr(table, "backend", None) == "gather":
        return _WHY_GATHER_BACKEND
    base = method.split("_")[0] if method.startswith("optembed") else method
    return _WHY_NOT_SHARDABLE.get(base, f"{type(table).__name__} holds its rows in custom modules, "
                                        "not in a plain torchrec EmbeddingBagCollection")


def sharding_candidates(model: nn.Module) -> Dict[str, Optional[str]]:
    """``{table path: None (shardable) | reason}`` for every outermost table of ``model``."""
    return {name: why_not_shardable(t) for name, t in _outer_tables(unwrap_model(model))}


def check_method_shardable(method: str, table_cfg: Optional[Mapping[str, Any]] = None) -> None:
    """Fail early (before any data is read) when ``method`` cannot be sharded by DMP."""
    cfg = dict(table_cfg or {})
    if method == "full":
        return
    if method in ("unified", "multiplexed"):
        if cfg.get("backend", "gather") == "torchrec":
            return
        raise ValueError(f"table method {method!r} cannot be sharded: {_WHY_GATHER_BACKEND} "
                         "(table.backend: torchrec)")
    base = method.split("_")[0] if method.startswith("optembed") else method
    why = _WHY_NOT_SHARDABLE.get(base, "it is not a plain torchrec EmbeddingBagCollection")
    raise ValueError(
        f"table method {method!r} cannot be sharded by torchrec DistributedModelParallel: {why}. "
        "DMP only shards plain EmbeddingBagCollection modules (it dispatches sharders by exact module "
        "type). Compressed tables are small by design: train them replicated with "
        "distributed.sharding: none (DDP), or use full / unified / multiplexed with backend: torchrec")


# ---------------------------------------------------------------------------------- DMP
def fused_params_for(train_config: Any, device: Union[str, torch.device, None] = "cpu") -> Dict[str, Any]:
    """fbgemm fused-optimizer parameters for sharded tables, from the trainer's settings.

    ==================  =========================  ==================================================
    embedding_optimizer fbgemm ``EmbOptimType``     notes
    ==================  =========================  ==================================================
    rowwise_adagrad     ``EXACT_ROWWISE_ADAGRAD``  the same rule as :class:`~slimembed.ctr.optim.RowWiseAdagrad`
                                                   (L2 ``weight_decay_mode``), eps 1e-8. Under
                                                   column-wise sharding each column shard keeps its
                                                   own row accumulator (mean over its columns).
    adagrad             ``EXACT_ADAGRAD``          eps 1e-10 (torch's); fbgemm has no weight decay for it
    sparse_adam         ``ADAM``                   CUDA only; lazy Adam (touched rows), decoupled decay
    adam                ``ADAM``                   CUDA only; lazy: dense Adam's update of untouched
                                                   rows has no fused kernel (a warning says so)
    ==================  =========================  ==================================================

    On CPU fbgemm's TBE accepts only EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD, EXACT_SGD and
    EMAINPLACE_ROWWISE_ADAGRAD (``fbgemm_gpu/split_table_batched_embeddings_ops_training.py``:
    ``assert optimizer in (...), "Optimizer ... is not supported in CPU mode."``), so the Adam
    family raises there.
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    try:
        from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
    except Exception:  # pragma: no cover - older fbgemm
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode  # type: ignore

    from .optim import DEFAULT_ADAGRAD_LR

    get = (lambda k, d=None: train_config.get(k, d)) if isinstance(train_config, Mapping) else (
        lambda k, d=None: getattr(train_config, k, d))
    name = get("embedding_optimizer", "adam") or "adam"
    lr = float(get("lr", 1e-3) or 1e-3)
    wd = float(get("weight_decay", 0.0) or 0.0)
    adagrad = name in ("rowwise_adagrad", "adagrad")
    emb_lr = get("embedding_lr")
    emb_lr = float(emb_lr) if emb_lr is not None else (DEFAULT_ADAGRAD_LR if adagrad else lr)
    emb_wd = get("embedding_weight_decay")
    emb_wd = float(emb_wd) if emb_wd is not None else wd
    if name == "rowwise_adagrad":
        out: Dict[str, Any] = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "eps": 1e-8}
        if emb_wd:
            out.update(weight_decay=emb_wd, weight_decay_mode=WeightDecayMode.L2)
    elif name == "adagrad":
        if emb_wd:
            raise ValueError("embedding_optimizer 'adagrad' on sharded tables runs fbgemm's EXACT_ADAGRAD, "
                             "which has no weight decay; set embedding_weight_decay: 0 or use rowwise_adagrad")
        out = {"optimizer": EmbOptimType.EXACT_ADAGRAD, "eps": 1e-10}
    elif name in ("sparse_adam", "adam"):
        if torch.device(device or "cpu").type != "cuda":
            raise ValueError(
                f"embedding_optimizer {name!r} cannot train sharded tables on CPU: fbgemm's fused CPU "
                "kernel supports only EXACT_ADAGRAD / EXACT_ROWWISE_ADAGRAD / EXACT_SGD "
                "(fbgemm_gpu/split_table_batched_embeddings_ops_training.py: \"Optimizer ... is not "
                "supported in CPU mode\"); use embedding_optimizer: rowwise_adagrad (or adagrad), "
                "or train replicated with distributed.sharding: none")
        out = {"optimizer": EmbOptimType.ADAM, "eps": 1e-8, "beta1": 0.9, "beta2": 0.999}
        if emb_wd:
            out.update(weight_decay=emb_wd, weight_decay_mode=WeightDecayMode.DECOUPLE)
        if name == "adam" and is_main_process():
            warnings.warn("sharded tables train with fbgemm's fused ADAM, which updates only the rows in "
                          "the batch (the semantics of embedding_optimizer: sparse_adam); dense Adam's "
                          "update of every row has no fused kernel", stacklevel=3)
    else:  # pragma: no cover - TrainConfig validates the name
        raise ValueError(f"unknown embedding_optimizer {name!r}")
    out["learning_rate"] = emb_lr
    return out


def _topology(world: int, device: torch.device):
    from torchrec.distributed.planner.types import KernelConfig, Topology, TopologyFactory, TrainerConfig

    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    try:
        return TopologyFactory.create_topology(
            trainer_config=TrainerConfig(world_size=world, local_world_size=local),
            kernel_config=KernelConfig(compute_device=device.type))
    except Exception:  # pragma: no cover - factory validation differs across versions
        return Topology(world_size=world, compute_device=device.type, local_world_size=local)


def shard_model(model: nn.Module, config: Union[None, DistributedConfig, Mapping[str, Any]] = None,
                train_config: Any = None, device: Union[str, torch.device, None] = None,
                batch_size: Optional[int] = None) -> nn.Module:
    """Shard the plain torchrec tables of ``model`` with torchrec DMP; returns the DMP module.

    ``full`` tables are first moved onto :class:`TorchrecFullTable` (same rows). Each plain
    ``EmbeddingBagCollection`` whose dims are all divisible by 4 is planned on its own by
    ``EmbeddingShardingPlanner`` (constraints: the requested sharding type, the fused kernel) and
    sharded; others stay replicated (DMP's DDP wrapper), with a log line saying why. The sharded
    tables start from the model's own weights (DMP allocates new fused storage; the rows are
    copied in), so a seeded model trains the same sharded or not. Raises ``ValueError`` naming
    every table and why when nothing can be sharded.
    """
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingPlan

    cfg = DistributedConfig.from_dict(config)
    if not cfg.model_parallel:
        raise ValueError(f"shard_model needs a model-parallel sharding type, got {cfg.sharding!r}")
    if not is_initialized():
        raise RuntimeError("shard_model needs a process group: call init_distributed() under torchrun")
    dev = resolve_device(device or "cpu")
    allowed = CUDA_SHARDINGS if dev.type == "cuda" else CPU_SHARDINGS
    if cfg.sharding != "auto" and cfg.sharding not in allowed:
        raise ValueError(
            f"sharding {cfg.sharding!r} is not available on {dev.type}: torchrec offers {list(allowed)} "
            "there (torchrec/distributed/embedding_types.py, BaseEmbeddingSharder.sharding_types: "
            "row_wise, table_row_wise and grid_shard only for cuda)")

    # 1. full tables -> torchrec EBCs (same rows)
    for name, t in _outer_tables(model):
        if getattr(t, "method", None) == "full" and hasattr(t, "weight") and t.embedding_dim % 4 == 0:
            _set_submodule(model, name, to_torchrec_full(t))
    # 2. which EBCs can be sharded
    reasons = {n: r for n, r in sharding_candidates(model).items() if r is not None}
    ebcs = _plain_ebcs(model)
    todo, skipped = [], {}
    for path, ebc in ebcs:
        dims = sorted({c.embedding_dim for c in ebc.embedding_bag_configs()})
        bad = [d for d in dims if d % 4]
        if bad:
            skipped[path] = f"dims {bad} not divisible by 4: {_WHY_DIM4}; it stays replicated (DDP)"
        else:
            todo.append((path, ebc))
    for name, t in _outer_tables(model):
        if getattr(t, "method", None) == "full" and hasattr(t, "weight") and t.embedding_dim % 4:
            skipped[name] = f"dim {t.embedding_dim} not divisible by 4: {_WHY_DIM4}; it stays replicated (DDP)"
    if not todo:
        lines = [f"  {n}: {r}" for n, r in {**reasons, **skipped}.items()]
        raise ValueError(f"distributed.sharding={cfg.sharding!r}: no table of {type(model).__name__} can be "
                         "sharded by torchrec DistributedModelParallel:\n" + "\n".join(lines))
    for n, r in {**reasons, **skipped}.items():
        if is_main_process():
            logger.warning("table %s is not sharded: %s", n, r)
    # the output key order of each unsharded EBC (config order): a sharded EBC returns its keys
    # grouped by shard; a hook restores the order so parent modules see the unsharded contract
    key_order = {path: [(f, c.embedding_dim) for c in ebc.embedding_bag_configs() for f in c.feature_names]
                 for path, ebc in todo}
    # 3. the rows each sharded table starts from (every rank built the same seeded model)
    start = {f"{path}.{k}" if path else k: v.detach().clone()
             for path, ebc in todo for k, v in ebc.state_dict().items()}
    # 4. plan each EBC on its own (table names may repeat across EBCs: field and first-order tables)
    fused = fused_params_for(train_config or {}, dev)
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused)]
    types = list(allowed) if cfg.sharding == "auto" else [cfg.sharding]
    topology = _topology(get_world_size(), dev)
    plans = {}
    for path, ebc in todo:
        cons = {c.name: ParameterConstraints(sharding_types=types, compute_kernels=["fused"],
                                             min_partition=cfg.column_shard_dim)
                for c in ebc.embedding_bag_configs()}
        planner = EmbeddingShardingPlanner(topology=topology, constraints=cons,
                                           batch_size=batch_size or 512,
                                           storage_reservation=FixedPercentageStorageReservation(0.15))
        plan = planner.collective_plan(ebc, sharders, dist.GroupMember.WORLD)
        plans[path] = plan.plan[""]
    sharding_plan = ShardingPlan(plan=plans)
    if is_main_process():
        logger.info("torchrec sharding plan:\n%s", sharding_plan)
    sparse = [n for n, _ in _sparse_table_params(model)]
    wrapper = DefaultDataParallelWrapper(bucket_cap_mb=int(cfg.bucket_cap_mb), static_graph=False,
                                         find_unused_parameters=cfg.find_unused_parameters,
                                         params_to_ignore=sparse)
    dmp = DistributedModelParallel(model, device=dev, plan=sharding_plan, sharders=sharders,
                                   data_parallel_wrapper=wrapper)
    if sparse:
        inner = unwrap_model(dmp)
        params = dict(inner.named_parameters())
        with torch.no_grad():
            for n in sparse:
                dist.broadcast(params[n].data, src=0)
        _SPARSE_SYNC[inner] = _SparseGradSync([params[n] for n in sparse])
    # 5. copy the starting rows into the local shards; restore the output key order
    inner = unwrap_model(dmp)
    load_full_state_dict(inner, start, strict=False)
    for path, order in key_order.items():
        inner.get_submodule(path).register_forward_hook(_KeyOrder(order))
    dmp._slimembed_plan = sharding_plan  # type: ignore[attr-defined]
    dmp._slimembed_skipped = {**reasons, **skipped}  # type: ignore[attr-defined]
    return dmp


class _KeyOrder:
    """Forward hook of a sharded EBC: its pooled ``KeyedTensor`` in the unsharded EBC's key order.

    torchrec's ``ShardedEmbeddingBagCollection`` emits keys grouped by sharding type and rank
    (e.g. ``[C0, C2, C3, C1]`` for tables placed on ranks 0, 1, 0, 1), not in config order; modules
    written against a plain EBC (which index ``values()`` positionally) would read the wrong
    columns. The callback runs when the output awaitable is waited on.
    """

    def __init__(self, order: Sequence[Tuple[str, int]]) -> None:
        self.keys = [k for k, _ in order]
        self.dims = [d for _, d in order]
        self._index: Dict[Tuple[str, ...], Optional[Tensor]] = {}

    def _reorder(self, kt: Any) -> Any:
        from torchrec.sparse.jagged_tensor import KeyedTensor

        keys = list(kt.keys())
        if keys == self.keys:
            return kt
        sig = tuple(keys)
        idx = self._index.get(sig)
        if idx is None:
            starts, pos = {}, 0
            for k, d in zip(keys, kt.length_per_key()):
                starts[k] = (pos, d)
                pos += d
            idx = torch.cat([torch.arange(starts[k][0], starts[k][0] + starts[k][1]) for k in self.keys])
            self._index[sig] = idx
        values = kt.values().index_select(1, idx.to(kt.values().device))
        return KeyedTensor(keys=list(self.keys), length_per_key=list(self.dims), values=values)

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if hasattr(output, "callbacks"):
            output.callbacks.append(self._reorder)
            return output
        return self._reorder(output)


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent = model
    parts = path.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], new)


def wrap_model(model: nn.Module, config: Union[None, DistributedConfig, Mapping[str, Any]] = None,
               train_config: Any = None, device: Union[str, torch.device, None] = None,
               batch_size: Optional[int] = None) -> nn.Module:
    """Wrap ``model`` for distributed training (the identity without a process group).

    ``sharding`` ``none``/``data_parallel``: ``DistributedDataParallel`` (sparse-gradient tables
    averaged by hooks); otherwise :func:`shard_model`. ``train_config`` (a ``TrainConfig`` or
    dict) picks the fused optimizer of sharded tables. The model is moved to ``device``
    (default: the train config's, made ``cuda:LOCAL_RANK`` for CUDA).
    """
    cfg = DistributedConfig.from_dict(config)
    if not is_initialized():
        return model
    if device is None:
        dv = train_config.get("device", "cpu") if isinstance(train_config, Mapping) else getattr(
            train_config, "device", "cpu")
        device = dv or "cpu"
    dev = resolve_device(device)
    model = model.to(dev)
    if cfg.model_parallel:
        return shard_model(model, cfg, train_config=train_config, device=dev, batch_size=batch_size)
    return _ddp(model, dev, cfg)


# ---------------------------------------------------------------------------------- optimizers
class _ParamFilter:
    """A view of a model (or table) without some parameters, for ``build_optimizers``."""

    def __init__(self, module: nn.Module, skip: set) -> None:
        self._m = module
        self._skip = skip

    def parameters(self):
        return (p for p in self._m.parameters() if id(p) not in self._skip)

    def embedding_tables(self):
        from .optim import split_parameters

        tables, _, _ = split_parameters(self._m)
        return [_ParamFilter(t, self._skip) for t in tables]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)


def build_optimizers(model: nn.Module, train_config: Any):
    """:func:`slimembed.ctr.optim.build_optimizers` for a plain, DDP or DMP model.

    For a DMP model, parameters updated inside the backward by fbgemm (sharded tables) are left
    out of the torch optimizers, and the set gains a ``"fused"`` member (``dmp.fused_optimizer``,
    whose ``step`` is a no-op) so that ``zero_grad``/``state_dict`` cover everything.
    """
    from .optim import OptimizerSet, build_optimizers as _build

    inner = unwrap_model(model)
    if not is_sharded(inner):
        return _build(inner, train_config)
    fused = {id(p) for p in inner.parameters() if getattr(p, "_in_backward_optimizers", None)}
    members = dict(_build(_ParamFilter(inner, fused), train_config).optimizers) if any(
        id(p) not in fused for p in inner.parameters()) else {}
    members["fused"] = model.fused_optimizer if hasattr(model, "fused_optimizer") else _fused_of(inner)
    return OptimizerSet(members)


def _fused_of(inner: nn.Module):
    from torchrec.optim.keyed import CombinedOptimizer

    opts = [(n, m.fused_optimizer) for n, m in inner.named_modules() if hasattr(m, "fused_optimizer")
            and n and type(m).__name__.startswith("Sharded")]
    return CombinedOptimizer(opts)


# ---------------------------------------------------------------------------------- state (checkpoints)
def clone_state(module: nn.Module) -> Dict[str, Any]:
    """A detached copy of ``module.state_dict()``; sharded tensors keep only their local shards."""
    import copy

    out: Dict[str, Any] = {}
    for k, v in module.state_dict().items():
        out[k] = copy.deepcopy(v) if _is_sharded_tensor(v) else v.detach().clone()
    return out


def load_full_state_dict(module: nn.Module, state: Mapping[str, Any], strict: bool = True) -> None:
    """Load a full (unsharded) state dict into a module that may hold sharded tensors: each rank
    copies its own slices; plain tensors load as usual. With ``strict``, keys must match."""
    current = module.state_dict()
    missing = [k for k in current if k not in state]
    if strict and (missing or any(k not in current for k in state)):
        extra = [k for k in state if k not in current]
        raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    plain = {}
    with torch.no_grad():
        for k, v in current.items():
            if k not in state:
                continue
            src = state[k]
            if _is_sharded_tensor(src):  # a sharded clone (best weights): copy shard to shard
                for dst_sh, src_sh in zip(v.local_shards(), src.local_shards()):
                    dst_sh.tensor.copy_(src_sh.tensor)
            elif _is_sharded_tensor(v):
                for sh in v.local_shards():
                    idx = tuple(slice(o, o + s) for o, s in zip(sh.metadata.shard_offsets, sh.metadata.shard_sizes))
                    sh.tensor.copy_(src[idx].to(sh.tensor.device))
            else:
                plain[k] = src
    if plain:
        module.load_state_dict(plain, strict=False)


def full_state_dict(module: nn.Module, state: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The unsharded state dict (sharded tensors gathered to rank 0; collective). Rank 0 gets the
    full dict, the others ``None``. Without sharded tensors it is ``state`` / ``state_dict()``."""
    state = module.state_dict() if state is None else state
    if not any(_is_sharded_tensor(v) for v in state.values()):
        return dict(state)
    out: Dict[str, Any] = {}
    for k, v in state.items():
        if _is_sharded_tensor(v):
            full = torch.empty(tuple(v.size()), dtype=v.dtype) if is_main_process() else None
            v.gather(dst=0, out=full)
            out[k] = full
        else:
            out[k] = v.detach().cpu() if isinstance(v, Tensor) else v
    return out if is_main_process() else None


def _local_plain(obj: Any) -> Any:
    """Nested state with every ShardedTensor replaced by ``[(offsets, local tensor), ...]``."""
    if _is_sharded_tensor(obj):
        return {"__local_shards__": [(list(s.metadata.shard_offsets), s.tensor.detach().cpu().clone())
                                     for s in obj.local_shards()]}
    if isinstance(obj, Mapping):
        return {k: _local_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_local_plain(v) for v in obj)
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    return obj


def _copy_local_into(current: Any, saved: Any) -> Any:
    """Copy ``_local_plain`` shards back into ``current`` (in place for sharded tensors)."""
    if _is_sharded_tensor(current):
        by_off = {tuple(o): t for o, t in saved["__local_shards__"]}
        with torch.no_grad():
            for s in current.local_shards():
                s.tensor.copy_(by_off[tuple(s.metadata.shard_offsets)].to(s.tensor.device))
        return current
    if isinstance(current, Mapping):
        return {k: _copy_local_into(v, saved[k]) if k in saved else v for k, v in current.items()}
    if isinstance(current, (list, tuple)) and isinstance(saved, (list, tuple)):
        return type(current)(_copy_local_into(c, s) for c, s in zip(current, saved))
    return saved


def optimizer_state_for_checkpoint(optimizer: Any) -> Any:
    """``optimizer.state_dict()``, with the fused (sharded) member's state gathered per rank
    (collective; rank 0 gets ``{"__per_rank__": [...]}`` for it, the others ``None``)."""
    sd = optimizer.state_dict()
    if not is_initialized() or not isinstance(sd, Mapping) or "fused" not in sd:
        return sd
    gathered: List[Any] = [None] * get_world_size() if is_main_process() else None  # type: ignore[assignment]
    dist.gather_object(_local_plain(sd["fused"]), gathered, dst=0)
    if not is_main_process():
        return None
    return {**{k: v for k, v in sd.items() if k != "fused"}, "fused": {"__per_rank__": gathered}}


def load_optimizer_state(optimizer: Any, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state_for_checkpoint` (this rank takes its own fused entry;
    the run must use the same world size and plan)."""
    if not isinstance(state, Mapping) or "fused" not in state or "__per_rank__" not in state.get("fused", {}):
        optimizer.load_state_dict(state)
        return
    per_rank = state["fused"]["__per_rank__"]
    if len(per_rank) != get_world_size():
        raise ValueError(f"the checkpoint's sharded optimizer state is from {len(per_rank)} ranks; this run "
                         f"has {get_world_size()}: resume a sharded run with the same world size and plan")
    fused = optimizer["fused"]
    current = fused.state_dict()
    fused.load_state_dict(_copy_local_into(current, per_rank[get_rank()]))
    rest = {k: v for k, v in state.items() if k != "fused"}
    for name, member in optimizer.optimizers.items():
        if name != "fused":
            member.load_state_dict(rest[name])


# ---------------------------------------------------------------------------------- records
def num_parameters(model: nn.Module) -> int:
    """Parameter count of the whole (unsharded) model: sharded tables count their global size."""
    inner = unwrap_model(model)
    if not is_sharded(inner):
        return sum(p.numel() for p in inner.parameters())
    total = 0
    for k, v in inner.state_dict().items():
        if _is_sharded_tensor(v):
            total += int(math.prod(v.size()))
    sharded_ids = {id(p) for p in inner.parameters() if getattr(p, "_in_backward_optimizers", None)}
    total += sum(p.numel() for p in inner.parameters() if id(p) not in sharded_ids)
    return total


def memory_record(model: nn.Module, optimizer: Any = None) -> Dict[str, Any]:
    """``memory_report(model, optimizer).to_dict()``; for a sharded model the bytes of the sharded
    tables (parameters and fused-optimizer state) are summed over ranks (collective), replicated
    parts counted once, and ``"sharded": True`` is added."""
    from slimembed.tables import memory_report

    inner = unwrap_model(model)
    if not is_sharded(inner):
        return memory_report(inner, optimizer).to_dict()
    fused_ids = {id(p) for p in inner.parameters() if getattr(p, "_in_backward_optimizers", None)}
    torch_opts = None
    if optimizer is not None and hasattr(optimizer, "optimizers"):
        from .optim import OptimizerSet

        torch_opts = OptimizerSet({k: v for k, v in optimizer.optimizers.items() if k != "fused"})
    rep = memory_report(inner, torch_opts).to_dict()
    local_sharded = sum(p.numel() * p.element_size() for p in inner.parameters() if id(p) in fused_ids)
    fused_state = 0
    if optimizer is not None and hasattr(optimizer, "optimizers") and "fused" in optimizer.optimizers:
        fused_state = _local_bytes(optimizer["fused"].state_dict().get("state", {}))
    total_sharded, total_fused = all_reduce_sum([local_sharded, fused_state])
    for key in ("param_bytes", "table_bytes", "total_bytes"):
        rep[key] = int(rep[key] - local_sharded + total_sharded)
    rep["optimizer_bytes"] = int(rep["optimizer_bytes"] + total_fused)
    rep["total_bytes"] = int(rep["total_bytes"] + total_fused)
    rep["ratio"] = rep["full_bytes"] / rep["table_bytes"] if rep["table_bytes"] else float("nan")
    rep["sharded"] = True
    return rep


def _local_bytes(obj: Any) -> int:
    if _is_sharded_tensor(obj):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in obj.local_shards())
    if isinstance(obj, Mapping):
        return sum(_local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_local_bytes(v) for v in obj)
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    return 0


def sharding_summary(model: nn.Module) -> Dict[str, Any]:
    """What is sharded where: ``{"plan": str, "not_sharded": {table: reason}}`` (empty for DDP)."""
    plan = getattr(model, "_slimembed_plan", None)
    return {"plan": None if plan is None else str(plan),
            "not_sharded": dict(getattr(model, "_slimembed_skipped", {}) or {})}


__all__ = [
    "SHARDINGS",
    "DistributedConfig",
    "launched_by_torchrun",
    "init_distributed",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "default_backend",
    "resolve_device",
    "destroy",
    "barrier",
    "broadcast_object",
    "all_reduce_sum",
    "reduce_mean",
    "all_gather_1d",
    "unwrap_model",
    "is_sharded",
    "evaluate",
    "check_even_batches",
    "wrap_model",
    "shard_model",
    "to_torchrec_full",
    "why_not_shardable",
    "sharding_candidates",
    "check_method_shardable",
    "fused_params_for",
    "build_optimizers",
    "clone_state",
    "load_full_state_dict",
    "full_state_dict",
    "optimizer_state_for_checkpoint",
    "load_optimizer_state",
    "num_parameters",
    "memory_record",
    "sharding_summary",
]
