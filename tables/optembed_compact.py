"""OptEmbed's exported inference table (docs/architecture.md §3): kept rows only, each field at its
own dim, with a keep bitmap + rank index for the id space (1.5 bits per original row). Split from
:mod:`slimembed.tables.optembed`, which re-exports these names.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import EmbeddingTable
from .feature import Feature
from .gather import common_dim
from .optembed import OPTEMBED_NOT_SWEPT, OptEmbedTable
from .registry import register


# ---------------------------------------------------------------------------------------------
# the compact inference table
# ---------------------------------------------------------------------------------------------
@register("optembed-compact")
class CompactOptEmbedTable(EmbeddingTable):
    """The exported OptEmbed table: kept rows only, each field at its own dim.

    Storage is one flat fp32 array ``values`` holding, field after field, the first ``k_f``
    values of each kept row of field ``f`` (``sum_f kept_f * k_f`` floats, plus one trailing zero
    that pruned ids and padding read). A field with pruned rows has a keep bitmap (1 bit per id,
    ``uint8`` buffer ``bitmap``, each field padded to whole 64-bit words) and a rank index
    (``int32`` buffer ``rank``: kept rows of the field before each 64-bit word). The compact row
    of a kept id is ``rank[w] + popcount(bits below the id in word w)``; a pruned id reads the
    trailing zero. Fields without pruned rows need neither (identity). A lookup is one vectorized
    gather for all fields (no per-field loop, no per-id Python).

    Args:
        features: the features (``embedding_dim`` = ``D``, the padded output dim).
        dims: ``k_f`` per feature, in ``1..D``.
        kept_rows: rows kept per feature, in ``0..N_f``; a field with ``kept_f < N_f`` has a bitmap.
        pad: output ``D`` for every feature, zero-padded (OptEmbed's semantics; what FM, DeepFM,
            IPNN and torchrec models need). ``pad=False`` gives per-feature dims ``k_f``: dense ids
            ``[B, F]`` -> ``[B, sum_f k_f]`` (fields concatenated), a KJT -> a ``KeyedTensor`` with
            ``length_per_key = dims``.

    Built empty from its config (``make_table_from_config(t.config())``), then filled by
    ``load_state_dict`` (a state dict of the older ``int32`` ``remap`` format is converted);
    :func:`export_optembed` builds and fills one from a trained table.

    Memory (:func:`~slimembed.tables.memory_report`, see :func:`compact_bytes`)::

        4 * (sum_f kept_f * k_f + 1)                       values (a parameter: can be fine-tuned)
        + sum_{f pruned} 12 * ceil(N_f / 64)               bitmap (8 B) + rank (4 B) per 64 ids
        + 32 * F + 8 * D                                   per-field int64 buffers, arange

    i.e. 1.5 bits per original row of a pruned field for the id space (not 32 as an int32 remap).

    Example::

        >>> import torch
        >>> from slimembed.tables import Feature, OptEmbedTable, export_optembed
        >>> t = OptEmbedTable([Feature("C1", 100, 4)], variant="optembed-e")
        >>> _ = t.freeze_rows(torch.arange(100) % 3 == 0)    # keep ids 0, 3, 6, ...
        >>> c = export_optembed(t)
        >>> c.kept, c.bitmap.shape, c.rank.tolist()           # 2 words of 64 ids
        ([34], torch.Size([16]), [0, 22])
        >>> c.compact_rows(torch.tensor([0, 3, 4, 66, 99]), torch.tensor([0, 0, 0, 0, 0])).tolist()
        [0, 1, -1, 22, 33]
    """

    method = "optembed-compact"
    trainable = False
    budget_refusal = ("method 'optembed-compact' is built by export_optembed from a trained OptEmbed table; "
                      "bound its bytes with the OptEmbed search's budget_bytes")
    not_swept_reason = OPTEMBED_NOT_SWEPT
    not_shardable_reason = OptEmbedTable.not_shardable_reason

    def __init__(
        self,
        features: Sequence[Feature],
        dims: Sequence[int],
        kept_rows: Sequence[int],
        pad: bool = True,
    ) -> None:
        super().__init__(features)
        self.dim = common_dim(self.features, "CompactOptEmbedTable")
        n = len(self.features)
        dims = [int(d) for d in dims]
        kept = [int(k) for k in kept_rows]
        rows = [int(f.num_embeddings) for f in self.features]
        if len(dims) != n or not all(1 <= d <= self.dim for d in dims):
            raise ValueError(f"dims must be {n} ints in [1, {self.dim}], got {dims}")
        if len(kept) != n or not all(0 <= k <= r for k, r in zip(kept, rows)):
            raise ValueError(f"kept_rows must be {n} ints in [0, num_embeddings], got {kept}")
        self.dims = dims
        self.kept = kept
        self.pad = bool(pad)
        self.rows = rows
        value_offset, word_offset = [], []
        v = w = 0
        for k, d, nrow in zip(kept, dims, rows):
            value_offset.append(v)
            v += k * d
            if k < nrow:
                word_offset.append(w)
                w += -(-nrow // 64)  # whole 64-bit words per field: a word never spans two fields
            else:
                word_offset.append(-1)
        self.values = nn.Parameter(torch.zeros(v + 1))  # + the trailing zero
        # keep bitmap (bit j of byte b of word w = id 64 w + 8 b + j) and kept rows before each word
        self.register_buffer("bitmap", torch.zeros(8 * w, dtype=torch.uint8))
        self.register_buffer("rank", torch.zeros(w, dtype=torch.int32))
        self.register_buffer("value_offset", torch.tensor(value_offset, dtype=torch.long), persistent=False)
        self.register_buffer("word_offset", torch.tensor(word_offset, dtype=torch.long), persistent=False)
        self.register_buffer("dims_t", torch.tensor(dims, dtype=torch.long), persistent=False)
        out_d = self.dim if self.pad else max(dims)
        self.register_buffer("_arange_d", torch.arange(out_d), persistent=False)
        if not self.pad:
            # columns of the concatenated output: (field, j) for j < k_f, field-major
            col_field = torch.repeat_interleave(torch.arange(n), torch.tensor(dims))
            col_j = torch.cat([torch.arange(d) for d in dims])
            self.register_buffer("_col_index", col_field * out_d + col_j, persistent=False)

    @property
    def output_dims(self) -> List[int]:
        return [self.dim] * self.num_features if self.pad else list(self.dims)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "dims": list(self.dims), "kept_rows": list(self.kept), "pad": self.pad}

    @property
    def sentinel(self) -> int:
        return self.values.numel() - 1

    def compact_rows(self, ids: Tensor, fields: Optional[Tensor] = None) -> Tensor:
        """Row of each id among its field's kept rows (``-1`` = pruned), same shape as ``ids``.

        ``ids`` are ``[..., F]`` per-field ids when ``fields`` is None, else any shape with
        ``fields`` of the same shape. Rank = ``rank[w]`` + popcount of the id's word below the id.
        """
        per = (lambda b: b) if fields is None else (lambda b: b[fields])
        wo = per(self.word_offset)
        if not self.bitmap.numel():
            return ids
        has = wo >= 0
        w = torch.where(has, wo + torch.div(ids, 64, rounding_mode="floor"), torch.zeros_like(ids))
        word = self.bitmap.view(-1, 8)[w].to(torch.int32)  # [..., 8] bytes of the id's word
        bit = torch.remainder(ids, 64)
        byte_i = torch.div(bit, 8, rounding_mode="floor").unsqueeze(-1)
        shift = torch.remainder(bit, 8).unsqueeze(-1)
        j = torch.arange(8, device=ids.device)
        # whole bytes below the id's byte, and the id's byte masked to the bits below the id
        below = torch.where(j < byte_i, word,
                            torch.where(j == byte_i, word & ((1 << shift) - 1), torch.zeros_like(word)))
        rank = self.rank[w].long() + _popcount8(below).sum(-1)
        kept = (word.gather(-1, byte_i).squeeze(-1) >> shift.squeeze(-1)) & 1
        return torch.where(has, torch.where(kept.bool(), rank, torch.full_like(rank, -1)), ids)

    def _positions(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        """Flat ``values`` positions ``[..., D']`` of each id's (padded) row."""
        per = (lambda b: b) if fields is None else (lambda b: b[fields])
        row = self.compact_rows(ids, fields)
        d = per(self.dims_t)
        start = per(self.value_offset) + row.clamp(min=0) * d
        pos = start.unsqueeze(-1) + self._arange_d
        valid = (row >= 0).unsqueeze(-1) & (self._arange_d < d.unsqueeze(-1))
        return torch.where(valid, pos, torch.full_like(pos, self.sentinel))

    def _rows(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        return self.values[self._positions(ids, fields)]

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._rows(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        out = self._rows(ids, None)  # [B, F, D']
        if self.pad:
            return out
        return out.flatten(1).index_select(1, self._col_index)

    def bags_to_keyed(self, pooled: Tensor, batch_size: int) -> Tensor:
        out = super().bags_to_keyed(pooled, batch_size)
        return out if self.pad else out.index_select(1, self._col_index)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a state dict of the older format (one int32 ``remap``, -1 = pruned, pruned fields
        # concatenated): rebuild the bitmap + rank from it
        key = prefix + "remap"
        if key in state_dict and prefix + "bitmap" not in state_dict:
            remap = state_dict.pop(key)
            pruned = [n for n, k in zip(self.rows, self.kept) if k < n]
            if remap.numel() != sum(pruned):
                raise ValueError(f"state_dict '{key}' has {remap.numel()} entries, "
                                 f"the pruned fields {sum(pruned)} rows")
            bitmap, rank = pack_row_masks(list(torch.split(remap >= 0, pruned)))
            state_dict[prefix + "bitmap"], state_dict[prefix + "rank"] = bitmap, rank
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def masked_rows(self, feature: str) -> Tensor:
        """``[N_f, D]`` rows of one feature as the model sees them (zeros for pruned ids)."""
        i = self.feature_names.index(feature)
        ids = torch.arange(self.rows[i], device=self.values.device)
        fields = torch.full_like(ids, i)
        return self._rows(ids, fields)

    def extra_repr(self) -> str:
        return (f"features={self.num_features}, D={self.dim}, kept_rows={sum(self.kept)}/{sum(self.rows)}, "
                f"dims={self.dims}, pad={self.pad}")


def _popcount8(x: Tensor) -> Tensor:
    """Set bits of each value of an integer tensor holding bytes (``0..255``), elementwise."""
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F


@torch.no_grad()
def pack_row_masks(masks: Sequence[Tensor]) -> "tuple[Tensor, Tensor]":
    """Keep bitmap and rank index of :class:`CompactOptEmbedTable` for the pruned fields' masks.

    Args:
        masks: one ``BoolTensor[N_f]`` per pruned field (True = kept), in field order.

    Returns:
        ``bitmap`` ``uint8[8 * W]`` (each field padded to whole 64-bit words; bit ``j`` of byte
        ``b`` of word ``w`` is id ``64 w + 8 b + j``) and ``rank`` ``int32[W]`` (kept ids of the
        field before each word), ``W = sum_f ceil(N_f / 64)``.

    Example::

        >>> b, r = pack_row_masks([torch.tensor([True, False, True] + [False] * 62 + [True])])
        >>> b.tolist(), r.tolist()
        ([5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], [0, 2])
    """
    words = []
    for m in masks:
        n = m.numel()
        bits = torch.zeros(-(-n // 64) * 64, dtype=torch.int64, device=m.device)
        bits[:n] = m.reshape(-1).to(torch.int64)
        words.append(bits.view(-1, 64))
    if not words:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int32)
    starts = [0]
    for wd in words:
        starts.append(starts[-1] + wd.shape[0])
    bits = torch.cat(words)  # [W, 64]
    bitmap = (bits.view(-1, 8) << torch.arange(8, device=bits.device)).sum(1).to(torch.uint8)
    count = bits.sum(1)
    # exclusive prefix of kept ids per word, restarted at each field
    cum = torch.cumsum(count, 0) - count
    field_start = torch.repeat_interleave(cum[torch.tensor(starts[:-1], device=bits.device)],
                                          torch.tensor([wd.shape[0] for wd in words], device=bits.device))
    return bitmap, (cum - field_start).to(torch.int32)


@torch.no_grad()
def compact_from_table(table: OptEmbedTable, pad: bool = True) -> CompactOptEmbedTable:
    """The :class:`CompactOptEmbedTable` that computes what ``table`` computes in evaluation.

    Uses the row mask in force (frozen, else the thresholds') and the fixed dims (else ``D``).
    """
    keep = table.current_row_mask().to(table.weight.device)
    dims = table.current_dims()
    keeps = torch.split(keep, table.rows)
    kept = [int(k.sum()) for k in keeps]
    out = CompactOptEmbedTable(table.features, dims, kept, pad=pad).to(table.weight.device)
    w = table.weight.detach()
    chunks = []
    for i, (k, d, off) in enumerate(zip(keeps, dims, table.row_offsets.tolist())):
        rows = w[off: off + table.rows[i]][k, :d]
        chunks.append(rows.reshape(-1))
    chunks.append(w.new_zeros(1))
    out.values.copy_(torch.cat(chunks).to(out.values.dtype))
    bitmap, rank = pack_row_masks([k for k, n, r in zip(keeps, kept, table.rows) if n < r])
    out.bitmap.copy_(bitmap)
    out.rank.copy_(rank)
    out.validate_ids = table.validate_ids
    return out


def export_optembed(obj: nn.Module, pad: bool = True) -> nn.Module:
    """Export OptEmbed for inference.

    Args:
        obj: an :class:`OptEmbedTable` (gives its :class:`CompactOptEmbedTable`) or any model
            holding OptEmbed tables (gives a deep copy in which each one is replaced by its
            compact table; the other modules, e.g. a first-order ``full`` table, are copied as
            they are).
        pad: zero-pad every field to ``D`` (default; needed by models over ``[B, F, D]``).

    Returns:
        the compact table, or the exported model (in eval mode).

    The compact table computes exactly what the masked table computes in evaluation (same
    floats: kept values are copied, everything else is zero), so an exported model gives the
    same logits as the masked model.
    """
    if isinstance(obj, OptEmbedTable):
        return compact_from_table(obj, pad=pad)
    model = copy.deepcopy(obj)
    found = [False]

    def visit(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, OptEmbedTable):
                setattr(module, name, compact_from_table(child, pad=pad))
                found[0] = True
            else:
                visit(child)

    visit(model)
    if not found[0]:
        raise ValueError(f"{type(obj).__name__} holds no OptEmbedTable to export")
    return model.eval()


def compact_bytes(features: Sequence[Feature], dims: Sequence[int], kept_rows: Sequence[int]) -> int:
    """Closed-form ``memory_report(CompactOptEmbedTable(features, dims, kept_rows)).total_bytes``
    (pad=True): values + trailing zero, bitmap + rank of pruned fields (12 bytes per 64 ids),
    per-field int64 buffers."""
    n = len(features)
    values = sum(int(k) * int(d) for k, d in zip(kept_rows, dims)) + 1
    words = sum(-(-int(f.num_embeddings) // 64) for f, k in zip(features, kept_rows)
                if int(k) < int(f.num_embeddings))
    d = int(features[0].embedding_dim)
    # base _id_limits + value_offset + word_offset + dims_t: four int64 per feature; _arange_d
    return 4 * values + 12 * words + 8 * 4 * n + 8 * d
