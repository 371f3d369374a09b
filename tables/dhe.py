"""DHE: Deep Hash Embedding (Kang, Cheng, Yao, Yi, Chen, Hong, Chi; KDD 2021, arXiv 2010.10784).

No embedding table at all: an id is encoded on the fly by ``k`` universal hashes into a dense,
essentially collision-free identifier vector, which an MLP (the "embedding network") maps to the
embedding::

    h_j(x) = ((a_j * x + b_j) mod P) mod m           j = 1..k   (k = 1024, m = 10**6)
    enc(x) = 2 * h(x) / (m - 1) - 1                   in [-1, 1]^k   (uniform; or Gaussian)
    e(x)   = Linear(w -> d)( [Linear -> BatchNorm -> Mish] x 5 ( enc(x) ) )

Memory is the MLP (weights, biases, BatchNorm affine parameters and running statistics) plus the
hash coefficients; it does not grow with the vocabulary, so ids are any non-negative int64
(vocabulary-free, unseen ids at serving time just work).

Compute runs once per *distinct* (field, id) in a batch (CTR ids repeat heavily: a Zipf batch of
4096 x 26 Criteo-like ids has ~2.2k distinct pairs in 106k): the encoding and the whole MLP run
on the distinct rows and are indexed back. BatchNorm keeps its all-occurrences batch statistics
(count-weighted over the distinct rows), so outputs, gradients and running statistics are those
of the plain all-rows pass up to float summation order.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import EmbeddingTable
from .feature import Feature, check_features
from .hashing import MERSENNE_61, HashFamily, derive_seed
from .dropin import EmbeddingBag
from .registry import register

ACTIVATIONS = {"mish": nn.Mish, "relu": nn.ReLU}
ENCODINGS = ("uniform", "gaussian")
# Hash elements per encoding chunk: the int64 temporaries of one chunk (128 KiB each) stay in
# L2 on CPU (measured ~3x faster than 1 << 16 elements, ~7x faster than one [2213, 1024] block);
# accelerators take big chunks.
_CHUNK_ELEMENTS_CPU = 1 << 14
_CHUNK_ELEMENTS_ACCEL = 1 << 24
_MASK31 = (1 << 31) - 1
_MASK30 = (1 << 30) - 1


def dhe_mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int = 5, activation: str = "mish",
            batch_norm: bool = True) -> nn.Sequential:
    """The embedding network: ``num_layers`` x [Linear -> BatchNorm1d -> act], then Linear to ``out_dim``.

    ``[N, in_dim] -> [N, out_dim]``. ``num_layers=0`` is a single Linear.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: List[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers.append(nn.Linear(width, hidden))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(ACTIVATIONS[activation]())
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def dhe_mlp_bytes(in_dim: int, hidden: int, out_dim: int, num_layers: int = 5,
                  batch_norm: bool = True) -> int:
    """Closed-form bytes of :func:`dhe_mlp` (fp32 params, BN running stats, BN's int64 counter)."""
    if num_layers == 0:
        return 4 * (in_dim + 1) * out_dim
    floats = (in_dim + 1) * hidden + (num_layers - 1) * (hidden + 1) * hidden + (hidden + 1) * out_dim
    extra = 0
    if batch_norm:
        floats += 4 * hidden * num_layers  # weight, bias, running_mean, running_var
        extra = 8 * num_layers  # num_batches_tracked
    return 4 * floats + extra


@register("dhe")
class DHETable(EmbeddingTable):
    """Deep Hash Embedding for many features (Kang et al., KDD 2021).

    Each id gets ``num_hashes`` universal hashes (the project's family, :mod:`.hashing`: mod the
    Mersenne prime ``2**61 - 1``) reduced mod ``buckets`` and scaled to ``[-1, 1]``; an MLP maps this
    ``[N, k]`` encoding to ``[N, d]``. The encoding is recomputed every call (nothing stored).

    **Speed.** :meth:`embed` deduplicates per call: ids whose salted value (below) is equal have
    equal encodings, so the encoding and the MLP run on the ``U`` distinct values only and the
    ``U`` rows are indexed back to ``N``. BatchNorm in training mode does *not* switch to
    statistics over the distinct rows (that would weight a rare id like a hot one and change the
    model): each distinct row counts as often as it occurs (:func:`_batch_norm_counted`), so the
    result is the all-rows computation's, up to float summation order (and closer to a float64
    reference than the all-rows float32 pass, which sums ``N`` terms). Measured on the
    bench batch (4096 x 26 Zipf ids, k=1024, hidden=402; 1 CPU thread): ~11k samples/s, ~57x
    the all-rows pass; deduplicating only the encoding and running the MLP on all ``N`` rows
    gave only ~1.2-1.4x, since the MLP on all 106k rows then dominates.

    **Fields.** By default all features share one MLP (so the budget buys one wide network, the
    paper's setting with one id space). Fields differ through a per-field salt: the id first goes
    through the field's own bijection ``x -> (a_f * x + b_f) mod P`` (a one-function
    :class:`~.hashing.HashFamily` salted by the feature name), then through the ``k`` shared
    functions. The composition is again a universal hash with per-field coefficients, at
    ``16 * F`` bytes instead of ``16 * k * F`` for ``k`` independent functions per field.
    ``per_feature=True`` gives every feature its own MLP instead.

    Args:
        features: the features; all must share ``embedding_dim``. ``num_embeddings`` only
            sets the full-table baseline (it may be ``2**63``).
        num_hashes: ``k`` (paper: 1024).
        hidden: MLP width ``w`` (the budget knob). Paper Fig. 1 used 1800; default 256.
        num_layers: hidden layers (paper/Hetu: 5).
        activation: ``"mish"`` (paper) or ``"relu"`` (reported to work better by cce).
        encoding: ``"uniform"`` in ``[-1, 1]`` (default) or ``"gaussian"`` (Box-Muller on hash
            pairs; ``num_hashes`` must be even).
        buckets: ``m`` (paper: 10**6).
        batch_norm: BatchNorm after each hidden Linear (paper: yes). In training mode a call
            with a single id fails (BatchNorm needs two values per channel).
        per_feature: one MLP per feature instead of one shared MLP.
        seed: hash seed (the coefficients are buffers, saved in the ``state_dict``).

    Memory: MLP parameters + BatchNorm buffers + int64 hash coefficients ``16 * (k + F)`` bytes
    + ``16 * F`` bytes of index buffers.

    Shapes: dense ids ``[B, F]`` -> ``[B, F, d]``; a KJT -> ``KeyedTensor`` ``[B, F * d]``. Ids
    are any non-negative int64.

    Example::

        >>> t = DHETable([Feature("user", 2**63, 16), Feature("item", 2**63, 16)], hidden=64)
        >>> t(torch.tensor([[2**50, 7], [3, 2**62]])).shape
        torch.Size([2, 2, 16])
    """

    method = "dhe"
    budget_knob = "hidden"
    solved_knobs = ("hidden",)
    refuse_solved_knobs = True
    search_space = {"activation": ["mish", "relu"], "num_layers": {"low": 2, "high": 5}}
    not_shardable_reason = "an MLP computes each embedding from 1024 hashes; there is no table at all"
    needs_range = False

    def __init__(
        self,
        features: Sequence[Feature],
        num_hashes: int = 1024,
        hidden: int = 256,
        num_layers: int = 5,
        activation: str = "mish",
        encoding: str = "uniform",
        buckets: int = 1_000_000,
        batch_norm: bool = True,
        per_feature: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(features)
        _check_dims(self.features)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if int(num_hashes) < 1 or (encoding == "gaussian" and int(num_hashes) % 2):
            raise ValueError(f"num_hashes must be >= 1 (even for gaussian), got {num_hashes}")
        if int(hidden) < 1 or int(num_layers) < 0 or int(buckets) < 2:
            raise ValueError(f"need hidden >= 1, num_layers >= 0, buckets >= 2; got {hidden}, {num_layers}, {buckets}")
        self.num_hashes = int(num_hashes)
        self.hidden = int(hidden)
        self.num_layers = int(num_layers)
        self.activation = activation
        self.encoding = encoding
        self.buckets = int(buckets)
        self.batch_norm = bool(batch_norm)
        self.per_feature = bool(per_feature)
        self.seed = int(seed)
        self.dim = int(self.features[0].embedding_dim)

        self.field_hash = HashFamily(1, seed=self.seed, salts=self.feature_names)  # coef [F, 1, 2]
        # k encoding functions derived from one seed (8 bytes, counted), not k stored pairs
        self.enc_hash = HashFamily(self.num_hashes, seed=derive_seed(self.seed, "dhe"), derived=True)
        n_mlps = self.num_features if self.per_feature else 1
        self.mlps = nn.ModuleList(
            dhe_mlp(self.num_hashes, self.hidden, self.dim, self.num_layers, activation, self.batch_norm)
            for _ in range(n_mlps)
        )
        field_mlp = list(range(self.num_features)) if self.per_feature else [0] * self.num_features
        self.register_buffer("_field_mlp", torch.tensor(field_mlp, dtype=torch.long), persistent=False)

    def config(self) -> Dict[str, Any]:
        return {
            **super().config(),
            "num_hashes": self.num_hashes,
            "hidden": self.hidden,
            "num_layers": self.num_layers,
            "activation": self.activation,
            "encoding": self.encoding,
            "buckets": self.buckets,
            "batch_norm": self.batch_norm,
            "per_feature": self.per_feature,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ budget
    @staticmethod
    def memory_bytes(features: Sequence[Feature], hidden: int, num_hashes: int = 1024,
                     num_layers: int = 5, batch_norm: bool = True, per_feature: bool = False,
                     **_: Any) -> int:
        """Closed-form ``memory_report(DHETable(features, hidden=hidden, ...)).total_bytes``."""
        feats = check_features(features)
        nf = len(feats)
        n_mlps = nf if per_feature else 1
        mlp = dhe_mlp_bytes(num_hashes, hidden, feats[0].embedding_dim, num_layers, batch_norm)
        return n_mlps * mlp + 8 + 16 * nf + 16 * nf  # the encoding's seed; field hash coefficients

    @classmethod
    def knob_range(cls, features: List[Feature], budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        """The MLP width ``hidden``, from 1 to the first power of two over the budget; granularity
        one unit of width (``num_hashes`` and the other arguments stay as given)."""
        _check_dims(check_features(features))
        nbytes = cls.knob_bytes_fn(features, **kwargs)
        hi = 1
        while nbytes(hi) <= budget_bytes and hi < 1 << 20:
            hi *= 2
        return 1, hi

    @classmethod
    def knob_bytes_fn(cls, features: List[Feature], **kwargs: Any) -> Callable[[int], int]:
        return lambda w: cls.memory_bytes(features, w, **kwargs)

    # ------------------------------------------------------------------ encoding and lookup
    @torch.no_grad()
    def encode(self, ids: Tensor, fields: Tensor) -> Tensor:
        """The DHE identifier vectors: ``ids [N]``, ``fields [N]`` -> ``FloatTensor[N, k]``.

        Uniform: values in ``[-1, 1]``. Gaussian: standard normal via Box-Muller on hash pairs.
        Deterministic across processes and machines (integer hashing only, then one float map).
        """
        return self.encode_salted(self.field_hash.raw(ids, fields=fields))

    @torch.no_grad()
    def encode_salted(self, salted: Tensor) -> Tensor:
        """:meth:`encode` after the per-field bijection: ``salted [N]`` in ``[0, P)`` -> ``[N, k]``.

        Every hash ``h_j(x) = ((a_j x + b_j) mod P) mod m`` is the same integer as
        :func:`~.hashing.universal_hash` gives, computed by :func:`_hash_rows`: one broadcast
        ``[n, 1] x [1, k]`` pass per chunk of rows, in-place int64 ops, the coefficient halves split once.
        """
        coef = self.enc_hash.table()[0]  # [k, 2]
        a, b = coef[:, 0], coef[:, 1]
        ah, al = a >> 31, a & _MASK31
        ah2, b_minus_p = 2 * ah, b - MERSENNE_61  # [k]; b - P < 0 keeps the sum below 2**63
        xh, xl = (salted >> 31).unsqueeze(1), (salted & _MASK31).unsqueeze(1)  # [N, 1]
        m = self.buckets
        n = salted.numel()
        out = torch.empty(n, self.num_hashes, dtype=torch.float32, device=salted.device)
        chunk = _CHUNK_ELEMENTS_CPU if salted.device.type == "cpu" else _CHUNK_ELEMENTS_ACCEL
        step = max(1, chunk // self.num_hashes)
        for s in range(0, n, step):
            h = _hash_rows(xh[s:s + step], xl[s:s + step], ah, al, ah2, b_minus_p, m)  # [n, k] in [0, m)
            if self.encoding == "uniform":
                out[s:s + step] = h.to(torch.float32) * (2.0 / (m - 1)) - 1.0
            else:
                u = h.to(torch.float64)
                u1 = (u[:, 0::2] + 1.0) / m  # (0, 1]
                u2 = u[:, 1::2] / m  # [0, 1)
                radius = torch.sqrt(-2.0 * torch.log(u1))
                z = torch.stack([radius * torch.cos(2 * math.pi * u2),
                                 radius * torch.sin(2 * math.pi * u2)], dim=2)
                out[s:s + step] = z.reshape(h.shape[0], -1).to(torch.float32)
        return out

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        dtype = self.mlps[0][0].weight.dtype
        if ids.numel() == 0:
            return torch.zeros(0, self.dim, device=ids.device, dtype=dtype)
        salted = self.field_hash.raw(ids, fields=fields)  # [N]: equal values <=> equal encodings
        if not self.per_feature:
            return self._embed_salted(self.mlps[0], salted, dtype)
        out = torch.zeros(ids.numel(), self.dim, device=ids.device, dtype=dtype)
        which = self._field_mlp[fields]
        for g, mlp in enumerate(self.mlps):
            sel = (which == g).nonzero().squeeze(1)
            if sel.numel():
                out = out.index_put((sel,), self._embed_salted(mlp, salted[sel], dtype))
        return out

    def _embed_salted(self, mlp: nn.Sequential, salted: Tensor, dtype: torch.dtype) -> Tensor:
        """``mlp(encode(...))`` for all ``N`` rows, computed on the distinct values only.

        Same function as the plain all-rows pass, BatchNorm included: batch statistics are
        count-weighted over the distinct rows (:func:`_mlp_distinct`), i.e. still taken over
        all ``N`` occurrences. Equal up to float rounding (summation order), gradients too.
        """
        uniq, inverse, counts = torch.unique(salted, return_inverse=True, return_counts=True)
        if uniq.numel() == salted.numel():  # nothing repeats: the plain pass
            return mlp(self.encode_salted(salted).to(dtype))
        return _mlp_distinct(mlp, self.encode_salted(uniq).to(dtype), inverse, counts)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_hashes={self.num_hashes}, hidden={self.hidden}, "
            f"num_layers={self.num_layers}, activation={self.activation!r}, encoding={self.encoding!r}, "
            f"per_feature={self.per_feature}"
        )


def _check_dims(features: Sequence[Feature]) -> None:
    dims = sorted({f.embedding_dim for f in features})
    if len(dims) != 1:
        raise ValueError(f"DHETable needs one embedding_dim for all features, got {dims}; build one table per dim")


class DHEEmbeddingBag(EmbeddingBag):
    """Drop-in for ``nn.EmbeddingBag`` backed by a one-feature :class:`DHETable`.

    Same constructor (plus DHE's arguments, keyword-only) and forward ``(input, offsets=None,
    per_sample_weights=None)``: input ``[B, L]`` or ``[N]`` with ``offsets``; returns ``[B, D]``.
    ``num_embeddings`` is the id space (``2**63`` for vocabulary-free use); any non-negative id
    in it works. Not supported (they raise): ``max_norm``, ``scale_grad_by_freq``,
    ``sparse=True``, ``_weight``. ``padding_idx`` ids are left out of their bags.

    Example::

        >>> bag = DHEEmbeddingBag(2**63, 16, mode="sum", hidden=64)
        >>> bag(torch.tensor([1, 2**40, 5]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    fixed_method = "dhe"


# ---------------------------------------------------------------------------------------------
# fast path helpers: the hash encoding and the MLP over distinct ids
# ---------------------------------------------------------------------------------------------
def _hash_rows(xh: Tensor, xl: Tensor, ah: Tensor, al: Tensor, ah2: Tensor, b_minus_p: Tensor,
               m: int) -> Tensor:
    """``((a_j x_i + b_j) mod P) mod m`` as ``LongTensor[n, k]``, exact, no int64 overflow.

    ``x = xh * 2**31 + xl`` (``xh [n, 1] < 2**30``, ``xl [n, 1] < 2**31``, so ``x < P``) and
    ``a = ah * 2**31 + al`` (``[k]``), ``ah2 = 2 * ah``, ``b_minus_p = b - P``. The split product
    of :func:`~.hashing.mulmod_p`, with ``2**62 = 2`` and ``2**61 = 1 (mod P)``::

        a x = 2 ah xh + (mid >> 30) + (mid & (2**30-1)) << 31 + (lo & P) + (lo >> 61)   (mod P)
        mid = ah xl + al xh < 2**62,   lo = al xl < 2**62

    The five terms sum below ``3 * 2**61 + 2**32 + 2``; adding ``b - P`` (in ``[-P, 0)``) keeps
    ``t`` in ``[-P, 2**63)``, so one fold ``(t & P) + (t >> 61)`` (arithmetic shift: ``-1`` for
    ``t < 0``) lands in ``[0, 2**61 + 3)`` and one conditional subtraction in ``[0, P)``. That is
    one fold fewer than ``universal_hash`` (which folds before and after adding ``b``); the
    ``[n, k]`` temporaries are updated in place where possible.
    """
    t = ah2 * xh  # < 2**61
    mid = ah * xl
    mid += al * xh  # < 2**62
    t += mid >> 30
    t += mid.bitwise_and_(_MASK30).bitwise_left_shift_(31)
    lo = al * xl  # < 2**62
    t += lo & MERSENNE_61
    t += lo.bitwise_right_shift_(61)
    t += b_minus_p  # in [-P, 3 * 2**61 + 2**32 + 2)
    h = t & MERSENNE_61
    h += t.bitwise_right_shift_(61)  # [0, 2**61 + 3), = a x + b (mod P)
    h = torch.where(h >= MERSENNE_61, h - MERSENNE_61, h)
    return h.remainder_(m)


_ROWWISE = (nn.Linear, nn.Identity, *ACTIVATIONS.values())


def _mlp_distinct(mlp: nn.Sequential, x: Tensor, inverse: Tensor, counts: Tensor) -> Tensor:
    """``mlp(x[inverse])`` computed on the distinct rows ``x [U, k]``; returns ``[N, d]``.

    Row-wise modules (Linear, activations, BatchNorm on running statistics) run on the ``U``
    rows. BatchNorm on batch statistics runs :func:`_batch_norm_counted`: the statistics of the
    ``N`` rows ``x[inverse]`` from the distinct rows weighted by their ``counts`` — the same
    values (up to summation order), the same running-statistics update, and (through autograd)
    the same gradients as BatchNorm over all ``N`` rows. Any other module (user-modified MLPs)
    gets the expanded rows, so the result is still exactly ``mlp(x[inverse])``.
    """
    total = inverse.numel()
    layers = list(mlp)
    for i, layer in enumerate(layers):
        if isinstance(layer, _ROWWISE):
            x = layer(x)
        elif isinstance(layer, nn.BatchNorm1d) and x.dim() == 2:
            x = _batch_norm_counted(layer, x, counts, total)
        else:
            x = x[inverse]
            for rest in layers[i:]:
                x = rest(x)
            return x
    return x[inverse]


def _batch_norm_counted(bn: nn.BatchNorm1d, x: Tensor, counts: Tensor, total: int) -> Tensor:
    """``bn`` applied to ``N = total`` rows, row ``u`` of ``x [U, C]`` occurring ``counts[u]`` times.

    Mirrors ``nn.BatchNorm1d.forward`` (momentum / cumulative average, ``num_batches_tracked``,
    ``track_running_stats``, eval mode); only the batch statistics are count-weighted sums.
    """
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if not batch_stats:  # eval on running statistics: row-wise
        return bn(x)
    if total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size([total, x.shape[1]])}")
    low = x.dtype in (torch.float16, torch.bfloat16)
    xs = x.float() if low else x
    c = counts.to(xs.dtype)
    mean = (c @ xs) / total  # [C]
    xc = xs - mean
    var = (c @ (xc * xc)) / total  # biased, as BatchNorm normalises with
    y = xc * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(y.dtype) + bn.bias.to(y.dtype)
    update = (bn.training and bn.track_running_stats and bn.running_mean is not None
              and bn.running_var is not None)
    if update:
        with torch.no_grad():
            rm, rv = bn.running_mean, bn.running_var
            rm.mul_(1 - factor).add_(mean.detach().to(rm.dtype), alpha=factor)
            rv.mul_(1 - factor).add_((var.detach() * (total / (total - 1))).to(rv.dtype), alpha=factor)
    return y.to(x.dtype) if low else y
