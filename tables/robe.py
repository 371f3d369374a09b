"""ROBE: Random Offset Block Embedding (Desai, Chou, Shrivastava, MLSys 2022, arXiv 2108.02191).

All features share one learnable 1-D array ``A`` of ``m`` floats. The embedding of id ``x`` of
feature ``f`` is ``D / Z`` blocks of ``Z`` contiguous values each, ``Z`` the **block size** as in
the paper ("ROBE-Z") and Hetu's benchmark::

    e(x)[k*Z + i] = s_{f,k}(x) * A[(h_{f,k}(x) + i) mod m],    k in [0, D/Z), i in [0, Z)

with ``h_{f,k}`` a universal hash into ``[0, m)`` (salted by feature name, one per block) and
``s_{f,k}`` a ±1 sign hash. Blocks wrap around the end of the array. The knob is ``block_size``
(``Z``, must divide ``D``), or alternatively ``num_blocks`` (``D / Z``). The default is ``Z = D``:
one block per embedding, every embedding one contiguous (signed) window of the array. ``Z = 1``
hashes every value on its own (HashedNet-like). Memory is ``m`` floats whatever the vocabulary:
the table is vocabulary-free (any non-negative int64 id).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable
from .feature import Feature
from .gather import common_dim
from .hashing import HashFamily
from .dropin import EmbeddingBag
from .registry import register


class _ArrayGather(torch.autograd.Function):
    """``array[pos]`` for a 1-D array; the gradient is one accumulating ``index_put_``."""

    @staticmethod
    def forward(ctx, array: Tensor, pos: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pos)
        ctx.size = array.shape[0]
        return array.index_select(0, pos.reshape(-1)).view(pos.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        (pos,) = ctx.saved_tensors
        g = grad.new_zeros(ctx.size)
        g.index_add_(0, pos.reshape(-1), grad.contiguous().reshape(-1))  # 1-D: a serial, deterministic loop
        return g, None


@register("robe")
class RobeTable(EmbeddingTable):
    """One shared array of ``size`` floats; each embedding is ``D / Z`` hashed, signed, wrapping
    blocks of ``Z = block_size`` contiguous values.

    Args:
        features: the features (one ``embedding_dim`` ``D``; any non-negative int64 ids).
        size: ``m``, the array's length in floats. Default: ``min(sum_f N_f * D, 2**24)``.
        num_blocks: blocks per embedding, ``D / Z`` (must divide ``D``); the alternative to
            ``block_size``. Default 1.
        block_size: ``Z``, the paper's knob: contiguous values per block (must divide ``D``);
            default ``D`` (one block). Give this or ``num_blocks``; both must agree
            (``num_blocks * block_size == D``).
        signed: multiply each block by a ±1 sign hash (default True, as in the paper).
        seed: the hash family's seed.
        init_scale: uniform ``±init_scale`` (docs/architecture.md §3: 0.05).

    Memory: ``4 m`` bytes + hash coefficients (``32 F D / Z`` bytes with signs).

    Shapes: dense ``[B, F]`` -> ``[B, F, D]``; KJT -> ``KeyedTensor [B, F * D]``.

    Example::

        >>> t = RobeTable([Feature("C1", 2**63, 16), Feature("C2", 10**6, 16)], size=10_000)
        >>> t(torch.tensor([[2**50, 7]])).shape
        torch.Size([1, 2, 16])
        >>> RobeTable([Feature("C1", 100, 16)], size=64, block_size=4).num_blocks   # ROBE-4
        4
    """

    method = "robe"
    needs_range = False
    DEFAULT_MAX_SIZE = 2**24
    budget_knob = "size"
    solved_knobs = ("size",)
    search_space = {"num_blocks": [1, 2, 4]}  # D / Z: Z = D, D/2, D/4 whatever D
    quantizable = True
    not_shardable_reason = "embeddings are windows of one shared 1-D array at hashed offsets; there are no rows to place"

    def __init__(
        self,
        features: Sequence[Feature],
        size: Optional[int] = None,
        num_blocks: Optional[int] = None,
        block_size: Optional[int] = None,
        signed: bool = True,
        seed: int = 0,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, "RobeTable")
        if block_size is not None and (int(block_size) < 1 or dim % int(block_size)):
            raise ValueError(f"RobeTable: block_size (the paper's Z, values per block) must divide "
                             f"embedding_dim {dim}, got {block_size}")
        if num_blocks is not None and (int(num_blocks) < 1 or dim % int(num_blocks)):
            raise ValueError(f"RobeTable: num_blocks must divide embedding_dim {dim}, got {num_blocks}")
        if num_blocks is not None and block_size is not None and int(num_blocks) * int(block_size) != dim:
            raise ValueError(f"RobeTable: num_blocks={num_blocks} and block_size={block_size} disagree: "
                             f"their product must be embedding_dim {dim}; give one of them")
        if num_blocks is None:
            num_blocks = 1 if block_size is None else dim // int(block_size)
        if size is None:
            size = min(sum(min(int(f.num_embeddings), 2**40) for f in self.features) * dim,
                       self.DEFAULT_MAX_SIZE)
        size = int(size)
        if size < 1:
            raise ValueError(f"RobeTable: size must be >= 1, got {size}")
        self.size = size
        self.num_blocks = int(num_blocks)
        self.block_size = dim // self.num_blocks
        self.signed = bool(signed)
        self.seed = int(seed)
        self.init_scale = float(init_scale)
        self.hashes = HashFamily(self.num_blocks, seed=self.seed, salts=self.feature_names,
                                 with_sign=self.signed)
        self.register_buffer("arange_block", torch.arange(self.block_size), persistent=False)
        self.weight = nn.Parameter(torch.empty(size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "size": self.size, "block_size": self.block_size,
                "signed": self.signed, "seed": self.seed, "init_scale": self.init_scale}

    # ------------------------------------------------------------------ lookup
    def _coef(self, coef: Tensor, ids: Tensor, fields: Optional[Tensor]):
        """``(a, b)`` broadcastable to ``ids[..., num_blocks]``."""
        c = coef if fields is None else coef[fields]  # [F, num_blocks, 2] or [..., num_blocks, 2]
        return c[..., 0], c[..., 1]

    def positions(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        """``LongTensor[..., D]``: the array index of each value of each id's embedding."""
        from .hashing import universal_hash

        a, b = self._coef(self.hashes.coef, ids, fields)
        start = universal_hash(ids.unsqueeze(-1), a, b, self.size)  # [..., num_blocks]
        if self.size < 2**31:
            start = start.to(torch.int32)  # halves the traffic of the [..., D] index math
        pos = start.unsqueeze(-1) + self.arange_block.to(start.dtype)  # [..., num_blocks, Z]
        if self.block_size > 1 and pos.device.type != "cpu":
            # accelerators: one elementwise pass (nonzero() below would sync the device per batch)
            pos = torch.remainder(pos, self.size)
        elif self.block_size > 1:
            # only blocks that start in the last b-1 slots wrap: fix that (rare) subset in place
            wrap = (start > self.size - self.block_size).reshape(-1).nonzero().squeeze(1)
            if wrap.numel():
                flat = pos.view(-1, self.block_size)
                flat[wrap] = torch.remainder(flat[wrap], self.size)
        return pos.flatten(-2)

    def signs(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        """``FloatTensor[..., num_blocks]`` of ±1."""
        from .hashing import _to_sign, universal_hash

        a, b = self._coef(self.hashes.sign_coef, ids, fields)
        return _to_sign(universal_hash(ids.unsqueeze(-1), a, b, None), torch.float32)

    def _rows(self, ids: Tensor, fields: Optional[Tensor], read=None) -> Tensor:
        """Embeddings ``[..., D]``; ``read(pos) -> values`` replaces the array read (quantized export)."""
        pos = self.positions(ids, fields)  # [..., D]
        if read is None:
            vals = _ArrayGather.apply(self.weight, pos)  # [..., D]
        else:
            vals = read(pos)
        if self.signed:
            s = self.signs(ids, fields).to(vals.dtype)  # [..., num_blocks]
            if self.num_blocks == 1:
                vals = vals * s
            else:
                vals = (vals.unflatten(-1, (self.num_blocks, self.block_size)) * s.unsqueeze(-1)).flatten(-2)
        return vals

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._rows(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        return self._rows(ids, None)

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """The array's length ``size`` in floats. Granularity: one float, 4 bytes."""
        dim = common_dim(features, cls.__name__)
        full = sum(min(int(f.num_embeddings), 2**40) for f in features) * dim
        return 1, max(1, min(full, budget_bytes // 4))


class RobeEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by :class:`RobeTable` (one feature, ``size`` floats).

    Args: ``nn.EmbeddingBag``'s, in its order (``num_embeddings`` may be the id space;
    ``max_norm``, ``scale_grad_by_freq``, ``_weight`` raise ``NotImplementedError``), plus
    keyword-only ``size`` (default
    ``min(num_embeddings * embedding_dim, 2**24)``), ``block_size`` (the paper's ``Z``, default
    ``embedding_dim``) or ``num_blocks`` (``embedding_dim / Z``), ``signed`` (True), ``seed``.
    ``forward(input, offsets=None, per_sample_weights=None) -> [B, embedding_dim]``.
    """

    fixed_method = "robe"
