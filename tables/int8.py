"""Low-precision embedding training: rows stored as int8 / int16 during training (``int8``, ``int16``).

The VLDB'24 benchmark's "INT8/16" method (Zhang et al., "Experimental Analysis of Large-scale
Learnable Vector Storage Compression"; reference code Hsword/Hetu
``tools/EmbeddingMemoryCompression/methods/layers/quantize.py`` and ``scheduler/quantize.py``):
every row is stored as signed ``digit``-bit integers with one symmetric scale for the whole table
(zero point 0), a lookup dequantizes ``q * scale``, and every update is written back with
*stochastic rounding* ``q = clamp(floor(w / scale + u), qmin, qmax)``, ``u ~ U[0, 1)``, which is
unbiased: ``E[q * scale] = w`` inside the range.

PyTorch design (``docs/architecture.md`` §3): an integer tensor cannot be a parameter trained by a
torch optimizer, so the table holds

* ``qweight`` (buffer ``int8``/``int16`` ``[R, D]``): the stored rows, the truth, what inference needs;
* ``weight`` (parameter ``float32 [R, D]``): a *training-only* working copy the optimizer steps.
  Between steps it always equals ``qweight * scale`` exactly, so no full-precision value survives a
  step (as in the reference, whose optimizer updates the dequantized rows and writes them back).

A lookup reads ``qweight`` and passes its gradient straight through to ``weight`` (dense, or sparse
rows with ``sparse=True``); the optimizer then moves ``weight``; :meth:`LowPrecisionTable.post_step`
(the trainer calls it after each optimizer step) stochastically rounds every changed row back into
``qweight`` and resets ``weight`` to the dequantized value.

Example::

    >>> from slimembed.tables import Feature
    >>> from slimembed.tables.int8 import Int8Table
    >>> t = Int8Table([Feature("a", 100, 8)], digit=8)
    >>> t.qweight.dtype, t(torch.tensor([[3]])).shape
    (torch.int8, torch.Size([1, 1, 8]))
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, device_constant
from .feature import Feature
from .inference_budget import InferenceBudget
from .registry import register

DIGITS = (8, 16)
DEFAULT_SCALE = 0.01  # the benchmark's run_compressed.py: quantize scale 0.01, middle 0


def int_dtype(digit: int) -> torch.dtype:
    """``torch.int8`` or ``torch.int16`` for ``digit`` 8 or 16."""
    if digit not in DIGITS:
        raise ValueError(f"digit must be 8 or 16, got {digit!r}")
    return torch.int8 if digit == 8 else torch.int16


def int_range(digit: int) -> Tuple[int, int]:
    """``(qmin, qmax)`` of a signed ``digit``-bit integer: ``(-2**(b-1), 2**(b-1) - 1)``."""
    int_dtype(digit)
    return -(2 ** (digit - 1)), 2 ** (digit - 1) - 1


def stochastic_round(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """``floor(x + u)``, ``u ~ U[0, 1)`` elementwise: an unbiased rounding, ``E[out] = x``.

    Example::

        >>> stochastic_round(torch.tensor([2.0, -1.0]))
        tensor([ 2., -1.])
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.floor(x + u)


def quantize(w: Tensor, scale: Any, digit: int, stochastic: bool = True,
             generator: Optional[torch.Generator] = None) -> Tensor:
    """Symmetric quantization of ``w [...]`` with ``scale`` (a float or a tensor broadcasting to
    ``w``) into ``int8``/``int16`` codes, clamped to the type's range.

    ``stochastic=True``: ``floor(w / scale + u)`` (the reference's rounding); ``False``: nearest.
    """
    v = w.float() / scale
    v = stochastic_round(v, generator) if stochastic else torch.round(v)
    lo, hi = int_range(digit)
    return v.clamp_(lo, hi).to(int_dtype(digit))


def dequantize(q: Tensor, scale: Any) -> Tensor:
    """``q.float() * scale`` (``scale`` a float or a tensor broadcasting to ``q``)."""
    return q.float() * scale


