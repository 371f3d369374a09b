"""ALPT: low-precision embedding training with a learned step size per row (``alpt``).

Li et al., "Adaptive Low-Precision Training for Embeddings in Click-Through Rate Prediction",
AAAI 2023; reference code Hsword/Hetu ``tools/EmbeddingMemoryCompression/methods/layers/alpt.py``
and ``scheduler/alpt.py`` (benchmark defaults ``digit 16, init_scale 0.01, scale_lr 2e-5``).

Rows are stored as ``int8``/``int16`` codes ``q`` with a step size ``s_r`` per row
(``value = q * s_r``). One training step, as the reference:

1. look up the dequantized rows, forward and backward (no gradient to ``s`` here);
2. the optimizer updates the rows in full precision: ``w'``;
3. the step size learns from the rounding of ``w'`` (LSQ, Esser et al. 2020)::

       dQ/ds = round(w'/s) - w'/s    inside the range,   qmin or qmax where w'/s is clipped
       g_s   = sum_d  g_d * dQ/ds_d / sqrt(B * D * Qp)    (B the batch size, Qp = 2**(b-1) - 1)

   and takes one step of its own optimizer (lr ``scale_lr``);
4. ``w'`` is stored back with stochastic rounding under the new step: ``q = floor(w'/s + u)``.

Difference from the reference, on purpose: the reference runs the model a second time on the
rounded ``w'`` to get ``g`` for step 3; here ``g`` is the row gradient of step 1 (still on
``weight.grad`` when :meth:`ALPTTable.post_step` runs), which saves a second forward/backward per
step (the reference's step costs about two). The two differ by one optimizer step's movement.

Example::

    >>> from slimembed.tables import Feature
    >>> from slimembed.tables.alpt import ALPTTable
    >>> t = ALPTTable([Feature("a", 100, 8)], digit=8)
    >>> t.scale.shape, t.qweight.dtype
    (torch.Size([100]), torch.int8)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .base import DEFAULT_INIT_SCALE
from .feature import Feature
from .int8 import LowPrecisionTable, int_range
from .registry import register

SCALE_OPTIMIZERS = ("adam", "sgd")
MIN_STEP = 1e-8  # a step size is kept positive: a sign flip would mirror every code of the row


def lsq_step_gradient(w: Tensor, s: Tensor, digit: int) -> Tensor:
    """``dQ/ds`` of ``Q(w, s) = s * clamp(round(w / s), qmin, qmax)`` with LSQ's straight-through
    rounding: ``round(v) - v`` inside the range, ``qmin``/``qmax`` where ``v = w / s`` is clipped.

    Args: ``w [n, D]``; ``s [n, 1]`` (or broadcasting). Returns ``[n, D]``.

    Example::

        >>> lsq_step_gradient(torch.tensor([[0.26, 20.0]]), torch.tensor([[0.1]]), 8)
        tensor([[  0.4000, 127.0000]])
    """
    lo, hi = int_range(digit)
    v = w / s
    inside = torch.floor(v + 0.5) - v  # the reference's round-half-up
    return torch.where(v >= hi, torch.full_like(v, float(hi)),
                       torch.where(v <= lo, torch.full_like(v, float(lo)), inside))


@register("alpt")
class ALPTTable(LowPrecisionTable):
    """ALPT (AAAI 2023): integer rows with a learned per-row step size.

    Args:
        features: the features (one shared ``embedding_dim``).
        digit: 8 or 16; default 16 (the benchmark's ``run_compressed.py``).
        init_scale: the step sizes' initial value, 0.01 (benchmark). Rows start uniform
            ``±weight_init`` (``docs/architecture.md`` §3; the reference uses Xavier-normal).
        scale_lr: the step sizes' learning rate, 2e-5 (benchmark and paper).
        scale_optimizer: ``"adam"`` (default; the reference builds the step sizes' optimizer of
            the main optimizer's type, Adam in the benchmark) or ``"sgd"``. Adam is lazy: only
            rows of the batch move, with one global step count for bias correction (as the
            reference's sparse Adam).
        sparse: sparse row gradients on the working copy.
        weight_init: half-width of the rows' uniform init.

    Buffers (inference): ``qweight`` ``int8/int16 [R, D]``, ``scale`` ``float32 [R]`` (per row,
    as the reference's ``(num_embeddings, 1)`` scale). Training-only (:meth:`training_only_bytes`):
    the parameter ``weight [R, D]`` fp32 (the working copy the main optimizer steps, equal to
    ``qweight * scale`` between steps) and the step sizes' Adam moments ``scale_m``,
    ``scale_v [R]`` and ``scale_steps``. Budget: the bit width; ``inference_bytes = R * D * digit
    / 8 + 4 * R`` (so int16 does not reach 2x; int8 reaches ``4D / (D + 4)``, 3.2x at D = 16).

    Trainer contract: call :meth:`post_step` after every optimizer step, before ``zero_grad``
    (it reads ``weight.grad``). The step sizes are not parameters: the table updates them in
    :meth:`post_step` because their gradient needs the post-update rows ``w'``.

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.
    """

    method = "alpt"
    budget_knob: ClassVar[Optional[str]] = "digit"
    solved_knobs: ClassVar[Tuple[str, ...]] = ("digit",)
    search_space: ClassVar[Dict[str, Any]] = {"scale_lr": [2e-6, 2e-5, 2e-4]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False  # already integer storage
    supports_sparse: ClassVar[bool] = True
    not_shardable_reason: ClassVar[Optional[str]] = (
        "integer codes and step sizes are buffers updated by post_step, not a torchrec-shardable fp weight")

    def __init__(self, features: Sequence[Feature], digit: int = 16, init_scale: float = 0.01,
                 scale_lr: float = 2e-5, scale_optimizer: str = "adam", sparse: bool = False,
                 weight_init: float = DEFAULT_INIT_SCALE) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        if not scale_lr >= 0:
            raise ValueError(f"scale_lr must be >= 0, got {scale_lr!r}")
        if scale_optimizer not in SCALE_OPTIMIZERS:
            raise ValueError(f"scale_optimizer must be one of {SCALE_OPTIMIZERS}, got {scale_optimizer!r}")
        super().__init__(features, digit, sparse, weight_init)
        self.step_init = float(init_scale)
        self.scale_lr = float(scale_lr)
        self.scale_optimizer = scale_optimizer
        rows = self.qweight.shape[0]
        self.register_buffer("scale", torch.full((rows,), self.step_init))
        self.register_buffer("scale_m", torch.zeros(rows))
        self.register_buffer("scale_v", torch.zeros(rows))
        self.register_buffer("scale_steps", torch.zeros((), dtype=torch.long))
        self.last_batch_size = 1  # B of the last training lookup (the LSQ gradient's factor)
        self.reset_parameters()

    def row_scale(self, idx: Optional[Tensor] = None) -> Tensor:
        s = self.scale if idx is None else self.scale.index_select(0, idx)
        return s.unsqueeze(-1)

    def _state_buffers(self) -> List[str]:
        return ["qweight", "scale"]

    def training_only_bytes(self) -> int:
        extra = sum(b.numel() * b.element_size() for b in (self.scale_m, self.scale_v, self.scale_steps))
        return super().training_only_bytes() + extra

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg["weight_init"] = cfg.pop("init_scale")
        return {**cfg, "init_scale": self.step_init, "scale_lr": self.scale_lr,
                "scale_optimizer": self.scale_optimizer}

    @classmethod
    def knob_bytes(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> int:
        rows = sum(int(f.num_embeddings) for f in features)
        d = int(features[0].embedding_dim)
        return rows * d * int(value) + 4 * rows

    # ------------------------------------------------------------------ batch size for the factor
    def forward_dense(self, ids: Tensor) -> Tensor:
        if self.training:
            self.last_batch_size = max(int(ids.shape[0]), 1)
        return super().forward_dense(ids)

    def bags_to_keyed(self, pooled: Tensor, batch_size: int) -> Tensor:
        if self.training:  # the KJT path: B bags per feature
            self.last_batch_size = max(int(batch_size), 1)
        return super().bags_to_keyed(pooled, batch_size)

    def bag(self, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Optional[Tensor],
            padding_idx: Optional[int]) -> Tensor:
        if self.training:
            self.last_batch_size = max(int(offsets.numel()) - 1, 1)
        return super().bag(ids, offsets, mode, per_sample_weights, padding_idx)

    # ------------------------------------------------------------------ the step size
    def scale_gradient(self, rows: Tensor, grad_rows: Tensor, batch_size: Optional[int] = None) -> Tensor:
        """ALPT's step-size gradient of ``rows [n]`` given their row gradients ``grad_rows [n, D]``
        and the current working rows ``weight[rows]`` (the post-update ``w'``): ``[n]``.

        ``sum_d grad * lsq_step_gradient(w', s) / sqrt(B * D * Qp)``.
        """
        b = self.last_batch_size if batch_size is None else int(batch_size)
        w = self.weight.detach().index_select(0, rows)
        s = self.row_scale(rows)
        qp = int_range(self.digit)[1]
        factor = 1.0 / math.sqrt(b * w.shape[1] * qp)
        return (grad_rows * lsq_step_gradient(w, s, self.digit)).sum(1) * factor

    @torch.no_grad()
    def _step_scale(self, rows: Tensor, g: Tensor) -> None:
        """One step of the step sizes' own optimizer on ``rows`` with gradient ``g [n]``."""
        if self.scale_optimizer == "sgd":
            upd = self.scale_lr * g
        else:  # lazy Adam, torch's defaults (betas 0.9/0.999, eps 1e-8)
            self.scale_steps += 1
            t = int(self.scale_steps)
            m = self.scale_m.index_select(0, rows) * 0.9 + 0.1 * g
            v = self.scale_v.index_select(0, rows) * 0.999 + 0.001 * g * g
            self.scale_m.index_copy_(0, rows, m)
            self.scale_v.index_copy_(0, rows, v)
            mhat = m / (1 - 0.9 ** t)
            vhat = v / (1 - 0.999 ** t)
            upd = self.scale_lr * mhat / (vhat.sqrt() + 1e-8)
        new = (self.scale.index_select(0, rows) - upd).clamp_(min=MIN_STEP)
        self.scale.index_copy_(0, rows, new)

    def _touched(self) -> Tuple[Tensor, Tensor]:
        """``(rows [n], grads [n, D])`` of ``weight.grad`` (coalesced sparse, or non-zero dense rows)."""
        grad = self.weight.grad
        if grad is None:
            empty = torch.zeros(0, dtype=torch.long, device=self.weight.device)
            return empty, self.weight.new_zeros(0, self.weight.shape[1])
        if grad.is_sparse:
            grad = grad.coalesce()
            return grad.indices()[0], grad.values()
        rows = grad.ne(0).any(1).nonzero().reshape(-1)
        return rows, grad.index_select(0, rows)

    @torch.no_grad()
    def post_step(self) -> None:
        """Call after each optimizer step and before ``zero_grad`` (the trainer does): learn the
        step sizes of the rows in the batch from the rounding of the updated rows (LSQ), then
        store every changed row with stochastic rounding under its (new) step size."""
        changed = self.changed_rows()  # against the step sizes the codes were stored with
        rows, grads = self._touched()
        if rows.numel() and self.scale_lr > 0:
            self._step_scale(rows, self.scale_gradient(rows, grads))
            changed = torch.unique(torch.cat([changed, rows]))
        self.requantize_rows(changed)
