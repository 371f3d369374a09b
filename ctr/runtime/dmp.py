"""Model parallelism: torchrec's ``DistributedModelParallel`` shards the plain torchrec tables.

Every plain ``EmbeddingBagCollection`` child of the model (``unified`` / ``multiplexed`` with
``backend="torchrec"``; ``full`` tables are moved onto one first, see
:class:`~slimembed.tables.torchrec_full.TorchrecFullTable`) is planned by torchrec's
``EmbeddingShardingPlanner`` under the requested sharding type and sharded; the rest of the model
is replicated by DMP's DDP wrapper. On CPU torchrec offers table-wise, column-wise and
table-column-wise only (row-wise needs CUDA: ``EmbeddingBagCollectionSharder.sharding_types("cpu")``).
Sharded tables use fbgemm's fused kernels (the optimizer runs inside the backward; the trainer's
``embedding_optimizer`` picks it, see :func:`fused_params_for`) and need dims divisible by 4;
tables whose dims are not (a 1-dim first-order table) stay replicated. Which tables can be
sharded at all is the tables' answer (:mod:`~slimembed.ctr.runtime.shardability`).
See ``docs/distributed.md``.

Example (a script launched by ``torchrun --nproc_per_node 2``)::

    >>> rt = DMPRuntime({"sharding": "table_wise"})                  # doctest: +SKIP
    >>> train_model = rt.wrap_model(model, train_config)            # doctest: +SKIP
    >>> rt.record_fields(train_model)["distributed"]["plan"]        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import sharded_state as S
from .base import Device, ProcessGroupRuntime
from .comm import CPU_SHARDINGS, CUDA_SHARDINGS, DistributedConfig, is_sharded, is_sharded_tensor, unwrap_model
from .ddp import attach_sparse_sync, sparse_table_params
from .fused import fused_params_for
from .shardability import WHY_DIM4, outer_tables, plain_ebcs, sharding_candidates

logger = logging.getLogger("slimembed.ctr.runtime")


def _topology(world: int, device: torch.device):
    from torchrec.distributed.planner.types import KernelConfig, Topology, TopologyFactory, TrainerConfig

    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    try:
        return TopologyFactory.create_topology(
            trainer_config=TrainerConfig(world_size=world, local_world_size=local),
            kernel_config=KernelConfig(compute_device=device.type))
    except Exception:  # pragma: no cover - factory validation differs across versions
        return Topology(world_size=world, compute_device=device.type, local_world_size=local)


def _fused_parameters(inner: nn.Module) -> List[nn.Parameter]:
    """Parameters fbgemm updates inside the backward (the sharded tables' weights)."""
    return [p for p in inner.parameters() if getattr(p, "_in_backward_optimizers", None)]


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



class DMPRuntime(ProcessGroupRuntime):
    """``sharding: table_wise | column_wise | table_column_wise | row_wise | table_row_wise | auto``.

    The model's plain torchrec tables are sharded over the ranks, the rest replicated; every
    forward is a collective (evaluation runs in lockstep), checkpoints hold full tensors gathered on
    rank 0 and the fused optimizer's state per rank, records sum the shards over ranks.
    """

    name = "dmp"

    def __init__(self, config: Union[None, DistributedConfig, Mapping[str, Any]] = None) -> None:
        super().__init__(config)
        if not self.config.model_parallel:
            raise ValueError(f"DMPRuntime needs a model-parallel sharding type, got {self.config.sharding!r}")

    # ------------------------------------------------------------------ model
    def wrap_model(self, model: nn.Module, train_config: Any = None, device: Optional[Device] = None,
                   batch_size: Optional[int] = None) -> nn.Module:
        """Shard the plain torchrec tables of ``model``; returns the DMP module.

        ``full`` tables are first moved onto a torchrec-backed table (same rows). Each plain
        ``EmbeddingBagCollection`` whose dims are all divisible by 4 is planned on its own by
        ``EmbeddingShardingPlanner`` (constraints: the requested sharding type, the fused kernel)
        and sharded; others stay replicated (DMP's DDP wrapper), with a log line saying why. The
        sharded tables start from the model's own weights (DMP allocates new fused storage; the
        rows are copied in), so a seeded model trains the same sharded or not. Raises
        ``ValueError`` naming every table and why when nothing can be sharded.
        """
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner
        from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
        from torchrec.distributed.planner.types import ParameterConstraints
        from torchrec.distributed.types import ShardingPlan

        from slimembed.tables.torchrec_full import TorchrecFullTable

        cfg = self.config
        dev = self._device_for(train_config, device)
        model = model.to(dev)
        allowed = CUDA_SHARDINGS if dev.type == "cuda" else CPU_SHARDINGS
        if cfg.sharding != "auto" and cfg.sharding not in allowed:
            raise ValueError(
                f"sharding {cfg.sharding!r} is not available on {dev.type}: torchrec offers {list(allowed)} "
                "there (torchrec/distributed/embedding_types.py, BaseEmbeddingSharder.sharding_types: "
                "row_wise, table_row_wise and grid_shard only for cuda)")

        # 1. full tables -> torchrec EBCs (same rows); dims not divisible by 4 stay replicated
        skipped: Dict[str, str] = {}
        for name, t in outer_tables(model):
            if getattr(t, "method", None) == "full" and hasattr(t, "weight"):
                if t.embedding_dim % 4 == 0:
                    _set_submodule(model, name, TorchrecFullTable.from_full(t))
                else:
                    skipped[name] = f"dim {t.embedding_dim} not divisible by 4: {WHY_DIM4}; it stays replicated (DDP)"
        # 2. which EBCs can be sharded
        reasons = {n: r for n, r in sharding_candidates(model).items() if r is not None}
        ebcs = plain_ebcs(model)
        for name, _ in outer_tables(model):  # claims to be shardable but holds no plain EBC
            if name not in reasons and name not in skipped and not any(
                    p == name or p.startswith(name + ".") for p, _ in ebcs):
                reasons[name] = "it holds no plain torchrec EmbeddingBagCollection for DMP to shard"
        todo = []
        for path, ebc in ebcs:
            bad = [d for d in sorted({c.embedding_dim for c in ebc.embedding_bag_configs()}) if d % 4]
            if bad:
                skipped[path] = f"dims {bad} not divisible by 4: {WHY_DIM4}; it stays replicated (DDP)"
            else:
                todo.append((path, ebc))
        why_not = {**reasons, **skipped}
        if not todo:
            lines = [f"  {n}: {r}" for n, r in why_not.items()]
            raise ValueError(f"distributed.sharding={cfg.sharding!r}: no table of {type(model).__name__} can be "
                             "sharded by torchrec DistributedModelParallel:\n" + "\n".join(lines))
        if self.is_main:
            for n, r in why_not.items():
                logger.warning("table %s is not sharded: %s", n, r)
        # the output key order of each unsharded EBC (config order): a sharded EBC returns its keys
        # grouped by shard; a hook restores the order so parent modules see the unsharded contract
        key_order = {path: [(f, c.embedding_dim) for c in ebc.embedding_bag_configs() for f in c.feature_names]
                     for path, ebc in todo}
        # 3. the rows each sharded table starts from (every rank built the same seeded model)
        start = {f"{path}.{k}" if path else k: v.detach().clone()
                 for path, ebc in todo for k, v in ebc.state_dict().items()}
        # 4. plan each EBC on its own (table names may repeat across EBCs: field and first-order tables)
        sharders = [EmbeddingBagCollectionSharder(fused_params=fused_params_for(train_config or {}, dev))]
        types = list(allowed) if cfg.sharding == "auto" else [cfg.sharding]
        topology = _topology(self.world_size, dev)
        plans = {}
        for path, ebc in todo:
            cons = {c.name: ParameterConstraints(sharding_types=types, compute_kernels=["fused"],
                                                 min_partition=cfg.column_shard_dim)
                    for c in ebc.embedding_bag_configs()}
            planner = EmbeddingShardingPlanner(topology=topology, constraints=cons, batch_size=batch_size or 512,
                                               storage_reservation=FixedPercentageStorageReservation(0.15))
            plans[path] = planner.collective_plan(ebc, sharders, dist.GroupMember.WORLD).plan[""]
        sharding_plan = ShardingPlan(plan=plans)
        if self.is_main:
            logger.info("torchrec sharding plan:\n%s", sharding_plan)
        sparse = [n for n, _ in sparse_table_params(model)]
        wrapper = DefaultDataParallelWrapper(bucket_cap_mb=int(cfg.bucket_cap_mb), static_graph=False,
                                             find_unused_parameters=cfg.find_unused_parameters,
                                             params_to_ignore=sparse)
        dmp = DistributedModelParallel(model, device=dev, plan=sharding_plan, sharders=sharders,
                                       data_parallel_wrapper=wrapper)
        inner = unwrap_model(dmp)
        if sparse:
            params = dict(inner.named_parameters())
            attach_sparse_sync(inner, [(n, params[n]) for n in sparse])
        # 5. copy the starting rows into the local shards; restore the output key order
        S.load_full_state_dict(inner, start, strict=False)
        for path, order in key_order.items():
            inner.get_submodule(path).register_forward_hook(_KeyOrder(order))
        dmp._slimembed_plan = sharding_plan  # type: ignore[attr-defined]
        dmp._slimembed_skipped = why_not  # type: ignore[attr-defined]
        dmp._slimembed_sharding = cfg.sharding  # type: ignore[attr-defined]
        return dmp

    def is_sharded(self, model: nn.Module) -> bool:
        return is_sharded(model)

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model if is_sharded(model) else model.to(device)

    def optimizers(self, model: nn.Module, train_config: Any):
        """The torch optimizers of every parameter fbgemm does not update, plus a ``"fused"`` member
        (DMP's fused optimizer, whose ``step`` is a no-op) so that ``zero_grad``/``state_dict``
        cover everything."""
        from torchrec.optim.keyed import CombinedOptimizer

        from ..optim import build_optimizers

        inner = self.unwrap(model)
        if hasattr(model, "fused_optimizer"):
            fused = model.fused_optimizer
        else:
            fused = CombinedOptimizer([(n, m.fused_optimizer) for n, m in inner.named_modules()
                                       if n and hasattr(m, "fused_optimizer") and type(m).__name__.startswith("Sharded")])
        return build_optimizers(inner, train_config, exclude=_fused_parameters(inner), extra={"fused": fused})

    # ------------------------------------------------------------------ state
    def clone_state(self, module: nn.Module) -> Dict[str, Any]:
        return S.clone_state(module)

    def model_state(self, module: nn.Module, state: Optional[Mapping[str, Any]] = None) -> Optional[Mapping[str, Any]]:
        """Full tensors gathered on rank 0 (collective); the other ranks get ``None``."""
        return S.full_state_dict(module, state)

    def load_model_state(self, module: nn.Module, state: Mapping[str, Any]) -> None:
        S.load_full_state_dict(module, state)  # each rank copies its own shards

    def optimizer_state(self, optimizer: Any) -> Any:
        return S.optimizer_state_for_checkpoint(optimizer)

    def load_optimizer_state(self, optimizer: Any, state: Any) -> None:
        S.load_optimizer_state(optimizer, state)

    # ------------------------------------------------------------------ records
    def num_parameters(self, model: nn.Module) -> int:
        """Sharded tables count their global size."""
        inner = self.unwrap(model)
        total = sum(int(math.prod(v.size())) for v in inner.state_dict().values() if is_sharded_tensor(v))
        fused = {id(p) for p in _fused_parameters(inner)}
        return total + sum(p.numel() for p in inner.parameters() if id(p) not in fused)

    def memory_record(self, model: nn.Module, optimizer: Any = None) -> Dict[str, Any]:
        """The bytes of the sharded tables (parameters and fused-optimizer state) summed over ranks
        (collective), replicated parts counted once, and ``"sharded": True``."""
        from slimembed.tables import memory_report

        from ..optim import OptimizerSet

        inner = self.unwrap(model)
        members = dict(getattr(optimizer, "optimizers", None) or {})
        torch_opts = OptimizerSet({k: v for k, v in members.items() if k != "fused"}) if hasattr(
            optimizer, "optimizers") else None
        rep = memory_report(inner, torch_opts).to_dict()
        local_sharded = sum(p.numel() * p.element_size() for p in _fused_parameters(inner))
        fused_state = S.local_bytes(members["fused"].state_dict().get("state", {})) if "fused" in members else 0
        total_sharded, total_fused = self.all_reduce_sum([local_sharded, fused_state])
        for key in ("param_bytes", "table_bytes", "total_bytes"):
            rep[key] = int(rep[key] - local_sharded + total_sharded)
        rep["optimizer_bytes"] = int(rep["optimizer_bytes"] + total_fused)
        rep["total_bytes"] = int(rep["total_bytes"] + total_fused)
        rep["ratio"] = rep["full_bytes"] / rep["table_bytes"] if rep["table_bytes"] else float("nan")
        rep["sharded"] = True
        return rep


def shard_model(model: nn.Module, config: Union[None, DistributedConfig, Mapping[str, Any]] = None,
                train_config: Any = None, device: Optional[Device] = None,
                batch_size: Optional[int] = None) -> nn.Module:
    """``DMPRuntime(config).wrap_model(model, ...)`` (needs a process group and a model-parallel type)."""
    return DMPRuntime(config).wrap_model(model, train_config=train_config, device=device, batch_size=batch_size)


__all__ = ["DMPRuntime", "shard_model", "fused_params_for"]
