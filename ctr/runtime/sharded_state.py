"""State of models whose tables torchrec has sharded: every rank holds its own shards
(``ShardedTensor``), checkpoints hold full tensors (gathered on rank 0), and the fused optimizer's
state is kept per rank. Without sharded tensors each function is the plain ``state_dict`` path.

Example (no sharded tensors: plain copies)::

    >>> from torch import nn
    >>> m = nn.Linear(2, 1)
    >>> sorted(clone_state(m)) == sorted(full_state_dict(m))
    True
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .comm import get_rank, get_world_size, is_initialized, is_main_process, is_sharded_tensor


def clone_state(module: nn.Module) -> Dict[str, Any]:
    """A detached copy of ``module.state_dict()``; sharded tensors keep only their local shards."""
    out: Dict[str, Any] = {}
    for k, v in module.state_dict().items():
        out[k] = copy.deepcopy(v) if is_sharded_tensor(v) else v.detach().clone()
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
            if is_sharded_tensor(src):  # a sharded clone (best weights): copy shard to shard
                for dst_sh, src_sh in zip(v.local_shards(), src.local_shards()):
                    dst_sh.tensor.copy_(src_sh.tensor)
            elif is_sharded_tensor(v):
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
    if not any(is_sharded_tensor(v) for v in state.values()):
        return dict(state)
    out: Dict[str, Any] = {}
    for k, v in state.items():
        if is_sharded_tensor(v):
            full = torch.empty(tuple(v.size()), dtype=v.dtype) if is_main_process() else None
            v.gather(dst=0, out=full)
            out[k] = full
        else:
            out[k] = v.detach().cpu() if isinstance(v, Tensor) else v
    return out if is_main_process() else None


def _local_plain(obj: Any) -> Any:
    """Nested state with every ShardedTensor replaced by ``[(offsets, local tensor), ...]``."""
    if is_sharded_tensor(obj):
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
    if is_sharded_tensor(current):
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


def local_bytes(obj: Any) -> int:
    """Bytes this rank holds in ``obj`` (nested state; a sharded tensor counts its local shards)."""
    if is_sharded_tensor(obj):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in obj.local_shards())
    if isinstance(obj, Mapping):
        return sum(local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(local_bytes(v) for v in obj)
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    return 0


__all__ = ["clone_state", "load_full_state_dict", "full_state_dict", "optimizer_state_for_checkpoint",
           "load_optimizer_state", "local_bytes"]
