"""Differentiable Product Quantization (DPQ) and Multi-Granular Quantized Embeddings (MGQE).

:class:`DPQTable` (``make_table("dpq", ...)``) trains per-id query embeddings that pick, per
subspace, one of ``K`` codebook entries; inference stores only the codes and the codebooks, as
:class:`DPQCodesTable` (``table.export()``). :class:`MGQETable` (``make_table("mgqe", ...)``)
restricts rare ids to the first 64 of 256 entries. See ``docs/architecture.md §3``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, EmbeddingTable, device_constant
from .feature import Feature
from .adaptive import FreqSource, hot_id_lists
from .gather import RowsSpec, common_dim
from .inference_budget import InferenceBudget
from .registry import register


def part_columns(dim: int, parts: int) -> Tuple[List[int], List[int]]:
    """Split ``dim`` columns into ``parts`` contiguous subspaces as evenly as possible.

    Returns ``(col_map, part_of_col)``: ``col_map`` is ``[parts * w]`` (``w = ceil(dim / parts)``)
    column indices with ``dim`` marking padding (a zero column); ``part_of_col`` is ``[dim]``.
    """
    w = -(-dim // parts)
    bounds = [p * dim // parts for p in range(parts + 1)]
    col_map: List[int] = []
    part_of_col: List[int] = []
    for p in range(parts):
        cols = list(range(bounds[p], bounds[p + 1]))
        col_map += cols + [dim] * (w - len(cols))
        part_of_col += [p] * len(cols)
    return col_map, part_of_col


class _StraightThrough(torch.autograd.Function):
    """Value ``c`` (the quantized rows); gradient ``g`` to the query ``q`` (straight through) and
    ``beta * d/dc mean((c - sg(q))^2)`` to ``c``: the same gradients as DPQ-VQ's
    ``loss + beta * reg`` without the trainer having to add ``reg`` (docs/architecture.md §3)."""

    @staticmethod
    def forward(ctx, q: Tensor, c: Tensor, beta: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, c)
        ctx.beta = beta
        return c.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        q, c = ctx.saved_tensors
        gc = (c - q) * (2.0 * ctx.beta / max(1, c.numel()))
        return g, gc, None


class DPQCodesTable(EmbeddingTable):
    """Inference form of DPQ/MGQE: per id one code per subspace into per-feature codebooks.

    ``e(x)[cols of part p] = codebook[f, codes[off_f + x, p], cols of part p]``.

    Buffers: ``codes [sum_f N_f, P]`` (uint8 when ``K <= 256``, else int16); parameter
    ``codebook [F, K, D]`` fp32. ``memory_report`` of this table is DPQ's inference footprint.

    Example::

        >>> t = DPQTable([Feature("a", 50, 8)], num_parts=4, num_choices=16).export()
        >>> t(torch.tensor([[3]])).shape, t.codes.dtype
        (torch.Size([1, 1, 8]), torch.uint8)
    """

    method: ClassVar[str] = "dpq_codes"
    needs_range: ClassVar[bool] = True
    budget_knob: ClassVar[Optional[str]] = None
    solved_knobs: ClassVar[Tuple[str, ...]] = ()
    search_space: ClassVar[Dict[str, Any]] = {}
    not_swept_reason: ClassVar[Optional[str]] = "export-only form of dpq/mgqe"
    trainable: ClassVar[bool] = False
    quantizable: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    not_shardable_reason: ClassVar[Optional[str]] = "codes plus per-feature codebooks: no EBC to shard"

    def __init__(self, features: Sequence[Feature], num_parts: int = 8, num_choices: int = 32) -> None:
        super().__init__(features)
        dim = common_dim(self.features, type(self).__name__)
        if not 1 <= int(num_parts) <= dim:
            raise ValueError(f"{type(self).__name__}: num_parts must be in [1, {dim}], got {num_parts}")
        if int(num_choices) < 2:
            raise ValueError(f"{type(self).__name__}: num_choices must be >= 2, got {num_choices}")
        self.num_parts, self.num_choices = int(num_parts), int(num_choices)
        sizes = [int(f.num_embeddings) for f in self.features]
        self.register_buffer("row_offsets", torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0))
        self.register_buffer("codes", torch.zeros(sum(sizes), self.num_parts, dtype=self.code_dtype(self.num_choices)))
        self.codebook = nn.Parameter(torch.empty(len(sizes), self.num_choices, dim))

    @staticmethod
    def code_dtype(num_choices: int) -> torch.dtype:
        return torch.uint8 if num_choices <= 256 else torch.int16

    @classmethod
    def inference_bytes_of(cls, features: Sequence[Feature], num_parts: int, num_choices: int) -> int:
        """Closed-form ``memory_report(...).total_bytes`` of the codes form."""
        n, dim, nf = sum(int(f.num_embeddings) for f in features), int(features[0].embedding_dim), len(features)
        code = 1 if num_choices <= 256 else 2
        return n * num_parts * code + nf * num_choices * dim * 4 + 16 * nf  # + offsets and id limits

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "num_parts": self.num_parts, "num_choices": self.num_choices}

    def _layout(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        cm, pc = part_columns(self.embedding_dim, self.num_parts)
        return device_constant(self, "col_map", device, cm), device_constant(self, "part_of_col", device, pc)

    def lookup_codes(self, codes: Tensor, fields: Tensor) -> Tensor:
        """``codes [N, P]`` of fields ``[N]`` -> ``[N, D]`` codebook rows (differentiable in the codebook)."""
        _, part_of_col = self._layout(codes.device)
        d = self.embedding_dim
        k = codes.long()[:, part_of_col]  # [N, D]: each column's code
        flat = (fields.unsqueeze(1) * self.num_choices + k) * d + torch.arange(d, device=codes.device)
        return self.codebook.reshape(-1)[flat]

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self.lookup_codes(self.codes[ids + self.row_offsets[fields]], fields)


register("dpq_codes")(DPQCodesTable)


@register("dpq")
class DPQTable(InferenceBudget, DPQCodesTable):
    """Differentiable Product Quantization (Chen, Li & Sun, ICML 2020).

    Speed: far slower than ``full`` per training step (0.02x forward+backward in
    ``slimembed bench tables --methods dpq --compression 4 --threads 2``, CPU, batch 4096, 26
    fields; docs/results/bench_tables_new.md) because every lookup of a training step compares the
    id's query with all ``K`` keys of each subspace (``B·F·K·D`` multiply-adds plus a softmax or
    an argmin) and assigns codes field by field; inference (``eval`` / the codes export) reads
    stored codes only.

    Each id owns a query embedding ``q [D]`` (training only). ``D`` is split into ``num_parts``
    subspaces; in each, the id's code is the nearest of ``K = num_choices`` keys (``vq``:
    Euclidean; ``sx``: largest dot product, after a non-affine batch norm of the responses as in
    the reference) and the output is the code's codebook entry. ``vq``: keys = codebook, output
    ``q + sg(c - q)`` plus the commitment term ``beta * mean((c - sg(q))^2)`` (its gradient is
    injected in the backward, so no trainer change is needed); ``sx``: separate keys, output
    ``(softmax - sg(softmax - onehot)) @ codebook``. Training forwards store each looked-up id's
    codes; evaluation (``eval()``) and :meth:`export` read the stored codes only.

    Defaults (the VLDB'24 benchmark's ``embedding_args`` for ``dpq``, Hsword/Hetu
    ``tools/EmbeddingMemoryCompression``): ``num_choices = 32``, ``num_parts = 8``, ``mode = "vq"``,
    no weight sharing across subspaces, ``beta = 1`` (the reference adds the reg with weight 1).
    Differences: codebooks are per feature; ``num_parts`` need not divide ``D`` (uneven
    subspaces); codes of all ids are assigned from the initial queries at construction (the
    reference starts from zeros); the benchmark's per-field "keep small fields full" threshold is
    left to the budget planner.

    Memory: ``memory_report(table)`` counts the training footprint (queries, keys, batch-norm
    statistics, codes, codebooks); :meth:`inference_bytes` (= ``memory_report(table.export())``)
    counts codes + codebooks + offsets, and :meth:`training_only_bytes` the rest. Budgets
    (:meth:`for_budget`) size the *inference* bytes; the knob is ``num_parts``.

    Example::

        >>> t = DPQTable([Feature("a", 100, 8)], num_parts=2, num_choices=16)
        >>> out = t(torch.tensor([[1], [2]]))  # training: assigns and stores codes
        >>> _ = t.eval()
        >>> torch.equal(t(torch.tensor([[1]]))[0, 0], t.export()(torch.tensor([[1]]))[0, 0])
        True
    """

    method: ClassVar[str] = "dpq"
    budget_knob: ClassVar[Optional[str]] = "num_parts"
    solved_knobs: ClassVar[Tuple[str, ...]] = ("num_parts",)
    search_space: ClassVar[Dict[str, Any]] = {"num_choices": [16, 32, 64], "mode": ["vq", "sx"]}
    not_swept_reason: ClassVar[Optional[str]] = None
    trainable: ClassVar[bool] = True
    not_shardable_reason: ClassVar[Optional[str]] = "codes are reassigned inside forward: no EBC to shard"
    DEFAULT_CHOICES: ClassVar[int] = 32
    needs_hot_ids: ClassVar[bool] = False  # MGQE: codes are assigned once its hot ids exist

    def __init__(self, features: Sequence[Feature], num_parts: int = 8, num_choices: int = 32,
                 mode: str = "vq", beta: float = 1.0, init_scale: float = DEFAULT_INIT_SCALE) -> None:
        super().__init__(features, num_parts, num_choices)
        if mode not in ("vq", "sx"):
            raise ValueError(f"{type(self).__name__}: mode must be 'vq' or 'sx', got {mode!r}")
        self.mode, self.beta, self.init_scale = mode, float(beta), float(init_scale)
        dim = self.embedding_dim
        self.query = nn.Parameter(torch.empty(self.codes.shape[0], dim))
        self.key = nn.Parameter(torch.empty_like(self.codebook)) if mode == "sx" else None
        self.bn = nn.BatchNorm1d(self.num_choices, affine=False) if mode == "sx" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.query, self.codebook, self.key):
            if p is not None:
                nn.init.uniform_(p, -self.init_scale, self.init_scale)
        if self.query.device.type != "meta" and (not self.needs_hot_ids or hasattr(self, "hot_keys")):
            self.assign_all_codes()

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "mode": self.mode, "beta": self.beta, "init_scale": self.init_scale}

    # ------------------------------------------------------------------ accounting
    def inference_bytes(self) -> int:
        """Bytes of :meth:`export` (codes + codebooks + offsets + id limits)."""
        return self.inference_bytes_of(self.features, self.num_parts, self.num_choices)

    def training_only_bytes(self) -> int:
        """Bytes held for training only: queries, keys (``sx``), batch-norm statistics."""
        extra = [self.query] + ([self.key] if self.key is not None else [])
        extra += list(self.bn.buffers()) if self.bn is not None else []
        return sum(t.numel() * t.element_size() for t in extra)

    def export(self) -> DPQCodesTable:
        """The inference table: the stored codes and the codebooks, copied."""
        out = DPQCodesTable(self.features, self.num_parts, self.num_choices).to(self.codebook.device)
        out.load_state_dict({"codes": self.codes.clone(), "codebook": self.codebook.detach().clone(),
                             "row_offsets": self.row_offsets.clone()})
        return out

    # ------------------------------------------------------------------ code assignment
    def code_limit(self, rows: Tensor) -> Optional[Tensor]:
        """Per row ``[N]`` the number of usable codes, or None for all ``K`` (MGQE overrides)."""
        return None

    def responses(self, q: Tensor, fields: Tensor, rows: Tensor) -> Tensor:
        """``q [N, D]`` -> ``[N, P, K]`` scores (higher = closer); padded columns count zero."""
        col_map, _ = self._layout(q.device)
        pad = lambda x: torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], -1)[..., col_map]  # noqa: E731
        qp = pad(q).view(q.shape[0], self.num_parts, -1)  # [N, P, w]
        keys = pad(self.codebook if self.mode == "vq" else self.key)  # [F, K, P * w]
        keys = keys.view(keys.shape[0], self.num_choices, self.num_parts, -1)
        out = qp.new_empty(q.shape[0], self.num_parts, self.num_choices)
        for f in torch.unique(fields).tolist():  # one batched matmul per feature present
            sel = (fields == f).nonzero().squeeze(1)
            kf = keys[f]  # [K, P, w]
            dot = torch.einsum("npw,kpw->npk", qp[sel], kf)
            out[sel] = 2 * dot - (kf ** 2).sum(-1).t() if self.mode == "vq" else dot
        if self.mode == "sx" and self.training and out.shape[0] > 1:
            out = self.bn(out.reshape(-1, self.num_choices)).view_as(out)
        limit = self.code_limit(rows)
        if limit is not None:
            k = torch.arange(self.num_choices, device=q.device)
            out = out.masked_fill(k >= limit.view(-1, 1, 1), float("-inf"))
        return out

    @torch.no_grad()
    def assign_all_codes(self, chunk: int = 1 << 16) -> None:
        """Recompute every id's codes from its query (construction; chunks of ``chunk`` rows)."""
        sizes = torch.tensor([int(f.num_embeddings) for f in self.features], device=self.query.device)
        fields_all = torch.repeat_interleave(torch.arange(len(sizes), device=self.query.device), sizes)
        was = self.training
        self.train(False)
        for s in range(0, self.query.shape[0], chunk):
            rows = torch.arange(s, min(s + chunk, self.query.shape[0]), device=self.query.device)
            self.codes[rows] = self.responses(self.query[rows], fields_all[rows], rows).argmax(-1).to(self.codes.dtype)
        self.train(was)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        if not self.training:
            return super().embed(ids, fields)
        rows = ids + self.row_offsets[fields]
        q = F.embedding(rows, self.query)
        resp = self.responses(q, fields, rows)
        codes = resp.argmax(-1)  # [N, P]
        self.codes[rows] = codes.detach().to(self.codes.dtype)  # duplicates: equal values
        if self.mode == "vq":
            return _StraightThrough.apply(q, self.lookup_codes(codes, fields), self.beta)
        prob = resp.softmax(-1)
        w = prob - (prob - F.one_hot(codes, self.num_choices).to(prob.dtype)).detach()  # [N, P, K]
        _, part_of_col = self._layout(q.device)
        wc = w[:, part_of_col, :]  # [N, D, K]: each column's code weights
        out = q.new_empty(q.shape)
        for f in torch.unique(fields).tolist():  # per feature: [n, D, K] x [K, D] -> [n, D]
            sel = (fields == f).nonzero().squeeze(1)
            out[sel] = torch.einsum("ndk,kd->nd", wc[sel], self.codebook[f])
        return out

    # ------------------------------------------------------------------ budgets
    @classmethod
    def knob_range(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        return 1, common_dim(features, cls.__name__)

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        """``num_parts -> inference_bytes`` (granularity ``sum_f N_f`` code bytes); budgets bound
        the inference footprint (:class:`~slimembed.tables.inference_budget.InferenceBudget`)."""
        k = int(kwargs.get("num_choices", cls.DEFAULT_CHOICES))
        return lambda v: cls.inference_bytes_of(features, v, k)


@register("mgqe")
class MGQETable(DPQTable):
    """Multi-Granular Quantized Embeddings (Kang et al., WWW 2020): DPQ-VQ with frequency-aware codes.

    The ``top_percent`` most frequent ids of each feature choose among all ``num_choices`` (256)
    codebook entries per subspace; the rest only among the first ``low_choices`` (64). The number
    of subspaces ``num_parts`` is solved from the budget. Frequency source as
    :class:`slimembed.tables.adaptive.AdaptiveTable` (``counts``, ``frequent_ids`` or ``num_hot``).

    Defaults (the VLDB'24 benchmark's ``embedding_args`` for ``mgqe``, Hsword/Hetu
    ``tools/EmbeddingMemoryCompression``): 256 / 64 codes, ``num_parts = 4``,
    ``top_percent = 0.1``, VQ mode. Differences: codes are stored one byte each (the reference's
    accounting counts 6 bits for rare ids but stores int32); the frequency split (sorted hot keys,
    8 bytes per hot id) is training-only, since the stored codes already respect it.

    Memory: as :class:`DPQTable`; :meth:`training_only_bytes` adds the hot keys.

    Example::

        >>> import numpy as np
        >>> t = MGQETable([Feature("a", 100, 8)], num_parts=2, counts={"a": np.arange(99)})
        >>> int(t.code_limit(torch.tensor([99, 3]))[0]), int(t.code_limit(torch.tensor([99, 3]))[1])
        (256, 64)
    """

    method: ClassVar[str] = "mgqe"
    budget_knob: ClassVar[Optional[str]] = "num_parts"
    # num_hot only sizes placeholders for a state-dict load; a budget takes the hot ids from counts
    solved_knobs: ClassVar[Tuple[str, ...]] = ("num_parts", "num_hot")
    #: the experiment passes the training split's per-id counts as ``counts=`` (docs/architecture.md §5)
    needs_counts: ClassVar[bool] = True
    search_space: ClassVar[Dict[str, Any]] = {"top_percent": [0.05, 0.1, 0.2]}
    DEFAULT_CHOICES: ClassVar[int] = 256
    needs_hot_ids: ClassVar[bool] = True

    def __init__(self, features: Sequence[Feature], num_parts: int = 4, num_choices: int = 256,
                 low_choices: int = 64, top_percent: float = 0.1, counts: Optional[FreqSource] = None,
                 frequent_ids: Optional[FreqSource] = None, num_hot: RowsSpec = None, beta: float = 1.0,
                 init_scale: float = DEFAULT_INIT_SCALE) -> None:
        if not 1 <= int(low_choices) <= int(num_choices):
            raise ValueError(f"MGQETable: low_choices must be in [1, {num_choices}], got {low_choices}")
        super().__init__(features, num_parts, num_choices, "vq", beta, init_scale)
        self.low_choices, self.top_percent = int(low_choices), float(top_percent)
        hot = hot_id_lists(self.features, self.top_percent, counts, frequent_ids, num_hot, "MGQETable")
        self.hot_list: List[int] = [int(h.numel()) for h in hot]
        offs = [0] + list(itertools.accumulate(int(f.num_embeddings) for f in self.features))[:-1]
        keys = torch.cat([h + o for h, o in zip(hot, offs)]).to(self.row_offsets.device)  # hot: CPU
        self.register_buffer("hot_keys", keys)  # sorted rows of the hot ids (training only)
        if self.query.device.type != "meta":
            self.assign_all_codes()

    def config(self) -> Dict[str, Any]:
        cfg = {**super().config(), "low_choices": self.low_choices, "top_percent": self.top_percent,
               "num_hot": list(self.hot_list)}
        cfg.pop("mode")  # always "vq"
        return cfg

    def code_limit(self, rows: Tensor) -> Optional[Tensor]:
        """``LongTensor[N]``: ``num_choices`` for hot rows, ``low_choices`` for the rest."""
        hot = torch.zeros_like(rows, dtype=torch.bool)
        if self.hot_keys.numel():
            pos = torch.searchsorted(self.hot_keys, rows).clamp_(max=self.hot_keys.numel() - 1)
            hot = self.hot_keys[pos] == rows
        return torch.where(hot, self.num_choices, self.low_choices)

    def training_only_bytes(self) -> int:
        return super().training_only_bytes() + self.hot_keys.numel() * self.hot_keys.element_size()
