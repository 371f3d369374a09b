"""Unified Embedding (Coleman et al., NeurIPS 2023): feature multiplexing with chunked lookups.

All features share one space of rows (``num_tables`` sub-tables of ``rows`` rows each, width
``chunk_dim``). Feature ``t`` makes ``c_t`` lookups ("chunks"), each with its own salted hash
from the project family (:class:`~slimembed.tables.hashing.HashFamily`, salt = the feature name,
function ``j`` = chunk ``j``), and concatenates them: its native dim is ``c_t * chunk_dim``.
Chunks are spread round-robin over the sub-tables in (feature, chunk) order, as TF Recommenders'
``UnifiedEmbeddingConfig.add_feature`` does. Small features (``num_embeddings <=
collisionless_max``) may keep private, collision-free rows instead.

The module is two standard parts (docs/architecture.md §2):

1. a **remap step** (:class:`SharedRowRemap`): ``ids -> rows`` of the shared space, per chunk;
2. a **plain table**: ``backend="gather"`` (default) one fused weight read by the project's gather
   engine (:func:`~slimembed.tables.gather.gather_combine`, fast backward, ``sparse`` rows), or
   ``backend="torchrec"``: a plain torchrec ``EmbeddingBagCollection`` child (``self.ebc``) whose
   shared table has one feature name per chunk, so ``DistributedModelParallel`` shards it like any
   EBC. The remapped ids travel to it as a ``KeyedJaggedTensor`` keyed by chunk.

**Chunks** (``chunks=``). Default (``None``), the paper's and TF Recommenders' configuration:
every feature makes ``c_t = D / chunk_dim`` lookups, so its embedding is the full width ``D``
built from chunks alone (no projection parameters); ``D % chunk_dim`` must then be 0.
``chunk_dim`` defaults to ``D / k`` with ``k`` the largest divisor of ``D`` not above 4
(``D = 16``: 4 chunks of 4; ``D = 1``: one chunk of 1). An int, a list or ``{name: c}`` sets
``c_t`` by hand (as ``UnifiedEmbeddingConfig.add_feature(name, num_chunks)`` does).
``chunks="by_cardinality"`` is OUR rule, not the paper's (:func:`cardinality_chunks`): one more
chunk per decade of cardinality above 100, ``c_t = clamp(ceil(log10 N_t) - 1, 1, D / chunk_dim)``
(``N <= 100``: 1, ``<= 1e3``: 2, ``<= 1e4``: 3, ``<= 1e5``: 4...); features narrower than ``D``
then go through the output step below (a learned projection by default).

**Output dims** (``output=``), for features whose ``c_t * chunk_dim`` differs from ``D`` (none
under the default chunks): ``"project"`` (default; MDE's semantics) such a feature (the features' ``embedding_dim``) gets a bias-free
``[c_t * chunk_dim, D]`` projection (Xavier init; it is memory and counted), others pass through;
``"pad"`` zero-pads to ``D`` (OptEmbed's semantics, no parameters); ``"none"`` keeps the
per-feature dims ``c_t * chunk_dim`` (``output_dims``), dense ids then give ``[B, sum_t dims]``.
``"project"`` and ``"pad"`` give one common ``D``, so FM/DeepFM/IPNN and torchrec's models take
the table as is (``make_model("deepfm", ..., table_factory=lambda fs: make_table("unified", fs))``).

**Ids.** Vocabulary-free: any non-negative int64 id (``2**62`` too, unseen at training too) is
hashed. A collision-free feature reads its own row for ids in ``[0, N_t)``; an id outside (e.g.
a raw id at serving time) is hashed into that feature's private rows, so nothing fails.

**Memory**: ``num_tables * rows * chunk_dim`` floats (shared) + ``sum_{private t} N_t c_t
chunk_dim`` (collision-free; ``N_t D`` under the default chunks) + the projections (if any), plus int64 buffers: the hash coefficients
(``16 F c_max`` bytes), the per-chunk layout (``32 F c_max``) and per-feature limits (``16 F``).
The budget knob is ``rows`` (rows per sub-table; granularity ``4 * num_tables * chunk_dim`` bytes).

Example::

    >>> feats = [Feature("C1", 10**6, 16), Feature("C2", 50, 16)]
    >>> t = UnifiedTable(feats, rows=1000)          # 4 chunks of 4 each; C2 collision-free
    >>> t.chunks, len(t.projections), t(torch.tensor([[2**50, 7]])).shape
    ([4, 4], 0, torch.Size([1, 2, 16]))
    >>> UnifiedTable(feats, rows=1000, chunks="by_cardinality").chunks   # our rule: C2 1 chunk
    [4, 1]
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DEFAULT_INIT_SCALE, HAVE_TORCHREC, EmbeddingTable, TableEmbeddingBag
from .budget import module_bytes
from .feature import Feature, check_features
from .gather import GatherTable, combine_rows, common_dim, gather_combine, per_feature
from .dropin import EmbeddingBag
from .registry import register
from .shared_rows import (  # noqa: F401  (re-exported: their home before the split)
    SharedRowRemap, cardinality_chunks, chunk_key, default_chunk_dim, default_chunks,
)
from .threshold import for_budget_with_threshold

if HAVE_TORCHREC:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

OUTPUT_MODES = ("project", "pad", "none")
BACKENDS = ("gather", "torchrec")
DEFAULT_MAX_ROWS = 2**20
#: named chunk rules besides the default (D / chunk_dim chunks per feature, the paper's)
CHUNK_RULES = ("by_cardinality",)
ChunkSpec = Union[int, Sequence[int], Mapping[str, int], str, None]


@register("unified")
class UnifiedTable(GatherTable):
    """Unified Embedding: every feature's chunks hash into shared sub-tables (Coleman et al. 2023).

    Args:
        features: the features; one common ``embedding_dim`` ``D`` (the output dim under
            ``"project"``/``"pad"``). ``num_embeddings`` may be the id space (``2**63``).
        rows: rows per shared sub-table (the budget knob ``M``); default
            ``min(2**20, ceil(sum of hashed N_t / num_tables))``.
        num_tables: shared sub-tables; chunks go round-robin over them (TFRS). Default 1.
        chunk_dim: width of a chunk (a row); default :func:`default_chunk_dim` ``(D)``.
        chunks: ``c_t``: an int, a list (feature order) or ``{name: c}``; default ``D // chunk_dim``
            for every feature (the paper's full-width layout, no projections);
            ``"by_cardinality"``: our cardinality rule (module docstring), capped at ``D // chunk_dim``.
        collisionless_max: features with ``num_embeddings <=`` this keep private collision-free
            rows (``N_t * c_t`` rows each, full width under the default chunks); 0 turns it off.
            Default 200 (a budget may lower it: :meth:`for_budget`).
        output: ``"project"`` (default), ``"pad"`` or ``"none"`` (module docstring).
        backend: ``"gather"`` (fused weight, default) or ``"torchrec"`` (a child
            ``EmbeddingBagCollection``; ``sparse`` must be False, KJT weights are not supported).
        seed: the hash family's seed (salts are the feature names).
        sparse: sparse row gradients (gather backend).
        init_scale: rows uniform ``±init_scale`` (docs/architecture.md §3: 0.05); projections Xavier-uniform.

    Shapes: dense ``[B, F]`` -> ``[B, F, D]`` (``"none"``: ``[B, sum_t c_t * chunk_dim]``); a KJT
    -> ``KeyedTensor`` ``[B, sum(output_dims)]``, pooled per feature (sum or mean).

    Example::

        >>> from slimembed.tables import Feature, make_table
        >>> feats = [Feature("C1", 10**6, 16), Feature("C2", 50, 16)]
        >>> t = make_table("unified", feats, compression=50, backend="torchrec")
        >>> [c.feature_names for c in t.ebc.embedding_bag_configs()]   # chunk names per table
        [['C1_0', 'C1_1', 'C1_2', 'C1_3'], ['C2_0', 'C2_1', 'C2_2', 'C2_3']]
    """

    method = "unified"
    needs_range = False
    budget_knob = "rows"
    solved_knobs = ("rows",)
    search_space = {"num_tables": [1, 2, 4]}
    quantizable = True
    supports_sparse = True
    # only the gather backend (the default); backend='torchrec' builds a DMP-shardable child EBC
    not_shardable_reason = ("backend='gather' keeps the shared rows in one fused parameter read by slimembed's "
                            "gather engine; build it with backend='torchrec' (a child EmbeddingBagCollection "
                            "that DMP shards)")
    _plain_keys = False  # multiplexed: torchrec keys are the feature names themselves

    def __init__(
        self,
        features: Sequence[Feature],
        rows: Optional[int] = None,
        num_tables: int = 1,
        chunk_dim: Optional[int] = None,
        chunks: ChunkSpec = None,
        collisionless_max: int = 200,
        output: str = "project",
        backend: str = "gather",
        seed: int = 0,
        sparse: bool = False,
        init_scale: float = DEFAULT_INIT_SCALE,
    ) -> None:
        super().__init__(features)
        dim = common_dim(self.features, type(self).__name__)
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "torchrec":
            if not HAVE_TORCHREC:  # pragma: no cover
                raise RuntimeError("backend='torchrec' needs torchrec installed")
            if sparse:
                raise ValueError("backend='torchrec' trains its EmbeddingBagCollection with dense "
                                 "gradients; use sparse=False (or backend='gather')")
        d = int(chunk_dim) if chunk_dim is not None else default_chunk_dim(dim)
        if d < 1:
            raise ValueError(f"chunk_dim must be >= 1, got {d}")
        cap = max(1, dim // d)
        sizes = [int(f.num_embeddings) for f in self.features]
        if isinstance(chunks, str):
            if chunks not in CHUNK_RULES:
                raise ValueError(f"chunks must be an int, a list, a {{feature: int}} dict or one of "
                                 f"{CHUNK_RULES}, got {chunks!r}")
            cs = [cardinality_chunks(n, cap) for n in sizes]
        else:
            cs = per_feature(chunks, self.features, "chunks")
        if cs is None:  # the paper's layout: D / chunk_dim full-width chunks, no projection
            if dim % d:
                raise ValueError(f"chunk_dim={d} does not divide embedding_dim {dim}: the default layout "
                                 "is D / chunk_dim chunks per feature; pass chunks= explicitly")
            cs = [cap] * len(sizes)
        for f, c in zip(self.features, cs):
            if c < 1:
                raise ValueError(f"{type(self).__name__}: feature {f.name!r} needs at least 1 chunk, got {c}")
            if output == "pad" and c * d > dim:
                raise ValueError(f"output='pad': feature {f.name!r} has {c} chunks of {d} > D={dim}; "
                                 "use output='project' or 'none'")
        private = [0 < n <= int(collisionless_max) for n in sizes]
        num_tables = int(num_tables)
        if num_tables < 1:
            raise ValueError(f"num_tables must be >= 1, got {num_tables}")
        n_shared_chunks = sum(c for c, p in zip(cs, private) if not p)
        if n_shared_chunks and num_tables > n_shared_chunks:
            raise ValueError(f"num_tables={num_tables} exceeds the {n_shared_chunks} hashed chunks "
                             "that would spread over them")
        if rows is None:
            hashed = sum(min(n, DEFAULT_MAX_ROWS) for n, p in zip(sizes, private) if not p)
            rows = max(1, min(DEFAULT_MAX_ROWS, -(-hashed // num_tables)))
        rows = int(rows)
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.dim = dim
        self.chunk_dim = d
        self.chunks = [int(c) for c in cs]
        self.num_tables = num_tables
        self.rows = rows
        self.collisionless_max = int(collisionless_max)
        self.collisionless = private
        self.output = output
        self.backend = backend
        self.seed = int(seed)
        self.sparse = bool(sparse)
        self.init_scale = float(init_scale)
        self.combine_mode = "concat"
        self.remap = SharedRowRemap(sizes, self.chunks, private, rows, num_tables,
                                    self.feature_names, seed=self.seed)
        self.c_max = self.remap.c_max
        self.num_slots = self.c_max
        self._build_output()
        if backend == "gather":
            self.weight = nn.Parameter(torch.empty(self.remap.total_rows, d))
        else:
            self._build_ebc()
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    def _build_output(self) -> None:
        """Feature groups of the output step: pass-through features (``c_t * chunk_dim == D``) and,
        per chunk count ``c``, the features projected (``"project"``) or zero-padded (``"pad"``)."""
        d, dim, nf = self.chunk_dim, self.dim, self.num_features
        self._native = [c * d for c in self.chunks]
        starts = [sum(self.chunks[:t]) for t in range(nf)]  # first slot of each feature
        self.num_slots_used = sum(self.chunks)
        self.projections = nn.ParameterList()
        self._ident: List[int] = []
        self._groups: List[Tuple[int, List[int]]] = []  # (chunks, fields)
        self._needs_perm = False
        if self.output == "none":
            return
        self._ident = [t for t in range(nf) if self._native[t] == dim]
        for c in sorted({self.chunks[t] for t in range(nf) if self._native[t] != dim}):
            fields = [t for t in range(nf) if self.chunks[t] == c and self._native[t] != dim]
            self._groups.append((c, fields))
            if self.output == "project":
                self.projections.append(nn.Parameter(torch.empty(len(fields), c * d, dim)))
        if not self._groups:
            return  # every feature is D wide: the concatenated slots ARE [B, F, D]
        order = self._ident + [t for _, fs in self._groups for t in fs]
        inv = [0] * nf
        for pos, t in enumerate(order):
            inv[t] = pos
        self._needs_perm = order != list(range(nf))

        def buf(name: str, vals: List[int]) -> None:
            self.register_buffer(name, torch.tensor(vals, dtype=torch.long), persistent=False)

        buf("_perm_inv", inv)
        buf("_ident_idx", self._ident)
        buf("_ident_slots", [starts[t] + j for t in self._ident for j in range(self.chunks[t])])
        for g, (c, fs) in enumerate(self._groups):
            buf(f"_group_idx{g}", fs)
            buf(f"_group_slots{g}", [starts[t] + j for t in fs for j in range(c)])

    def _group_out(self, g: int, sel: Tensor) -> Tensor:
        """``sel [..., G, c * chunk_dim]`` of group ``g`` -> ``[..., G, D]`` (projected or padded)."""
        if self.output == "project":
            return torch.einsum("...gk,gkd->...gd", sel, self.projections[g])
        return F.pad(sel, (0, self.dim - sel.shape[-1]))

    def _chunk_key(self, t: int, j: int) -> str:
        return self.feature_names[t] if self._plain_keys else chunk_key(self.feature_names[t], j)

    def chunk_names(self, feature: str) -> List[str]:
        """The torchrec keys of a feature's chunks, in concatenation (numeric) order."""
        t = self.feature_names.index(feature)
        return [self._chunk_key(t, j) for j in range(self.chunks[t])]

    def table_names(self) -> List[str]:
        """Names of the child EBC's tables: shared sub-tables, then the collision-free block."""
        names = [f"{self.method}_shared_{s}" for s in range(self.num_tables)]
        if self.remap.private_rows:
            names.append(f"{self.method}_private")
        return names

    def _build_ebc(self) -> None:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        names = self.table_names()
        per_table: List[List[str]] = [[] for _ in names]
        for t in range(self.num_features):
            for j in range(self.chunks[t]):
                per_table[self.remap.table_of[t][j]].append(self._chunk_key(t, j))
        sizes = [self.rows] * self.num_tables + ([self.remap.private_rows] if self.remap.private_rows else [])
        configs = [
            EmbeddingBagConfig(num_embeddings=n, embedding_dim=self.chunk_dim, name=name,
                               feature_names=keys, pooling=PoolingType.SUM,
                               weight_init_min=-self.init_scale, weight_init_max=self.init_scale)
            for name, n, keys in zip(names, sizes, per_table) if keys
        ]
        self.ebc = EmbeddingBagCollection(tables=configs, is_weighted=False)
        # where each used (feature, chunk) slot, feature-major, lands in the EBC's output
        order = [k for c in configs for k in c.feature_names]
        self._ebc_keys = order
        pos = {k: i for i, k in enumerate(order)}
        self._native_keys = [self._chunk_key(t, j) for t in range(self.num_features)
                             for j in range(self.chunks[t])]
        self.register_buffer("_ebc_gather", torch.tensor([pos[k] for k in self._native_keys],
                                                         dtype=torch.long), persistent=False)
        # a KJT's chunk keys are built slot-major: for slot j, the features that have a chunk j
        self._slot_fields = [[t for t in range(self.num_features) if self.chunks[t] > j]
                             for j in range(self.c_max)]
        self._slot_keys = [self._chunk_key(t, j) for j in range(self.c_max) for t in self._slot_fields[j]]
        for j, fs in enumerate(self._slot_fields):
            if len(fs) != self.num_features:
                self.register_buffer(f"_slot_idx{j}", torch.tensor(fs, dtype=torch.long), persistent=False)

    def reset_parameters(self) -> None:
        if self.backend == "gather":
            nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)
        else:
            for p in self.ebc.parameters():
                nn.init.uniform_(p, -self.init_scale, self.init_scale)
        for p in self.projections:
            for s in range(p.shape[0]):
                nn.init.xavier_uniform_(p.data[s])

    # ------------------------------------------------------------------ contract
    @property
    def output_dims(self) -> List[int]:
        if self.output == "none":
            return list(self._native)
        return [self.dim] * self.num_features

    @property
    def rows_per_feature(self) -> List[int]:
        """Rows a feature can read: the whole shared space, or its private block."""
        shared = self.rows * self.num_tables
        return [int(f.num_embeddings) * c if p else shared
                for f, c, p in zip(self.features, self.chunks, self.collisionless)]

    def config(self) -> Dict[str, Any]:
        return {**EmbeddingTable.config(self), "rows": self.rows, "num_tables": self.num_tables,
                "chunk_dim": self.chunk_dim, "chunks": list(self.chunks),
                "collisionless_max": self.collisionless_max, "output": self.output,
                "backend": self.backend, "seed": self.seed, "sparse": self.sparse,
                "init_scale": self.init_scale}

    def shared_weights(self) -> List[Tensor]:
        """The shared sub-tables' ``[rows, chunk_dim]`` weights (views of the fused weight, or
        the child EBC's tables), then the collision-free block when there is one."""
        if self.backend == "gather":
            w = self.weight
            out = [w[s * self.rows:(s + 1) * self.rows] for s in range(self.num_tables)]
            if self.remap.private_rows:
                out.append(w[self.num_tables * self.rows:])
            return out
        bags = self.ebc.embedding_bags
        return [bags[n].weight for n in self.table_names() if n in bags]

    # ------------------------------------------------------------------ output step
    def finish(self, x: Tensor, fields: Optional[Tensor] = None) -> Tensor:
        """The output step: concatenated chunks -> per-feature outputs.

        ``fields`` None: ``x`` is ``[B, S * chunk_dim]``, the used slots of a dense batch in
        feature-major order (``S = sum_t c_t``) -> ``[B, F, D]`` (``"none"``: ``x`` itself,
        ``[B, sum_t c_t * chunk_dim]``). Else ``x`` is ``[N, c_max * chunk_dim]`` (unused slots
        zero) with ``fields [N]`` -> ``[N, D]``.
        """
        if fields is None:
            return self._finish_slots(x)
        k, dim = x.shape[-1], self.dim
        if self.output == "none":
            dims = {self._native[int(t)] for t in torch.unique(fields).tolist()}
            if len(dims) > 1:
                raise ValueError(f"output='none': ids of features with different dims {sorted(dims)} "
                                 "cannot share one [N, D] tensor")
            return x[:, :dims.pop()] if dims else x[:, :0]
        if self.output == "pad" or not self._groups:
            return x if k == dim else (F.pad(x, (0, dim - k)) if k < dim else x[..., :dim])
        y = x.new_zeros(x.shape[0], dim)
        if self._ident:
            keep = torch.isin(fields, self._ident_idx).unsqueeze(1).to(x.dtype)
            y = y + (x[:, :dim] if k >= dim else F.pad(x, (0, dim - k))) * keep
        for g, (c, fs) in enumerate(self._groups):
            gidx = getattr(self, f"_group_idx{g}")
            slot = torch.full((self.num_features,), -1, dtype=torch.long, device=x.device)
            slot[gidx] = torch.arange(len(fs), device=x.device)
            s = slot[fields]
            rows = (s >= 0).nonzero().squeeze(1)
            if rows.numel():
                v = torch.bmm(x[rows, :c * self.chunk_dim].unsqueeze(1),
                              self.projections[g][s[rows]]).squeeze(1)
                y = y.index_put((rows,), v)
        return y

    def _finish_slots(self, x: Tensor) -> Tensor:
        b, nf, d = x.shape[0], self.num_features, self.chunk_dim
        if self.output == "none":
            return x
        if not self._groups:
            return x.view(b, nf, self.dim)
        xs = x.view(b, self.num_slots_used, d)
        parts = []
        if self._ident:
            parts.append(xs.index_select(1, self._ident_slots).reshape(b, len(self._ident), self.dim))
        for g, (c, fs) in enumerate(self._groups):
            sel = xs.index_select(1, getattr(self, f"_group_slots{g}")).reshape(b, len(fs), c * d)
            parts.append(self._group_out(g, sel))
        y = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return y.index_select(1, self._perm_inv) if self._needs_perm else y

    def slots_from_grid(self, x: Tensor) -> Tensor:
        """``[B, F, c_max * chunk_dim]`` (unused slots included) -> the used slots ``[B, S * chunk_dim]``."""
        b = x.shape[0]
        if self.remap.all_valid:
            return x.flatten(1)  # flatten, not reshape(b, -1): B = 0 has no -1 to infer
        grid = x.reshape(b, self.num_features * self.c_max, self.chunk_dim)
        return grid.index_select(1, self.remap.valid_flat).flatten(1)

    # ------------------------------------------------------------------ gather backend
    def gather_index(self, ids: Tensor, fields: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Dense ``[B, F]``: the used slots' global rows ``[B, S, 1]`` (no factor). ``[N]`` with
        fields: rows ``[N, c_max]`` and the 1/0 factor of unused slots (None when all are used)."""
        if fields is None:
            return self.remap.slots(ids, "global").unsqueeze(-1), None
        return self.remap(ids, fields, "global"), self.remap.slot_mask(fields, torch.float32)

    def combine(self, rows: Tensor, coef: Optional[Tensor], fields: Optional[Tensor]) -> Tensor:
        """Gathered rows (``[B, S, 1, d]`` dense, ``[N, c_max, d]`` with fields) -> :meth:`finish`."""
        if fields is None:
            return self.finish(rows.flatten(1), None)
        return self.finish(combine_rows(rows, coef, "concat"), fields)

    def _rows(self, ids: Tensor, fields: Optional[Tensor]) -> Tensor:
        if self.backend == "torchrec":
            if fields is not None:
                raise RuntimeError("backend='torchrec' has no per-id [N] path; use backend='gather' "
                                   "for nn.EmbeddingBag drop-ins and quantized export")
            return self.finish(self._ebc_dense(ids), None)
        idx, coef = self.gather_index(ids, fields)
        if self.sparse:
            return self.combine(F.embedding(idx, self.weight, sparse=True), coef, fields)
        out = gather_combine(self.weight, idx, coef, "concat")
        return self.finish(out.flatten(1) if fields is None else out, fields)

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self._rows(ids, fields)

    def forward_dense(self, ids: Tensor) -> Tensor:
        return self._rows(ids, None)

    def bag(self, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Optional[Tensor],
            padding_idx: Optional[int]) -> Tensor:
        return EmbeddingTable.bag(self, ids, offsets, mode, per_sample_weights, padding_idx)

    def pool(self, ids: Tensor, fields: Tensor, offsets: Tensor,
             per_sample_weights: Optional[Tensor] = None) -> Tensor:
        """Sum-pooled concatenated chunks ``[n_bags, c_max * chunk_dim]`` (unused slots zero).

        Gather backend: one ``embedding_bag`` over the ``c_max`` slots of every id (bag ``(j, b)``
        holds slot ``j`` of bag ``b``); the slot factor and ``per_sample_weights`` multiply.
        """
        idx, coef = self.gather_index(ids, fields)
        n, c = idx.shape
        weights = None if coef is None else coef.to(self.weight.dtype)
        if per_sample_weights is not None:
            w = per_sample_weights.to(self.weight.dtype).unsqueeze(1)
            weights = w.expand(n, c) if weights is None else weights * w
        nb = offsets.numel() - 1
        starts = offsets[:-1].unsqueeze(0) + (torch.arange(c, device=ids.device) * n).unsqueeze(1)
        all_offsets = torch.cat([starts.reshape(-1), offsets.new_tensor([n * c])])
        out = F.embedding_bag(idx.t().reshape(-1), self.weight, all_offsets, mode="sum",
                              per_sample_weights=None if weights is None else weights.t().reshape(-1),
                              include_last_offset=True, sparse=self.sparse)
        return out.view(c, nb, out.shape[-1]).transpose(0, 1).reshape(nb, c * self.chunk_dim)

    # ------------------------------------------------------------------ torchrec backend
    def _kjt_chunks(self, local: Tensor, lengths: Tensor, fields: Tensor) -> "KeyedJaggedTensor":
        """A KJT's remapped ids ``local [N, c_max]`` as a KJT keyed by chunk, for the child EBC
        (slot-major keys; ``lengths [F * B]`` key-major, as the input's)."""
        vals, lens = [], []
        for j, fs in enumerate(self._slot_fields):
            if not fs:
                continue
            v = local[:, j]
            lv = lengths
            if len(fs) != self.num_features:
                v = v[self.remap.valid[fields, j]]
                lv = lengths.view(self.num_features, -1).index_select(0, getattr(self, f"_slot_idx{j}")).reshape(-1)
            vals.append(v)
            lens.append(lv)
        return KeyedJaggedTensor.from_lengths_sync(keys=self._slot_keys, values=torch.cat(vals),
                                                   lengths=torch.cat(lens))

    def _ebc_slots(self, kjt: "KeyedJaggedTensor", batch: int) -> Tensor:
        """Run the child EBC; its pooled chunks as used slots ``[B, S * chunk_dim]``."""
        kt = self.ebc(kjt)
        if list(kt.keys()) != self._ebc_keys:
            raise RuntimeError(f"child EBC returned keys {kt.keys()}, expected {self._ebc_keys}")
        v = kt.values().view(batch, len(self._ebc_keys), self.chunk_dim)
        if len(self._ebc_keys) > 1:
            v = v.index_select(1, self._ebc_gather)
        return v.flatten(1)

    def _ebc_dense(self, ids: Tensor) -> Tensor:
        """Dense ``[B, F]`` -> the used slots ``[B, S * chunk_dim]`` through the child EBC."""
        b = ids.shape[0]
        local = self.remap.slots(ids, "local")  # [B, S], feature-major = self._native_keys
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self._native_keys, values=local.t().reshape(-1),
            lengths=torch.ones(local.numel(), dtype=torch.long, device=ids.device))
        return self._ebc_slots(kjt, b)

    # ------------------------------------------------------------------ KJT
    def forward_kjt(self, kjt: "KeyedJaggedTensor") -> "KeyedTensor":
        names = self.feature_names
        keys = kjt.keys()
        if keys != names:
            missing = [n for n in names if n not in keys]
            if missing:
                raise ValueError(f"KeyedJaggedTensor lacks features {missing}; it has {keys}")
            kjt = kjt.permute([keys.index(n) for n in names])
        values, lengths, b, nf = kjt.values(), kjt.lengths(), kjt.stride(), self.num_features
        lengths = lengths.to(torch.long)
        per_key = torch.tensor(kjt.length_per_key(), device=values.device)
        fields = torch.repeat_interleave(torch.arange(nf, device=values.device), per_key)
        self.check_ids(values, fields)
        weights = kjt.weights_or_none()
        mean = "mean" in self._pool_modes
        if mean:
            mean_bag = torch.tensor([m == "mean" for m in self._pool_modes],
                                    device=values.device).repeat_interleave(b)
            denom = torch.where(mean_bag, lengths.clamp(min=1), torch.ones_like(lengths))
        if self.backend == "torchrec":
            if weights is not None:
                raise ValueError("backend='torchrec' builds an unweighted EmbeddingBagCollection; "
                                 "weighted KJTs need backend='gather'")
            local = self.remap(values, fields, "local")
            raw = self._ebc_slots(self._kjt_chunks(local, lengths, fields), b)  # [B, S * d]
            if mean:
                slot_field = torch.div(self.remap.valid_flat, self.c_max, rounding_mode="floor")
                per_slot = denom.view(nf, b).t().index_select(1, slot_field)  # [B, S]
                raw = (raw.view(b, per_slot.shape[1], self.chunk_dim)
                       / per_slot.unsqueeze(-1).to(raw.dtype)).flatten(1)
        else:
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=values.device)
            offsets[1:] = torch.cumsum(lengths, 0)
            pooled = self.pool(values, fields, offsets, weights)  # [F * B, c_max * d]
            if mean:
                pooled = pooled / denom.unsqueeze(1).to(pooled.dtype)
            raw = self.slots_from_grid(pooled.view(nf, b, pooled.shape[-1]).transpose(0, 1))
        out = self.finish(raw, None)
        return KeyedTensor(keys=names, length_per_key=self.output_dims, values=out.flatten(1))

    # ------------------------------------------------------------------ drop-ins over the shared table
    def feature_bag(self, feature: str, mode: str = "mean", include_last_offset: bool = False,
                    padding_idx: Optional[int] = None) -> TableEmbeddingBag:
        """An ``nn.EmbeddingBag``-signature module for one feature that reads this shared table.

        Several bags made this way share the table's weight (multiplexing across ``nn.EmbeddingBag``
        call sites); ``memory_report`` counts the table once. Gather backend only.
        """
        if self.backend != "gather":
            raise RuntimeError("feature_bag needs backend='gather'")
        return TableEmbeddingBag(_FeatureView(self, self.feature_names.index(feature)), mode=mode,
                                 include_last_offset=include_last_offset, padding_idx=padding_idx)

    # ------------------------------------------------------------------ budgets
    @classmethod
    def _linear_bytes(cls, features: List[Feature], **kwargs: Any) -> Tuple[int, int]:
        """``(bytes(1), step)``: memory is exactly linear in ``rows``, ``bytes(rows) = bytes(1) +
        (rows - 1) * 4 * num_tables * chunk_dim``; ``bytes(1)`` (collision-free rows,
        projections and buffers) is measured on a real build."""
        small = cls.budget_build(features, 1, **kwargs)
        return module_bytes(small), 4 * small.num_tables * small.chunk_dim

    @classmethod
    def for_budget(cls, features: Sequence[Feature], budget_bytes: int, **kwargs: Any) -> "UnifiedTable":
        """The ``rows`` solve with a budget-aware ``collisionless_max``: the class default (200 for
        unified, 0 for multiplexed) when the private rows still fit, else the largest value that
        fits (down to 0: every feature hashed); see :mod:`slimembed.tables.threshold`. An explicit
        ``collisionless_max`` is kept as given (a hard floor, named in the error)."""
        return for_budget_with_threshold(cls, super().for_budget, features, budget_bytes,
                                         "collisionless_max", kwargs)

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """Rows per shared sub-table. Granularity: ``4 * num_tables * chunk_dim`` bytes."""
        check_features(features)
        base, step = cls._linear_bytes(features, **kwargs)
        return 1, max(1, (int(budget_bytes) - base) // step + 2)  # one past the answer: next_bytes

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        base, step = cls._linear_bytes(features, **kwargs)
        return lambda v: base + (v - 1) * step

    def why_not_shardable(self) -> Optional[str]:
        return self.not_shardable_reason if self.backend == "gather" else None

    @classmethod
    def why_not_shardable_config(cls, cfg: Mapping[str, Any]) -> Optional[str]:
        return None if cfg.get("backend", "gather") == "torchrec" else cls.not_shardable_reason

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, features={self.num_features}, rows={self.rows}, "
                f"num_tables={self.num_tables}, chunk_dim={self.chunk_dim}, chunks={self.chunks}, "
                f"collisionless={sum(self.collisionless)}, output={self.output!r}, backend={self.backend!r}")


