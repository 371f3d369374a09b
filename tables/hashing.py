"""The one seeded hash family of slimembed (docs/architecture.md §2).

Universal hashing over the Mersenne prime ``P = 2**61 - 1``::

    h_{a,b}(x) = ((a * u(x) + b) mod P) mod M,      a in [1, P), b in [0, P)

computed with int64 torch ops only (vectorised, any device). The product ``a * x`` of two 61-bit
numbers is formed by *split multiplication* (31/30-bit halves) and folded with ``2**61 = 1 (mod P)``,
so no intermediate value ever leaves ``[0, 2**63)``: no signed overflow, no float rounding, the same
bits on every machine, thread count and process.

Coefficients ``(a, b)`` never come from Python's ``hash()`` or from a torch RNG: they are read from a
BLAKE2b digest of ``(seed, salt, index)``, so a family is fully determined by its integers and
strings. Per-field salts are a field's *name* (or index): tables derive one independent family per
feature with :func:`derive_seed` / :class:`HashFamily` ``salts=``.

**Which ids.** Any int64 works, including ids above ``2**40`` and negative ids:

* an id is read as its unsigned 64-bit two's-complement pattern ``u(x) = x mod 2**64`` and reduced
  mod ``P`` first. So ``-1`` hashes like ``2**64 - 1``; ids congruent mod ``P`` (e.g. ``x`` and
  ``x + 2**61 - 1``) hash alike in every function of the family — a one-in-``2**61`` coincidence
  for random 64-bit ids, documented rather than hidden.
* The *tables* still reject negative ids (they call ids "non-negative int64"); the hash itself
  never fails.

Raw string categories become stable 63-bit ids in the data pipeline (:mod:`slimembed.datasets.ids`:
SipHash-2-4 with a fixed key, unsalted); tables hash those ids here, salted per feature.

Example::

    >>> fam = HashFamily(num_hashes=2, seed=7, with_sign=True)
    >>> fam(torch.tensor([0, 1, 2**50]), num_buckets=1000, index=1)   # LongTensor[3]
    tensor([459, 895,  58])
    >>> fam.sign(torch.tensor([0, 1, 2**50]))                         # FloatTensor[3] of ±1
    tensor([-1.,  1.,  1.])
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

MERSENNE_61 = (1 << 61) - 1
_P = MERSENNE_61
_MASK31 = (1 << 31) - 1
_MASK30 = (1 << 30) - 1

Salt = Union[int, str]


# ---------------------------------------------------------------------------------------------
# deterministic coefficient derivation (pure Python, stable forever)
# ---------------------------------------------------------------------------------------------
def _digest_ints(*parts: object, count: int) -> List[int]:
    """``count`` 64-bit unsigned ints from BLAKE2b of the parts (type-tagged, unambiguous)."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts).encode("utf-8")
    out: List[int] = []
    block = 0
    while len(out) < count:
        h = hashlib.blake2b(text + b"\x1e" + str(block).encode(), digest_size=64,
                            person=b"slimembed-hash").digest()
        out.extend(int.from_bytes(h[i:i + 8], "little") for i in range(0, 64, 8))
        block += 1
    return out[:count]


def derive_seed(seed: int, *salts: Salt) -> int:
    """A 63-bit seed derived from ``seed`` and any salts (field name/index, purpose...).

    ``derive_seed(0, "C1") != derive_seed(0, "C2")``; identical arguments give identical seeds in
    every process.
    """
    return _digest_ints("seed", int(seed), *salts, count=1)[0] >> 1


def coefficients(seed: int, salt: Salt = "", num_hashes: int = 1) -> Tensor:
    """``LongTensor[num_hashes, 2]``: the ``(a, b)`` pairs of hash functions ``0..num_hashes-1``.

    ``a`` is uniform in ``[1, P)``, ``b`` in ``[0, P)`` (``P = 2**61 - 1``), from BLAKE2b of
    ``(seed, salt, i)``.
    """
    vals = _digest_ints("coef", int(seed), salt, count=2 * num_hashes)
    rows = []
    for i in range(num_hashes):
        a = 1 + vals[2 * i] % (_P - 1)
        b = vals[2 * i + 1] % _P
        rows.append([a, b])
    return torch.tensor(rows, dtype=torch.long).reshape(num_hashes, 2)


# ---------------------------------------------------------------------------------------------
# arithmetic mod 2**61 - 1 on int64 tensors, overflow-free
# ---------------------------------------------------------------------------------------------
def mod_p(x: Tensor) -> Tensor:
    """Reduce any int64 (read as unsigned 64-bit) into ``[0, P)``. Shape preserved."""
    x = x.to(torch.long)
    # low 61 bits + the top 3 bits (logical shift: mask the arithmetic shift's sign fill).
    r = (x & _P) + ((x >> 61) & 7)  # < 2**61 + 8
    return torch.where(r >= _P, r - _P, r)


