"""Unified Embedding's remap step and chunk rules (docs/architecture.md §3), used by
:mod:`slimembed.tables.unified` and :mod:`slimembed.tables.multiplexed`: which row of the shared
space each chunk of each feature reads.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import device_constant
from .hashing import HashFamily, universal_hash

# ---------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------
def default_chunk_dim(dim: int, max_chunks: int = 4) -> int:
    """``dim / k`` with ``k`` the largest divisor of ``dim`` that is ``<= max_chunks``.

    Example::

        >>> default_chunk_dim(16), default_chunk_dim(39), default_chunk_dim(1)
        (4, 13, 1)
    """
    k = max(c for c in range(1, max(1, max_chunks) + 1) if dim % c == 0)
    return dim // k


def cardinality_chunks(num_embeddings: int, cap: int) -> int:
    """``chunks="by_cardinality"`` (our rule, not the paper's): ``clamp(ceil(log10 N) - 1, 1, cap)``,
    one more chunk per decade above 100.

    Example::

        >>> [cardinality_chunks(n, 4) for n in (3, 100, 101, 1000, 10**4, 10**6)]
        [1, 1, 2, 2, 3, 4]
    """
    n = int(num_embeddings)
    decades = 0
    while 10**decades < n:  # exact ceil(log10 n) on integers (no float rounding at 10**k)
        decades += 1
    return max(1, min(int(cap), decades - 1))


default_chunks = cardinality_chunks  # its name before the paper's layout became the default


def chunk_key(feature: str, chunk: int) -> str:
    """The torchrec feature name of chunk ``j`` of a feature: ``"<feature>_<j>"``.

    Chunks are always concatenated in numeric order ``0, 1, ..., c - 1`` (never by sorting these
    names, which would put ``_10`` before ``_2``).
    """
    return f"{feature}_{int(chunk)}"


# ---------------------------------------------------------------------------------------------
# the remap step
# ---------------------------------------------------------------------------------------------
class SharedRowRemap(nn.Module):
    """ids -> rows of the shared space, for every chunk of every feature (the remap step).

    Layout: rows of sub-table ``s`` are ``[s * rows, (s + 1) * rows)`` of the fused space; the
    collision-free block follows (feature ``t``'s chunk ``j`` owns ``N_t`` rows of it). Chunk
    ``(t, j)`` reads ``local = base[t, j] + r`` of its table (``table_of[t][j]``), ``global =
    start[t, j] + r``, with ``r = h_{t,j}(x) mod rows`` (hashed), or ``r = x`` for a collision-free
    feature and ``0 <= x < N_t`` (``h_{t,j}(x) mod N_t`` otherwise).

    Args:
        num_features_rows: ``N_t`` per feature (only read for collision-free features).
        chunks: ``c_t`` per feature.
        private: per feature, whether it is collision-free.
        rows: rows per shared sub-table.
        num_tables: shared sub-tables.
        salts: one salt per feature (the feature names).
        seed: the hash family's seed.

    Buffers: ``hashes.coef [F, c_max, 2]`` (persistent: the salts), ``modulus``, ``local_base``,
    ``global_base [F, c_max]``, ``valid [F, c_max]`` and ``direct_limit [F]``.
    """

    def __init__(self, num_features_rows: Sequence[int], chunks: Sequence[int], private: Sequence[bool],
                 rows: int, num_tables: int, salts: Sequence[str], seed: int = 0) -> None:
        super().__init__()
        nf = len(chunks)
        cmax = max(chunks)
        self.chunks = [int(c) for c in chunks]
        self.private = [bool(p) for p in private]
        self.rows = int(rows)
        self.num_tables = int(num_tables)
        self.c_max = int(cmax)
        self.hashes = HashFamily(cmax, seed=seed, salts=list(salts))
        modulus = [[1] * cmax for _ in range(nf)]
        local_base = [[0] * cmax for _ in range(nf)]
        global_base = [[0] * cmax for _ in range(nf)]
        valid = [[j < c for j in range(cmax)] for c in self.chunks]
        # table_of[t][j]: index of the chunk's table (0..T-1 shared, T = the private block), or -1
        self.table_of: List[List[int]] = [[-1] * cmax for _ in range(nf)]
        shared_start = self.num_tables * self.rows
        counter = 0
        priv_off = 0
        for t in range(nf):
            for j in range(self.chunks[t]):
                if self.private[t]:
                    n = int(num_features_rows[t])
                    modulus[t][j] = n
                    local_base[t][j] = priv_off
                    global_base[t][j] = shared_start + priv_off
                    self.table_of[t][j] = self.num_tables
                    priv_off += n
                else:
                    s = counter % self.num_tables  # round-robin over all shared chunks
                    counter += 1
                    modulus[t][j] = self.rows
                    global_base[t][j] = s * self.rows
                    self.table_of[t][j] = s
        self.private_rows = priv_off
        self.num_shared_chunks = counter
        self.total_rows = shared_start + priv_off
        limits = [int(n) if p else 0 for n, p in zip(num_features_rows, self.private)]
        self.register_buffer("modulus", torch.tensor(modulus, dtype=torch.long), persistent=False)
        self.register_buffer("local_base", torch.tensor(local_base, dtype=torch.long), persistent=False)
        self.register_buffer("global_base", torch.tensor(global_base, dtype=torch.long), persistent=False)
        self.register_buffer("valid", torch.tensor(valid, dtype=torch.bool), persistent=False)
        self.register_buffer("direct_limit", torch.tensor(limits, dtype=torch.long), persistent=False)
        # the used cells of the [F, c_max] grid, feature-major, and their field (host lists; the
        # device copies are cached per device, not buffers, so memory accounting is unchanged):
        # a lookup then needs no nonzero(), which syncs a CUDA device every batch
        self._valid_flat_list = [t * cmax + j for t in range(nf) for j in range(self.chunks[t])]
        self._valid_field_list = [f // cmax for f in self._valid_flat_list]
        self.all_valid = all(all(v) for v in valid)
        self.any_private = any(self.private)

    def _per(self, buf: Tensor, fields: Optional[Tensor]) -> Tensor:
        return buf if fields is None else buf[fields]

    def forward(self, ids: Tensor, fields: Optional[Tensor] = None, kind: str = "global") -> Tensor:
        """Rows of each chunk: ``LongTensor[..., c_max]``.

        Args:
            ids: dense ``[B, F]`` (then ``fields`` is None) or ``[N]`` with ``fields [N]``.
            kind: ``"global"`` (rows of the fused space, the gather backend) or ``"local"``
                (rows within the chunk's own table, the torchrec backend).
        Slots ``j >= c_t`` hold a valid but meaningless row (see :attr:`valid`).
        """
        coef = self._per(self.hashes.coef, fields)  # [F, c, 2] or [N, c, 2]
        x = ids.unsqueeze(-1)
        r = universal_hash(x, coef[..., 0], coef[..., 1], self._per(self.modulus, fields))
        if self.any_private:
            lim = self._per(self.direct_limit, fields).unsqueeze(-1)
            r = torch.where(x < lim, x, r)
        base = self.global_base if kind == "global" else self.local_base
        return r + self._per(base, fields)

    def slots(self, ids: Tensor, kind: str = "global") -> Tensor:
        """Rows of the used chunks only, for a dense batch: ``[B, F] -> LongTensor[B, S]``.

        ``S = sum_t c_t`` slot columns in feature-major order ``(t, j)``: column ``start_t + j``
        is chunk ``j`` of feature ``t``, i.e. the concatenation order of the embeddings.
        """
        if self.all_valid:
            return self(ids, None, kind).reshape(ids.shape[0], self.valid_flat.numel())
        flat = self.valid_flat  # [S] positions in the [F, c_max] grid
        field = device_constant(self, "valid_field", self.valid.device, self._valid_field_list)
        coef = self.hashes.coef.reshape(-1, 2).index_select(0, flat)
        x = ids.index_select(1, field)  # [B, S]
        r = universal_hash(x, coef[:, 0], coef[:, 1], self.modulus.reshape(-1).index_select(0, flat))
        if self.any_private:
            r = torch.where(x < self.direct_limit.index_select(0, field), x, r)
        base = self.global_base if kind == "global" else self.local_base
        return r + base.reshape(-1).index_select(0, flat)

    @property
    def valid_flat(self) -> Tensor:
        """``LongTensor[S]``: the used ``(t, j)`` cells of the ``[F, c_max]`` grid, feature-major."""
        return device_constant(self, "valid_flat", self.valid.device, self._valid_flat_list)

    def slot_mask(self, fields: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        """``[F, c_max]`` (or ``[N, c_max]``) 1/0 factor dropping slots ``j >= c_t``; None if all used."""
        if self.all_valid:
            return None
        return self._per(self.valid, fields).to(dtype)

    def extra_repr(self) -> str:
        return (f"chunks={self.chunks}, rows={self.rows}, num_tables={self.num_tables}, "
                f"private_rows={self.private_rows}")


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