class _StraightThrough(torch.autograd.Function):
    """Forward: the dequantized rows; backward: their gradient goes to the working rows unchanged."""

    @staticmethod
    def forward(ctx: Any, work: Tensor, deq: Tensor) -> Tensor:  # type: ignore[override]
        return deq

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class LowPrecisionTable(InferenceBudget, EmbeddingTable):
    """Base of the integer-storage tables: ``qweight`` codes + a training-only fp32 ``weight``.

    Subclasses define how codes are scaled (:meth:`row_scale`) and may add a post-step update.
    All features share one ``embedding_dim``; rows of all fields live in one fused table.

    Memory: :func:`~slimembed.tables.memory_report` counts parameters and buffers, so on a
    training table it counts the fp32 ``weight`` too; :meth:`training_only_bytes` is that part
    and :meth:`inference_bytes` the codes (+ scales), what budgets bound and what a trained
    table needs at inference. ``memory_report(t).total_bytes = inference_bytes() +
    training_only_bytes() + 8 * F`` (the base class's id-limit buffer, used only to validate ids).
    """

    needs_range: ClassVar[bool] = True

    def __init__(self, features: Sequence[Feature], digit: int = 16, sparse: bool = False,
                 init_scale: float = DEFAULT_INIT_SCALE) -> None:
        super().__init__(features)
        dims = {f.embedding_dim for f in self.features}
        if len(dims) != 1:
            raise ValueError(f"{type(self).__name__} needs one embedding_dim for all features, got "
                             f"{sorted(dims)}; build one table per dim")
        self.digit = int(digit)
        int_dtype(self.digit)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        rows = [int(f.num_embeddings) for f in self.features]
        # a cached per-device constant, not a buffer: the budget is the codes (+ scales) alone
        self._row_offset_list = [0] + list(itertools.accumulate(rows))[:-1]  # Python ints: meta builds too
        d = dims.pop()
        self.weight = nn.Parameter(torch.empty(sum(rows), d))
        self.register_buffer("qweight", torch.zeros(sum(rows), d, dtype=int_dtype(self.digit)))

    def row_offsets(self, device: torch.device) -> Tensor:
        """``LongTensor[F]``: each field's first row in the fused table."""
        return device_constant(self, "row_offsets", device, self._row_offset_list)

    # ------------------------------------------------------------------ scales
    def row_scale(self, idx: Optional[Tensor] = None) -> Any:
        """Step size of rows ``idx [N]`` as ``[N, 1]`` (or of all rows, ``idx=None``)."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Rows uniform in ``±init_scale`` (``docs/architecture.md`` §3), stochastically rounded."""
        if self.weight.is_meta:
            return
        self.weight.uniform_(-self.init_scale, self.init_scale)
        self.qweight.copy_(quantize(self.weight, self.row_scale(), self.digit))
        self.weight.copy_(dequantize(self.qweight, self.row_scale()))

    def dequantized_weight(self) -> Tensor:
        """The stored table read back in fp32: ``FloatTensor[R, D]``."""
        return dequantize(self.qweight, self.row_scale())

    # ------------------------------------------------------------------ lookups
    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        idx = ids + self.row_offsets(ids.device)[fields]
        deq = dequantize(self.qweight.index_select(0, idx), self.row_scale(idx))
        if torch.is_grad_enabled() and self.weight.requires_grad:
            work = F.embedding(idx, self.weight, sparse=self.sparse)
            return _StraightThrough.apply(work, deq)
        return deq

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def requantize_rows(self, rows: Tensor) -> None:
        """Stochastically round ``weight[rows]`` into ``qweight[rows]`` and reset ``weight[rows]``."""
        if rows.numel() == 0:
            return
        s = self.row_scale(rows)
        q = quantize(self.weight.index_select(0, rows), s, self.digit)
        self.qweight.index_copy_(0, rows, q)
        self.weight.index_copy_(0, rows, dequantize(q, s))

    @torch.no_grad()
    def changed_rows(self) -> Tensor:
        """``LongTensor[n]``: rows whose working copy differs from the stored codes."""
        return (self.weight != self.dequantized_weight()).any(1).nonzero().reshape(-1)

    @torch.no_grad()
    def post_step(self) -> None:
        """Call after each optimizer step (the trainer does): write the optimizer's update into
        the integer storage with stochastic rounding, only for rows that changed (an unchanged
        row keeps its codes exactly), and reset the working copy to the stored values."""
        self.requantize_rows(self.changed_rows())

    # ------------------------------------------------------------------ memory
    def training_only_bytes(self) -> int:
        """Bytes of the fp32 working copy ``weight`` (counted by ``memory_report``, not needed
        at inference)."""
        return self.weight.numel() * self.weight.element_size()

    def inference_bytes(self) -> int:
        """Bytes a trained table needs at inference: the codes plus any scale buffers."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers()
                   if n in self._state_buffers())

    def _state_buffers(self) -> List[str]:
        return ["qweight"]

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "digit": self.digit, "sparse": self.sparse,
                "init_scale": self.init_scale}

    # ------------------------------------------------------------------ budgets
    @classmethod
    def knob_range(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """Knob values are bytes per stored value: 1 (``digit`` 8) or 2 (``digit`` 16)."""
        return 1, 2

    @classmethod
    def budget_build(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> "LowPrecisionTable":
        """The table at ``digit = 8 * value``."""
        return cls(list(features), digit=8 * int(value), **kwargs)

    @classmethod
    def knob_bytes(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> int:
        """Closed-form :meth:`inference_bytes` at ``value`` bytes per stored value."""
        raise NotImplementedError

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        """:meth:`knob_bytes` as ``value -> bytes`` (budgets bound :meth:`inference_bytes`)."""
        return lambda v: cls.knob_bytes(features, v, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, digit={self.digit}"


@register("int8")
class Int8Table(LowPrecisionTable):
    """INT8/INT16 low-precision training (VLDB'24 benchmark; one global symmetric scale).

    Args:
        features: the features (one shared ``embedding_dim``).
        digit: 8 or 16 bits per stored value. Registered as ``int8`` (default 8) and ``int16``
            (:class:`Int16Table`, default 16); the benchmark's default is 16.
        scale: the fixed step size of every code (``value = q * scale``, zero point 0); default
            0.01 from the benchmark's ``run_compressed.py`` (``scale 0.01, middle 0``). The range
            is ``±2**(digit-1) * scale`` (±1.28 for int8 at 0.01).
        sparse: sparse row gradients on the working copy (for sparse/row-wise optimizers).
        init_scale: rows start uniform ``±init_scale`` then stochastically rounded (the project's
            init, ``docs/architecture.md`` §3; the reference uses Xavier-normal, which at these
            vocabularies puts nearly every value within one step of 0).

    Buffers: ``qweight`` ``int8/int16 [R, D]`` (what inference needs, ``R`` = all fields' rows).
    Parameter: ``weight`` ``[R, D]`` fp32, training-only (:meth:`training_only_bytes`). The scale
    is a constant of the config (the reference's too), not a tensor: ``inference_bytes = R * D *
    digit / 8`` exactly, so int16 is 2x and int8 4x. Budget: the bit width (:meth:`for_budget`).

    Trainer contract: call :meth:`post_step` after every optimizer step. Speed: a step costs one
    extra full-table compare (``weight != q * scale``) plus rounding of the changed rows.

    Shapes: dense ids ``[B, F]`` -> ``[B, F, D]``; a KJT -> ``KeyedTensor`` ``[B, F * D]``.

    Example::

        >>> from slimembed.tables import Feature
        >>> from slimembed.tables.int8 import Int8Table
        >>> t = Int8Table([Feature("a", 10, 4)], digit=8, scale=0.01)
        >>> bool((t(torch.tensor([[1]]))[0, 0] == t.qweight[1].float() * 0.01).all())
        True
    """

    method = "int8"
    default_digit: ClassVar[int] = 8
    budget_knob: ClassVar[Optional[str]] = "digit"
    solved_knobs: ClassVar[Tuple[str, ...]] = ("digit",)
    search_space: ClassVar[Dict[str, Any]] = {"scale": [0.001, 0.01]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    quantizable: ClassVar[bool] = False  # already integer storage; tables.quantized cannot export it
    supports_sparse: ClassVar[bool] = True
    not_shardable_reason: ClassVar[Optional[str]] = (
        "integer codes are a buffer updated by post_step, not a torchrec-shardable fp weight")

    def __init__(self, features: Sequence[Feature], digit: Optional[int] = None, scale: float = DEFAULT_SCALE,
                 sparse: bool = False, init_scale: float = DEFAULT_INIT_SCALE) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        super().__init__(features, self.default_digit if digit is None else digit, sparse, init_scale)
        self.reset_parameters()

    def row_scale(self, idx: Optional[Tensor] = None) -> float:
        return self.scale

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "scale": self.scale}

    @classmethod
    def knob_bytes(cls, features: Sequence[Feature], value: int, **kwargs: Any) -> int:
        return sum(int(f.num_embeddings) * int(f.embedding_dim) for f in features) * int(value)


@register("int16")
class Int16Table(Int8Table):
    """:class:`Int8Table` with ``digit`` 16 by default (the benchmark's INT16 row)."""

    method = "int16"
    default_digit: ClassVar[int] = 16
