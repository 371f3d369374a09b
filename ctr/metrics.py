"""CTR metrics: exact AUC (ties handled), logloss, and a streaming evaluator over a loader.

AUC is the exact Mann-Whitney statistic computed with vectorized torch ops: scores are sorted
once, tied scores get their average rank, and ``AUC = (R+ - P(P+1)/2) / (P N)`` where ``R+`` is
the rank sum of the positives. It equals ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC
area, ties counted as one half) to float64 rounding, without a Python loop over samples.

Example::

    >>> labels = torch.tensor([0., 1., 1., 0.])
    >>> logits = torch.tensor([0.1, 0.9, 0.1, -2.0])
    >>> round(auc(labels, logits), 4)
    0.875
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ArrayLike = Union[Tensor, np.ndarray, List[float]]


def _as_tensor(x: ArrayLike) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().reshape(-1).cpu()
    return torch.as_tensor(np.asarray(x)).reshape(-1)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC of ``scores`` (logits or probabilities: any monotone score) for 0/1 ``labels``.

    Args:
        labels: ``[N]`` 0/1 labels (any dtype).
        scores: ``[N]`` scores; ties between a positive and a negative count 1/2.
    Returns:
        The AUC as a Python float; ``nan`` when ``labels`` hold a single class (sklearn raises).
    """
    y = _as_tensor(labels).to(torch.float64)
    s = _as_tensor(scores).to(torch.float64)
    if y.numel() != s.numel():
        raise ValueError(f"labels ({y.numel()}) and scores ({s.numel()}) differ in length")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    n_pos = float(y.sum())
    n_neg = float(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_s, order = torch.sort(s)
    # Average 1-based rank of each run of equal scores: start + (count + 1) / 2.
    _, counts = torch.unique_consecutive(sorted_s, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks_sorted = torch.repeat_interleave(avg_rank, counts)
    rank_sum_pos = float((ranks_sorted * y[order]).sum())
    return (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def logloss(labels: ArrayLike, logits: ArrayLike, from_logits: bool = True, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy.

    Args:
        labels: ``[N]`` 0/1 labels.
        logits: ``[N]`` logits (``from_logits=True``, numerically exact) or probabilities
            (``from_logits=False``; clipped to ``[eps, 1 - eps]`` like sklearn's ``log_loss``).
    """
    y = _as_tensor(labels).to(torch.float64)
    z = _as_tensor(logits).to(torch.float64)
    if y.numel() == 0:
        return float("nan")
    if from_logits:
        return float(F.binary_cross_entropy_with_logits(z, y))
    p = z.clamp(eps, 1.0 - eps)
    return float(F.binary_cross_entropy(p, y))


class StreamingEvaluator:
    """Accumulates logits and labels batch by batch; :meth:`compute` gives exact AUC and logloss.

    Predictions are kept (8 bytes per sample, as float32 logit + label) so the AUC is exact rather
    than binned. ``update`` is O(B) tensor work, no Python per sample.

    Example::

        >>> ev = StreamingEvaluator()
        >>> ev.update(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
        >>> ev.compute()["auc"]
        1.0
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._logits: List[Tensor] = []
        self._labels: List[Tensor] = []
        self._loss_sum = 0.0
        self._n = 0

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: ``logits [B]``, ``labels [B]``."""
        z = logits.detach().reshape(-1).float().cpu()
        y = labels.detach().reshape(-1).float().cpu()
        if z.numel() != y.numel():
            raise ValueError(f"logits ({z.numel()}) and labels ({y.numel()}) differ in length")
        self._logits.append(z)
        self._labels.append(y)
        self._loss_sum += float(
            F.binary_cross_entropy_with_logits(z.double(), y.double(), reduction="sum")
        )
        self._n += int(z.numel())

    @property
    def num_samples(self) -> int:
        return self._n

    def predictions(self) -> Dict[str, Tensor]:
        """The accumulated ``{"logits": [N], "labels": [N]}``."""
        if not self._logits:
            return {"logits": torch.empty(0), "labels": torch.empty(0)}
        return {"logits": torch.cat(self._logits), "labels": torch.cat(self._labels)}

    def compute(self) -> Dict[str, float]:
        """``{"auc", "logloss", "num_samples"}`` over everything seen since :meth:`reset`."""
        if self._n == 0:
            return {"auc": float("nan"), "logloss": float("nan"), "num_samples": 0}
        preds = self.predictions()
        return {
            "auc": auc(preds["labels"], preds["logits"]),
            "logloss": self._loss_sum / self._n,
            "num_samples": self._n,
        }


def batch_to_device(batch: Any, device: Union[str, torch.device, None]) -> Any:
    """``batch`` on ``device``: a :class:`~slimembed.datasets.Batch` (or anything with ``.to``)
    through its ``to``; a ``(dense, sparse, labels)`` tuple part by part (``None`` parts stay).
    Host-to-CUDA copies are non-blocking (a blocking one syncs the stream every batch)."""
    if device is None:
        return batch
    device = torch.device(device)
    nb = device.type == "cuda"
    if hasattr(batch, "to"):
        try:
            return batch.to(device, non_blocking=nb)
        except TypeError:  # a user type whose to() takes only a device
            return batch.to(device)
    if isinstance(batch, (tuple, list)):
        parts = [t.to(device, non_blocking=nb) if hasattr(t, "to") else t for t in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)
    return batch


def _batch_parts(batch: Any):
    """``(dense, sparse, labels)`` from a :class:`~slimembed.datasets.Batch` or a 3-tuple."""
    if hasattr(batch, "labels"):
        return batch.dense, batch.sparse, batch.labels
    dense, sparse, labels = batch
    return dense, sparse, labels


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: Optional[Union[str, torch.device]] = None,
    max_batches: Optional[int] = None,
    runtime: Any = None,
) -> Dict[str, float]:
    """AUC and logloss of ``model`` (``forward(dense, sparse) -> logits [B]``) over ``loader``.

    The one evaluation loop of the package. ``runtime`` (a :class:`~slimembed.ctr.runtime.Runtime`;
    default: :func:`~slimembed.ctr.runtime.runtime_for` ``(model)``, the local runtime unless a
    process group is up) supplies the reductions. Each rank runs its own batches (a loader sharded
    by rank), the logits ``[N_r]`` and labels ``[N_r]`` of every rank are all-gathered and the exact
    AUC and logloss computed on all of them: every rank returns the same
    ``{"auc", "logloss", "num_samples"}``, equal to one process evaluating the whole set (AUC is
    never averaged over ranks). Under a process group every rank must call it. ``max_batches``
    caps each rank's batches. With sharded tables every forward is a collective, so ranks step in
    lockstep (a rank out of batches repeats a batch whose outputs are dropped). The wrapped model's
    inner module runs in eval mode and its previous mode is restored afterwards.

    Example::

        >>> class FirstDense(nn.Module):
        ...     def forward(self, dense, sparse):
        ...         return dense[:, 0]
        >>> batches = [(torch.tensor([[2.0], [-1.0]]), None, torch.tensor([1.0, 0.0]))]
        >>> r = evaluate(FirstDense(), batches)
        >>> r["auc"], round(r["logloss"], 4), r["num_samples"]
        (1.0, 0.2201, 2)
    """
    if runtime is None:
        from .runtime import runtime_for

        runtime = runtime_for(model)
    limit = None if max_batches is None else int(max_batches)
    inner = runtime.unwrap(model)
    lockstep = runtime.is_sharded(inner)
    was_training = inner.training
    inner.eval()
    logits: List[Tensor] = []
    labels: List[Tensor] = []
    try:
        it = iter(loader)
        pending = None if limit == 0 else next(it, None)
        dummy = pending
        if lockstep:  # a rank without any batch borrows the first batch of the first rank with one
            has = runtime.all_gather_1d(torch.tensor([0 if pending is None else 1], dtype=torch.long)).tolist()
            if 0 in has and 1 in has:
                first = runtime.broadcast_object(pending, src=has.index(1))
                dummy = first if dummy is None else dummy
        i = 0
        while True:
            if pending is not None:
                batch, pending = pending, None
            else:
                batch = None if (limit is not None and i >= limit) else next(it, None)
            if lockstep:
                if runtime.all_reduce_sum([0.0 if batch is None else 1.0])[0] == 0:
                    break
                if batch is None:  # keep the collectives in step; the outputs are dropped
                    dense, sparse, _ = _batch_parts(batch_to_device(dummy, device))
                    inner(dense, sparse)
                    continue
            elif batch is None:
                break
            dense, sparse, y = _batch_parts(batch_to_device(batch, device))
            logits.append(inner(dense, sparse).detach().reshape(-1).float().cpu())
            labels.append(y.detach().reshape(-1).float().cpu())
            i += 1
    finally:
        inner.train(was_training)
    z = runtime.all_gather_1d(torch.cat(logits) if logits else torch.empty(0))
    y = runtime.all_gather_1d(torch.cat(labels) if labels else torch.empty(0))
    n = int(z.numel())
    if n == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "num_samples": 0}
    loss = float(F.binary_cross_entropy_with_logits(z.double(), y.double(), reduction="sum")) / n
    return {"auc": auc(y, z), "logloss": loss, "num_samples": n}


def is_better(new: float, best: Optional[float], min_delta: float = 0.0) -> bool:
    """Whether AUC ``new`` improves on ``best`` by more than ``min_delta`` (NaN never improves)."""
    if new is None or math.isnan(new):
        return False
    return best is None or math.isnan(best) or new > best + min_delta


__all__ = ["auc", "logloss", "StreamingEvaluator", "evaluate", "is_better", "batch_to_device"]