def _fold(s: Tensor) -> Tensor:
    """``s`` in ``[0, 2**63)`` -> ``s mod P``."""
    s = (s & _P) + (s >> 61)  # < 2**61 + 4
    return torch.where(s >= _P, s - _P, s)


def mulmod_p(a: Tensor, x: Tensor) -> Tensor:
    """``(a * x) mod P`` for ``a, x`` in ``[0, P)`` (broadcasting), never overflowing int64.

    Split ``a = ah * 2**31 + al`` and ``x = xh * 2**31 + xl`` (``ah, xh < 2**30``; ``al, xl <
    2**31``). Then ``a*x = ah*xh*2**62 + mid*2**31 + al*xl`` with ``mid = ah*xl + al*xh < 2**62``;
    ``2**62 = 2`` and ``mid*2**31 = (mid >> 30) + (mid & (2**30-1)) * 2**31 (mod P)``. Every
    partial term stays below ``2**62`` and their sum below ``2**63``.
    """
    ah, al = a >> 31, a & _MASK31
    xh, xl = x >> 31, x & _MASK31
    hh = ah * xh  # < 2**60
    mid = ah * xl + al * xh  # < 2**62
    lo = al * xl  # < 2**62
    lo = (lo & _P) + (lo >> 61)  # < 2**61 + 2
    s = 2 * hh + (mid >> 30) + ((mid & _MASK30) << 31) + lo  # < 2**61 + 2**32 + 2**61 + 2**61 + 2
    return _fold(s)


def universal_hash(ids: Tensor, a: Union[Tensor, int], b: Union[Tensor, int],
                   num_buckets: Union[Tensor, int, None] = None) -> Tensor:
    """``((a * u(ids) + b) mod P) [mod num_buckets]``, elementwise with broadcasting.

    Args:
        ids: ``LongTensor[...]``, any int64 values.
        a, b: coefficients in ``[1, P)`` / ``[0, P)`` (ints or int64 tensors broadcastable to ids).
        num_buckets: ``M >= 1`` (int or int64 tensor broadcastable to ids); ``None`` returns the
            raw value in ``[0, P)``.
    Returns:
        ``LongTensor`` of the broadcast shape, in ``[0, M)``.
    """
    x = mod_p(ids)
    a_t = torch.as_tensor(a, dtype=torch.long, device=x.device)
    b_t = torch.as_tensor(b, dtype=torch.long, device=x.device)
    h = _fold(mulmod_p(a_t, x) + b_t)
    if num_buckets is None:
        return h
    if isinstance(num_buckets, int):
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        return h if num_buckets >= _P else h % num_buckets
    return torch.remainder(h, num_buckets.to(torch.long))


def hash_ids(ids: Tensor, num_buckets: Union[int, Tensor], seed: int = 0, salt: Salt = "",
             index: int = 0) -> Tensor:
    """Function ``index`` of the family ``(seed, salt)``: ``LongTensor`` in ``[0, num_buckets)``."""
    a, b = coefficients(seed, salt, index + 1)[index].tolist()
    return universal_hash(ids, a, b, num_buckets)


