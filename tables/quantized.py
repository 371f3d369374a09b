"""Post-training quantized export of gather-based tables (docs/architecture.md §3 "quantized").

:func:`export` turns a trained ``full``, ``hash``, ``double_hash``, ``qr``, ``compositional`` or
``robe`` table (or its ``nn.EmbeddingBag`` drop-in) into an inference module that stores the
rows in 8 bits with a per-row fp32 scale and bias (``dtype="int8"``), or in fp16
(``dtype="fp16"``), and dequantizes only the rows a lookup reads. The exported module is an
:class:`~slimembed.tables.EmbeddingTable`, so models and :func:`memory_report` take it as is; its
memory is the 8-bit codes plus the scales and biases (and the source's index buffers: hash seeds,
id maps).

Int8 scheme (row-wise asymmetric, as FBGEMM's fused 8-bit rows): for row ``r``,
``bias_r = min(r)``, ``scale_r = (max(r) - min(r)) / 255``, codes ``q = round((r - bias_r) /
scale_r)`` stored as ``uint8`` in ``[0, 255]``; a value reads back as ``q * scale_r + bias_r``,
within ``scale_r / 2`` of the float. ROBE's 1-D array is quantized in chunks of
``ROBE_CHUNK = 64`` consecutive floats, each chunk a "row".

Example::

    >>> from slimembed.tables import Feature, export, make_table, memory_report
    >>> features = [Feature("C1", 10**5, 16), Feature("C2", 1000, 16)]
    >>> q = export(make_table("hash", features, compression=10), dtype="int8")
    >>> memory_report(q).buffer_bytes     # uint8 rows + 8 bytes per row + hash seeds
    242450
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from .base import EmbeddingTable, TableEmbeddingBag
from .gather import GatherTable
from .registry import register

DTYPES = ("int8", "fp16")
ROBE_CHUNK = 64


def quantize_rows(weight: Tensor, dtype: str = "int8") -> Dict[str, Tensor]:
    """``weight [R, w]`` -> ``{"qweight", "scale", "bias"}`` (int8) or ``{"qweight"}`` (fp16)."""
    w = weight.detach().float()
    if dtype == "fp16":
        return {"qweight": w.to(torch.float16)}
    if dtype != "int8":
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if w.shape[0] == 0:
        return {"qweight": torch.zeros(w.shape, dtype=torch.uint8),
                "scale": torch.zeros(0), "bias": torch.zeros(0)}
    lo = w.min(1).values
    hi = w.max(1).values
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((w - lo.unsqueeze(1)) / scale.unsqueeze(1)).clamp_(0, 255).to(torch.uint8)
    return {"qweight": q, "scale": scale, "bias": lo}


@register("quantized")
class QuantizedTable(EmbeddingTable):
    """An exported, inference-only gather table with 8-bit (or fp16) rows.

    Args:
        source: a trained gather-based table (``FullTable``, any :class:`GatherTable` subclass:
            hash, double_hash, qr, compositional; or ``RobeTable``).
        dtype: ``"int8"`` (row-wise uint8 codes + fp32 scale and bias, the default) or ``"fp16"``.

    Buffers: ``qweight [R, w]`` (uint8 / fp16), ``scale [R]``, ``bias [R]`` (int8 only), and the
    source's index buffers under ``inner.``. No parameters (not trainable).

    Shapes: as the source: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor``.
    """

    method = "quantized"
    trainable = False
    not_shardable_reason = "int8/fp16 rows are an inference export, not a trainable table"

    def __init__(self, source: EmbeddingTable, dtype: str = "int8") -> None:
        super().__init__(source.features)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype_name = dtype
        self.needs_range = source.needs_range  # type: ignore[misc]
        self.validate_ids = source.validate_ids
        self.source_method = source.method
        self.kind = self._kind(source)
        weight = source.weight.detach()
        # a deep copy of the source's index machinery (hash seeds, offsets, id maps), without
        # copying its float weight: the memo hands the copy a placeholder that is then dropped
        memo = {id(source.weight): nn.Parameter(torch.empty(0), requires_grad=False)}
        inner = copy.deepcopy(source, memo)
        del inner.weight
        inner.requires_grad_(False)
        self.inner = inner
        self._output_dims = list(source.output_dims)
        if self.kind == "robe":
            m = weight.numel()
            pad = (-m) % ROBE_CHUNK
            w2 = torch.cat([weight.reshape(-1), weight.new_zeros(pad)]).view(-1, ROBE_CHUNK)
            self.array_size = m
        else:
            w2 = weight
        for name, t in quantize_rows(w2, dtype).items():
            self.register_buffer(name, t.to(weight.device))
        # the base class built _id_limits on the CPU: follow the source's device (a CUDA table's
        # export would otherwise compare CUDA ids with CPU limits in check_ids)
        self.to(weight.device)

    @staticmethod
    def _kind(source: EmbeddingTable) -> str:
        """How the source stores rows: ``gather`` (a fused 2-D weight), ``robe`` (one 1-D array)
        or ``full`` (a full table kept outside the gather engine, e.g. on a torchrec EBC)."""
        from .robe import RobeTable

        w = getattr(source, "weight", None)
        full_like = (getattr(source, "method", None) == "full" and isinstance(w, Tensor) and w.dim() == 2
                     and hasattr(source, "row_offsets"))
        if not (getattr(source, "quantizable", False) or full_like):
            raise TypeError(
                f"export supports gather-based tables (full, hash, double_hash, qr, compositional, "
                f"robe), got {type(source).__name__} (method {getattr(source, 'method', None)!r})"
            )
        if isinstance(source, GatherTable):
            return "gather"
        return "robe" if isinstance(source, RobeTable) else "full"

    @property
    def output_dims(self):
        return list(self._output_dims)

    def config(self) -> Dict[str, Any]:
        return {"method": self.method, "dtype": self.dtype_name, "source": self.inner.config()}

    @classmethod
    def from_config(cls, cfg: Dict[str, Any], features: Optional[Any] = None) -> "QuantizedTable":
        """Rebuild from :meth:`config` (the source's config and ``dtype``); load a
        ``state_dict`` for the codes. The source is built fresh (random rows) and quantized."""
        from .registry import make_table_from_config

        cfg = dict(cfg)
        source = make_table_from_config(cfg.pop("source"), features)
        return cls(source, **cfg)

    # ------------------------------------------------------------------ dequantization
    def dequant_rows(self, idx: Tensor) -> Tensor:
        """Rows ``idx [...]`` of the stored table, dequantized: ``FloatTensor[..., w]``."""
        flat = idx.reshape(-1)
        q = self.qweight.index_select(0, flat).float()
        if self.dtype_name == "int8":
            q = q * self.scale.index_select(0, flat).unsqueeze(1) + self.bias.index_select(0, flat).unsqueeze(1)
        return q.view(*idx.shape, q.shape[-1])

    def dequant_elems(self, pos: Tensor) -> Tensor:
        """Elements ``pos [...]`` of ROBE's array, dequantized: ``FloatTensor[...]``."""
        flat = pos.reshape(-1).long()
        v = self.qweight.view(-1).index_select(0, flat).float()
        if self.dtype_name == "int8":
            chunk = flat // ROBE_CHUNK
            v = v * self.scale.index_select(0, chunk) + self.bias.index_select(0, chunk)
        return v.view(pos.shape)

    def dequantized_weight(self) -> Tensor:
        """The whole table read back in fp32 (shape of the source's weight)."""
        idx = torch.arange(self.qweight.shape[0], device=self.qweight.device)
        w = self.dequant_rows(idx)
        if self.kind == "robe":
            return w.reshape(-1)[: self.array_size]
        return w

    # ------------------------------------------------------------------ lookups
    def _rows(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        inner = self.inner
        if self.kind == "gather":
            idx, coef = inner.gather_index(ids, fields)
            return inner.combine(self.dequant_rows(idx), coef, fields)
        if self.kind == "robe":
            return inner._rows(ids, fields, read=self.dequant_elems)
        off = inner.row_offsets if fields is None else inner.row_offsets[fields]
        return self.dequant_rows(ids + off)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._rows(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        return self._rows(ids, None)

    def extra_repr(self) -> str:
        return f"source={self.source_method!r}, dtype={self.dtype_name!r}, features={self.num_features}"


def export(table: Union[EmbeddingTable, TableEmbeddingBag], dtype: str = "int8"
           ) -> Union[QuantizedTable, TableEmbeddingBag]:
    """Quantize a trained gather-based table (or its ``nn.EmbeddingBag`` drop-in) for inference.

    Args:
        table: ``full``/``hash``/``double_hash``/``qr``/``compositional``/``robe`` table, or a
            :class:`TableEmbeddingBag` over one (then a drop-in over the quantized table returns).
        dtype: ``"int8"`` (uint8 codes + per-row fp32 scale/bias) or ``"fp16"``.
    Returns:
        :class:`QuantizedTable` (or a :class:`TableEmbeddingBag` over it), in eval mode.
    """
    if isinstance(table, TableEmbeddingBag):
        q = QuantizedTable(table.table, dtype)
        bag = TableEmbeddingBag(q, mode=table.mode, include_last_offset=table.include_last_offset,
                                padding_idx=table.padding_idx)
        return bag.eval()
    if not isinstance(table, EmbeddingTable):
        raise TypeError(f"export takes an EmbeddingTable or TableEmbeddingBag, got {type(table).__name__}")
    return QuantizedTable(table, dtype).eval()
