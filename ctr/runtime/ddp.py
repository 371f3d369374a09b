"""Data parallelism: every table replicated, gradients averaged over ranks (``docs/distributed.md``).

``DistributedDataParallel`` averages the dense gradients. Tables built with ``sparse=True``
(sparse COO row gradients, for ``sparse_adam`` / ``rowwise_adagrad`` / ``adagrad``) are kept out of
DDP: its reducer only knows ``nn.Embedding``/``nn.EmbeddingBag`` as sparse and fails with "Cannot
access storage of SparseTensorImpl" on any other module's sparse gradient. Their gradients are
averaged by a post-accumulate hook instead (:class:`SparseGradSync`): an all-gather of the touched
rows on a dedicated process group (gloo and nccl). Every method trains this way.

Example (a script launched by ``torchrun --nproc_per_node 2``)::

    >>> init_distributed()                                  # doctest: +SKIP
    >>> rt = DDPRuntime({"sharding": "none"})               # doctest: +SKIP
    >>> train_model = rt.wrap_model(model, train_config)    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Device, ProcessGroupRuntime
from .comm import all_gather_1d, get_world_size

logger = logging.getLogger("slimembed.ctr.runtime")


class SparseGradSync:
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
        from ..optim import _row_sparse, _to_row_sparse

        idx, vals = _row_sparse(g)  # unique rows, [n, row_size]
        row_size = vals.shape[1] if vals.dim() == 2 else 1
        all_idx = all_gather_1d(idx, group=self.group)
        all_vals = all_gather_1d(vals.reshape(-1), group=self.group).reshape(-1, row_size)
        uniq, inverse = torch.unique(all_idx, sorted=True, return_inverse=True)
        summed = all_vals.new_zeros(uniq.numel(), row_size).index_add_(0, inverse, all_vals)
        p.grad = _to_row_sparse(p, uniq, summed / self.world)


# model -> its SparseGradSync (kept off the module so that it stays picklable / deep-copyable)
SPARSE_SYNC: "weakref.WeakKeyDictionary[nn.Module, SparseGradSync]" = weakref.WeakKeyDictionary()


def sparse_table_params(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """Parameters of tables built with ``sparse=True`` (they may produce sparse COO gradients)."""
    from slimembed.tables import EmbeddingTable

    ids = set()
    for m in model.modules():
        if isinstance(m, EmbeddingTable) and getattr(m, "sparse", False):
            ids.update(id(p) for p in m.parameters())
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]


def attach_sparse_sync(model: nn.Module, named: Sequence[Tuple[str, nn.Parameter]]) -> None:
    """Start every rank's sparse-gradient tables from rank 0's rows (as DDP does for the rest)
    and average their gradients by :class:`SparseGradSync`."""
    with torch.no_grad():
        for _, p in named:
            dist.broadcast(p.data, src=0)
    SPARSE_SYNC[model] = SparseGradSync([p for _, p in named])


class DDPRuntime(ProcessGroupRuntime):
    """``sharding: none`` / ``data_parallel``: the model replicated on every rank.

    :meth:`wrap_model` moves the model to this rank's device and wraps it in
    ``DistributedDataParallel`` (``find_unused_parameters`` and ``bucket_cap_mb`` from the
    config); sparse-gradient table parameters are left to :class:`SparseGradSync`. A model whose
    every trainable parameter is such a table is returned unwrapped (the hooks do it all).
    Evaluation, checkpoints and records use the single-process paths of :class:`Runtime` with
    the gathered reductions of :class:`ProcessGroupRuntime`.
    """

    name = "ddp"

    def wrap_model(self, model: nn.Module, train_config: Any = None, device: Optional[Device] = None,
                   batch_size: Optional[int] = None) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = self._device_for(train_config, device)
        model = model.to(dev)
        sparse = sparse_table_params(model)
        if sparse:
            names = [n for n, _ in sparse]
            DDP._set_params_and_buffers_to_ignore_for_model(model, names)
            attach_sparse_sync(model, sparse)
            if self.is_main:
                logger.info("DDP: %d sparse-gradient table parameters averaged by hooks (not by DDP's reducer)",
                            len(names))
        ignored = {id(q) for _, q in sparse}
        if not any(p.requires_grad and id(p) not in ignored for p in model.parameters()):
            return model  # nothing for DDP's reducer
        cfg = self.config
        return DDP(model, device_ids=[dev] if dev.type == "cuda" else None,
                   find_unused_parameters=cfg.find_unused_parameters, bucket_cap_mb=cfg.bucket_cap_mb)


__all__ = ["DDPRuntime", "SparseGradSync", "sparse_table_params", "attach_sparse_sync"]