class _FeatureView(nn.Module):
    """One feature of a shared table, as the one-feature table :class:`TableEmbeddingBag` wraps.

    Not an :class:`EmbeddingTable` (so ``memory_report`` counts the shared table once, through it).
    """

    def __init__(self, table: UnifiedTable, field: int) -> None:
        super().__init__()
        self.shared = table
        self.field = int(field)
        self.features = [table.features[field]]
        self.num_features = 1

    @property
    def output_dims(self) -> List[int]:
        return [self.shared.output_dims[self.field]]

    def check_ids(self, ids: Tensor, fields: Optional[Tensor] = None) -> None:
        self.shared.check_ids(ids, torch.full_like(ids, self.field))

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self.shared.embed(ids, torch.full_like(ids, self.field))

    def bag(self, ids, offsets, mode, per_sample_weights, padding_idx):
        return EmbeddingTable.bag(self, ids, offsets, mode, per_sample_weights, padding_idx)  # type: ignore[arg-type]


class UnifiedEmbeddingBag(EmbeddingBag):
    """``nn.EmbeddingBag`` drop-in backed by a one-feature :class:`UnifiedTable`.

    One feature alone has nothing to share a table with, so this is the chunked part of Unified
    Embedding: ``chunks`` independent salted hashes into ``num_rows`` rows of width
    ``embedding_dim / chunks``, concatenated (two ids collide fully only if every chunk does).
    To multiplex several ``nn.EmbeddingBag`` call sites over one table, build the collection table
    and take :meth:`UnifiedTable.feature_bag` per feature.

    Args: ``nn.EmbeddingBag``'s, in its order (``num_embeddings`` may be the id space, e.g.
    ``2**63``; ``max_norm``, ``scale_grad_by_freq``, ``_weight`` raise ``NotImplementedError``),
    plus keyword-only ``num_rows`` (default ``min(num_embeddings, 2**20)``), ``chunks`` (default
    ``embedding_dim // chunk_dim``, the full width; ``"by_cardinality"`` our rule), ``chunk_dim`` (default
    ``embedding_dim / chunks``, else :func:`default_chunk_dim`), ``seed``, ``init_scale``.
    The output is ``embedding_dim`` wide (a projection when ``chunks * chunk_dim`` differs).

    Example::

        >>> bag = UnifiedEmbeddingBag(2**63, 16, num_rows=1000, chunks=4, mode="sum")
        >>> bag(torch.tensor([1, 2**40, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    fixed_method = "unified"
    renamed = {"num_rows": "rows"}

    def table_kwargs(self, num_embeddings: int, embedding_dim: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        chunks, chunk_dim = kwargs.get("chunks"), kwargs.get("chunk_dim")
        if chunk_dim is None:
            chunk_dim = (embedding_dim // chunks if isinstance(chunks, int) and chunks > 0
                         and embedding_dim % chunks == 0 else default_chunk_dim(embedding_dim))
        kwargs["chunk_dim"] = chunk_dim
        kwargs["chunks"] = max(1, embedding_dim // chunk_dim) if chunks is None else chunks
        kwargs.setdefault("rows", min(num_embeddings, DEFAULT_MAX_ROWS))
        kwargs.setdefault("collisionless_max", 0)
        return kwargs