def hash_sign(ids: Tensor, seed: int = 0, salt: Salt = "", index: int = 0,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """A ±1 sign hash (independent of :func:`hash_ids` with the same arguments)."""
    a, b = coefficients(seed, ("sign", salt).__repr__(), index + 1)[index].tolist()
    return _to_sign(universal_hash(ids, a, b, None), dtype)


def _to_sign(h: Tensor, dtype: torch.dtype) -> Tensor:
    # bit 30 of a uniform value in [0, P): P(1) = 1/2 up to 2**-31.
    return (1 - 2 * ((h >> 30) & 1)).to(dtype)


# ---------------------------------------------------------------------------------------------
# the family as a module: coefficients are buffers (memory, and in the state_dict)
# ---------------------------------------------------------------------------------------------
class HashFamily(nn.Module):
    """``num_hashes`` independent universal hash functions, optionally one set per salt (field).

    Args:
        num_hashes: ``K`` functions per salt.
        seed: the family seed.
        salts: ``None`` for one set, or a sequence of ``S`` salts (feature names or indices): each
            gets its own independent ``K`` functions (per-field hashing, fused in one call).
        with_sign: also hold ``K`` independent sign functions per salt.
        derived: keep only the seed (an int64 buffer, 8 bytes) and derive the coefficients from it
            when first used on a device (they are a pure function of the seed and the salts), so
            a family of many functions, e.g. DHE's 1024, costs 8 bytes instead of ``16 K``
            (docs/architecture.md §2: fixed overheads derived from one seed, and still counted).

    Buffers: ``coef [S, K, 2]`` (and ``sign_coef [S, K, 2]``), int64, persistent; with
    ``derived=True`` only ``seed_value [1]``.

    Shapes: :meth:`forward` takes ``ids [...]`` and returns ``LongTensor[...]``. With ``S > 1``
    salts, pass ``fields`` (``LongTensor`` broadcastable to ids, the salt index of each id), or ids
    whose last dim is ``S`` (dense ``[B, F]`` batches: field ``f`` uses salt ``f``).

    Example::

        >>> fam = HashFamily(2, seed=1, salts=["C1", "C2"])
        >>> fam(torch.tensor([[5, 5]]), num_buckets=10)     # different rows for C1 and C2
        tensor([[1, 7]])
    """

    def __init__(self, num_hashes: int = 1, seed: int = 0, salts: Optional[Sequence[Salt]] = None,
                 with_sign: bool = False, derived: bool = False) -> None:
        super().__init__()
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        self.num_hashes = int(num_hashes)
        self.seed = int(seed)
        self.salts: List[Salt] = list(salts) if salts is not None else [""]
        self.with_sign = bool(with_sign)
        self.derived = bool(derived)
        if self.derived:
            self.register_buffer("seed_value", torch.tensor([self.seed], dtype=torch.long))
            return
        self.register_buffer("coef", self._make("coef"))
        if self.with_sign:
            self.register_buffer("sign_coef", self._make("sign_coef"))

    def _make(self, which: str) -> Tensor:
        with torch.device("cpu"):  # data, not shapes: never on the meta device
            if which == "coef":
                return torch.stack([coefficients(self.seed, s, self.num_hashes) for s in self.salts])
            return torch.stack([coefficients(self.seed, repr(("sign", s)), self.num_hashes) for s in self.salts])

    def table(self, which: str = "coef") -> Tensor:
        """``LongTensor[S, K, 2]``: the stored coefficients, or (``derived``) the ones derived
        from the seed, on the family's device (computed once per device)."""
        if not self.derived:
            return getattr(self, which)
        dev = self.seed_value.device
        cache = self.__dict__.setdefault("_derived", {})
        key = (which, str(dev))
        if key not in cache:
            cache[key] = self._make(which).to(dev)
        return cache[key]

    def _ab(self, coef: Tensor, ids: Tensor, index: int, fields: Optional[Tensor]):
        c = coef[:, index]  # [S, 2]
        if fields is not None:
            c = c[fields]  # [..., 2]
            return c[..., 0], c[..., 1]
        if c.shape[0] == 1:
            return c[0, 0], c[0, 1]
        if ids.dim() >= 1 and ids.shape[-1] == c.shape[0]:
            return c[:, 0], c[:, 1]  # broadcast over the last (field) dim
        raise ValueError(
            f"HashFamily has {c.shape[0]} salts: pass fields=, or ids with last dim {c.shape[0]}; "
            f"got ids of shape {tuple(ids.shape)}"
        )

    def forward(self, ids: Tensor, num_buckets: Union[int, Tensor], index: int = 0,
                fields: Optional[Tensor] = None) -> Tensor:
        """Bucket of each id under function ``index``: ``LongTensor`` shaped like ids (broadcast)."""
        a, b = self._ab(self.table(), ids, index, fields)
        return universal_hash(ids, a, b, num_buckets)

    def raw(self, ids: Tensor, index: int = 0, fields: Optional[Tensor] = None) -> Tensor:
        """The hash value in ``[0, 2**61 - 1)`` before the bucket reduction."""
        a, b = self._ab(self.table(), ids, index, fields)
        return universal_hash(ids, a, b, None)

    def sign(self, ids: Tensor, index: int = 0, fields: Optional[Tensor] = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        """±1 of each id under sign function ``index`` (requires ``with_sign=True``)."""
        if not self.with_sign:
            raise RuntimeError("HashFamily was built with with_sign=False")
        a, b = self._ab(self.table("sign_coef"), ids, index, fields)
        return _to_sign(universal_hash(ids, a, b, None), dtype)

    def extra_repr(self) -> str:
        return (f"num_hashes={self.num_hashes}, seed={self.seed}, salts={len(self.salts)}, with_sign={self.with_sign}"
                + (", derived=True" if self.derived else ""))
