"""fbgemm's fused optimizers for sharded tables, from the trainer's ``embedding_optimizer``.

Under DMP the sharded tables are updated inside the backward by fbgemm's table-batched embedding
kernel; this module maps slimembed's optimizer settings onto it (``docs/distributed.md``).

Example::

    >>> fused_params_for({"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1})["learning_rate"]
    0.1
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Union

import torch

from .comm import is_main_process


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

    from ..optim import DEFAULT_ADAGRAD_LR

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


__all__ = ["fused_params_for"]
