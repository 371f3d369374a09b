"""The batch every loader yields and every model and trainer consumes (docs/architecture.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor


@dataclass
class Batch:
    """One mini-batch.

    Attributes:
        dense: ``FloatTensor[B, n_dense]`` (``n_dense`` may be 0).
        sparse: ``LongTensor[B, F]`` dense ids for single-valued fields, or a torchrec
            ``KeyedJaggedTensor`` when fields are multi-valued.
        labels: ``FloatTensor[B]`` of 0/1.
    """

    dense: Tensor
    sparse: Union[Tensor, Any]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        """The batch on ``device`` (every field: dense, sparse ids or the whole KJT with its
        lengths/offsets/weights, labels).

        Host-to-CUDA copies are always issued non-blocking: a blocking copy synchronizes the
        stream (three device syncs per batch, measured), while a non-blocking one from pageable
        memory is still safe (CUDA stages the source before the call returns) and stream order
        makes the data ready for the kernels that read it.
        """
        device = torch.device(device)
        if not non_blocking and device.type == "cuda" and self.labels.device.type == "cpu":
            non_blocking = True
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )
