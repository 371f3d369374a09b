"""Synthetic Criteo-like data with a planted teacher: the project's embedded default dataset.

Shape: like Criteo Kaggle, 13 dense (``I1..I13``) + 26 categorical (``C1..C26``) fields.

* **Cardinalities**: Criteo Kaggle's per-field profile (:data:`.criteo.CRITEO_KAGGLE_CARDINALITIES`)
  scaled by ``scale``; fields up to ``small_field_max`` values keep their size, larger ones get
  ``max(small_field_max, round(n * scale))``. The default ``scale=0.02`` gives 733,755 values in
  total (Criteo: 33.8M).
* **Frequencies**: Zipf-like per field: value rank ``r`` (0 = most frequent) has probability
  ``∝ ∫_{r+1}^{r+2} x^-s dx`` (a discretised bounded power law, exponent ``zipf_exponent``),
  sampled by inverting its CDF in closed form (no per-value tables). Ranks are mapped to value
  indices by a seeded permutation, so ids carry no frequency order.
* **Missing values**: per-field rates estimated from the first 1,999 rows of Criteo Kaggle
  (several C fields ~48%, C22 ~82%; I1/I10 ~45%, I12 ~78%).
* **Dense**: heavy-tailed non-negative counts: 0 with the field's zero rate, else
  ``max(1, round(exp(N(mu, sigma))))`` with log-moments estimated from the same rows.
* **Teacher** (labels): ``logit = bias + a·Σ_f u_f w_f[v_f] + b·Σ_{f<g} u'_f u'_g <V_f[v_f], V_g[v_g]>
  + c·dense(x) + noise``, with per-value first-order weights ``w`` and latent vectors ``V``
  (``latent_dim``), per-field importances ``u, u'``, and a dense part (linear + quadratic in the
  standardised ``log1p(x)``; with ``dense_missing="own"`` also missing indicators, with ``"zero"``
  a missing count acts as 0, as preprocessing shows it). Each value's weight and vector are scaled
  by ``(p_v / p_max)^signal_gamma``: **rare values carry less signal than frequent ones**, as on
  real Criteo, where per-feature hashing at ~10x costs only ~0.01 AUC. The missing value of a
  field is a full-strength value. Each part is rescaled on a calibration sample to the standard
  deviation given by its knob (``first_order_std``, ``interaction_std``, ``dense_std``), and the
  bias is set by bisection so the mean click probability is ``target_ctr`` (0.25).

**Profiles** (:data:`PROFILES`) name the knob sets. ``v2``, the default, is calibrated (see
``examples/reproduce/calibrate_synthetic.py`` and the README's calibration section). On 2M rows, one epoch
of DeepFM with full tables lands within 0.02 of the teacher's AUC, and folding every large field's
ids 10x loses 0.005-0.02 AUC (real Criteo, hashing at ~10x: 0.013). To get there from ``v1``:

- weaker pairwise interactions (0.3 std instead of 0.8). One epoch of DeepFM learns almost none
  of them: on a small-vocabulary control they widened the gap to the teacher by their whole worth;
- a flatter frequency profile with more signal in mid-frequency values (Zipf 0.9, gamma 0.25).
  That is the signal that collisions destroy;
- a dense part that sees missing counts as 0. The usual ``log(x + 1)`` preprocessing hides
  missingness, and that cost ~0.003 AUC nobody could learn.

``v1`` is the generator that the earlier results in ``docs/results`` used, kept bit for bit.

The report gives the teacher's own AUC on the test part (``roc_auc_score`` of the teacher's
noiseless logits against the sampled labels): the best any model can do, by construction.
Generation is vectorized in chunks of 2**16 rows, each from its own seeded stream, so the first
``n`` rows are the same for any ``rows >= n`` (n a multiple of 2**16) and any machine.

Outputs: ``format="processed"`` writes the processed format (dense as ``log(x + 1)``, like
:func:`~.preprocess.prepare_criteo`'s default; ids: 0 = OOV (unused here), 1 = missing,
``2 + value index`` otherwise, so ``num_embeddings = n_f + 2``; the split is the same seeded hash
of the row index as ``prepare_criteo(split=(8, 1, 1), seed=seed)``; plus ``<split>/teacher.npy``,
the teacher's click probabilities, float32 [N]). ``format="tsv"`` writes raw Criteo TSV
(``train.txt``, or ``day_0..day_{k-1}`` with ``num_files=k``): 8-hex-digit category strings
from a per-(field, value) bijective hash, integers for dense fields, empty for missing, so the
real parser runs at any scale.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from .criteo import CRITEO_CATEGORICAL, CRITEO_DENSE, CRITEO_KAGGLE_CARDINALITIES, CRITEO_LABEL
from .ids import mix64, random_split
from .npyio import NpyAppender
from .preprocess import log_dense, peak_rss_mb
from .schema import CategoricalColumn, Schema
from .writer import FORMAT_VERSION, SPLITS, staged_dir

PathLike = Union[str, Path]

#: Missing rates of C1..C26, measured on the first 1,999 rows of Criteo Kaggle train.txt.
CRITEO_MISSING_RATES: Tuple[float, ...] = (
    0.0, 0.0, 0.033, 0.033, 0.0, 0.126, 0.0, 0.0, 0.0, 0.0, 0.0, 0.033, 0.0, 0.0, 0.0, 0.033,
    0.0, 0.0, 0.483, 0.483, 0.033, 0.816, 0.0, 0.033, 0.483, 0.483,
)
#: I1..I13 profile from the same rows: (missing rate, zero rate among present, mean and std of
#: ln(x) over x > 0).
CRITEO_DENSE_PROFILE: Tuple[Tuple[float, float, float, float], ...] = (
    (0.445, 0.475, 1.20, 1.10), (0.000, 0.291, 2.80, 2.25), (0.225, 0.009, 1.99, 1.47),
    (0.210, 0.087, 1.64, 1.06), (0.047, 0.017, 7.34, 2.75), (0.247, 0.066, 3.80, 1.70),
    (0.047, 0.252, 1.78, 1.37), (0.001, 0.125, 2.17, 1.15), (0.047, 0.034, 3.68, 1.69),
    (0.445, 0.507, 0.09, 0.25), (0.047, 0.268, 0.66, 0.81), (0.777, 0.719, 0.66, 0.90),
    (0.210, 0.062, 1.81, 1.19),
)

CHUNK_ROWS = 1 << 16
_CALIB_ROWS = 100_000
_SPLIT_WEIGHTS = (8.0, 1.0, 1.0)
#: Training rows (the first ones) behind the report's teacher_auc_train.
_AUC_TRAIN_ROWS = 1_000_000


#: Named presets of the teacher's knobs (see the module docstring, "Calibration").
PROFILES: Dict[str, Dict[str, Any]] = {
    # The first profile: strong pairwise interactions, which one epoch of DeepFM barely learns, and
    # signal packed into the head values, so DeepFM stays 0.031 below the teacher and a 10x fold
    # costs only 0.003 (docs/results/calibration_v1.md).
    "v1": {"zipf_exponent": 1.1, "signal_gamma": 0.3, "latent_dim": 8, "first_order_std": 1.05,
           "interaction_std": 0.8, "dense_std": 0.5, "noise_std": 0.0, "dense_missing": "own"},
    "v2": {"zipf_exponent": 0.9, "signal_gamma": 0.25, "latent_dim": 8, "first_order_std": 1.3,
           "interaction_std": 0.3, "dense_std": 0.5, "noise_std": 0.0, "dense_missing": "zero"},
}
DEFAULT_PROFILE = "v2"
#: The teacher's two treatments of a missing I-field (see :class:`Teacher`).
DENSE_MISSING = ("own", "zero")
#: What the ``meta.generator`` of data made before profiles existed leaves out: it is v1 data.
_PRE_PROFILE_META = {"profile": "v1", "dense_missing": "own"}


def generator_meta(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """A processed dataset's ``schema.json`` ``meta.generator``, with the keys that data generated
    before profiles existed lacks filled in with their (v1) values."""
    return {**_PRE_PROFILE_META, **meta}


def resolve_profile(profile: str, **overrides: Any) -> Dict[str, Any]:
    """The teacher knobs of ``profile`` with every non-``None`` override applied."""
    if profile not in PROFILES:
        raise ValueError(f"unknown synthetic profile {profile!r}; expected one of {sorted(PROFILES)}")
    unknown = set(overrides) - set(PROFILES[profile])
    if unknown:
        raise ValueError(f"unknown teacher knobs {sorted(unknown)}; allowed: {sorted(PROFILES[profile])}")
    knobs = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    for k, v in knobs.items():
        if k == "dense_missing":
            if v not in DENSE_MISSING:
                raise ValueError(f"teacher knob dense_missing must be one of {DENSE_MISSING}, got {v!r}")
        elif k == "latent_dim":
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"teacher knob latent_dim must be an integer >= 1, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"teacher knob {k} must be a finite number >= 0, got {v!r}")
    return knobs


def parse_knob(profile: str, item: str) -> Tuple[str, Any]:
    """``"NAME=VALUE"`` (command-line form) -> ``(NAME, VALUE)`` typed like the profile's knob:
    ``latent_dim`` an integer, ``dense_missing`` a string, the others floats."""
    base = resolve_profile(profile)
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not value or name not in base:
        raise ValueError(f"--knob {item!r}: expected NAME=VALUE with NAME one of {sorted(base)}")
    kind = type(base[name])
    try:
        typed = value if kind is str else kind(float(value)) if kind is float else int(value)
    except ValueError:
        raise ValueError(f"--knob {item!r}: {name} takes a{'n integer' if kind is int else ' number'}, "
                         f"got {value!r}") from None
    resolve_profile(profile, **{name: typed})  # range checks
    return name, typed


def synthetic_cardinalities(scale: float = 0.02, small_field_max: int = 10_000) -> List[int]:
    """Per-field value counts: Criteo Kaggle's, scaled (small fields keep their size)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return [c if c <= small_field_max else max(small_field_max, int(round(c * scale)))
            for c in CRITEO_KAGGLE_CARDINALITIES]


def zipf_probs(n: int, s: float) -> np.ndarray:
    """Probabilities of ranks ``0..n-1``: ``float64[n]`` (see the module docstring)."""
    x = np.arange(1, n + 2, dtype=np.float64)
    cdf = _cdf(x, n, s)
    return np.diff(cdf)


def _cdf(x: np.ndarray, n: int, s: float) -> np.ndarray:
    if abs(s - 1.0) < 1e-9:
        return np.log(x) / math.log(n + 1)
    return (x ** (1 - s) - 1) / ((n + 1) ** (1 - s) - 1)


def zipf_sample(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """Ranks ``int64[m]`` in ``[0, n)`` from uniforms ``u`` (inverse CDF, closed form)."""
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * math.log(n + 1))
    else:
        x = (1 + u * ((n + 1) ** (1 - s) - 1)) ** (1 / (1 - s))
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, n - 1)


def hex_strings(n: int, field_index: int, seed: int) -> pa.Array:
    """``n`` distinct 8-hex-digit strings for the values of one field (a 32-bit bijection of the
    value index, keyed by field and seed)."""
    v = np.arange(n, dtype=np.uint64)
    h = _perm32(v, field_index, seed)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    chars = digits[((h[:, None] >> shifts) & np.uint64(15)).astype(np.int64)]
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()),
                                       pa.py_buffer(np.ascontiguousarray(chars).tobytes()))


def _perm32(v: np.ndarray, field_index: int, seed: int) -> np.ndarray:
    """A keyed bijection of 32-bit integers (odd multiplies and xor-shifts mod 2**32)."""
    m = np.uint64(0xFFFFFFFF)
    k = mix64(np.array([field_index], dtype=np.uint64), seed=seed + 0xC817E0)[0]
    with np.errstate(over="ignore"):
        x = (v ^ (k & m)) & m
        for mult in (0x7FEB352D, 0x846CA68B, 0x9E3779B1):
            x = (x * np.uint64(mult)) & m
            x ^= x >> np.uint64(15)
        x = (x + (k >> np.uint64(32))) & m
    return x


@dataclass
class GenerateReport:
    """What :func:`generate` made (JSON-serialisable; also ``out_dir/report.json``)."""

    out_dir: str
    format: str
    files: List[str]
    rows: int
    rows_per_split: Dict[str, int]
    ctr: float
    ctr_per_split: Dict[str, float]
    teacher_auc: float
    teacher_auc_train: float
    teacher_logloss: float
    cardinalities: Dict[str, int]
    num_embeddings: Dict[str, int]
    total_vocabulary: int
    seconds: float
    rows_per_s: float
    peak_rss_mb: float
    knobs: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def save(self, path: PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


class Teacher:
    """The planted model: per-value weights and latent vectors, field importances, dense effects.

    Build with the generator's knobs; :meth:`sample` draws a chunk of rows and their logits.
    """

    def __init__(self, cardinalities: Sequence[int], *, seed: int, zipf_exponent: float,
                 signal_gamma: float, latent_dim: int, first_order_std: float,
                 interaction_std: float, dense_std: float, noise_std: float, target_ctr: float,
                 missing_rates: Sequence[float], field_importance_sigma: float = 0.5,
                 dense_missing: str = "own"):
        if zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
        if not 0 < target_ctr < 1:
            raise ValueError(f"target_ctr must be in (0, 1), got {target_ctr}")
        if dense_missing not in DENSE_MISSING:
            raise ValueError(f"dense_missing must be one of {DENSE_MISSING}, got {dense_missing!r}")
        self.dense_missing = dense_missing
        if len(missing_rates) != len(cardinalities):
            raise ValueError("missing_rates needs one rate per categorical field")
        self.n = [int(c) for c in cardinalities]
        self.seed = seed
        self.s = float(zipf_exponent)
        self.k = int(latent_dim)
        self.noise_std = float(noise_std)
        self.missing = np.asarray(missing_rates, dtype=np.float64)
        rng = np.random.default_rng([seed, 0x7EAC4E])
        F = len(self.n)
        self.u1 = np.exp(rng.normal(0, field_importance_sigma, F))
        self.u2 = np.exp(rng.normal(0, field_importance_sigma, F))
        self.w: List[np.ndarray] = []
        self.V: List[np.ndarray] = []
        self.perm: List[np.ndarray] = []
        for f, n in enumerate(self.n):
            frng = np.random.default_rng([seed, 0xF1E1D, f])
            p = zipf_probs(n, self.s)
            shrink = (p / p[0]) ** signal_gamma
            # row n is the missing value: full strength
            w = np.empty(n + 1, dtype=np.float32)
            w[:n] = frng.standard_normal(n) * shrink
            w[n] = frng.standard_normal()
            V = np.empty((n + 1, self.k), dtype=np.float32)
            V[:n] = frng.standard_normal((n, self.k)) * (shrink[:, None] / math.sqrt(self.k))
            V[n] = frng.standard_normal(self.k) / math.sqrt(self.k)
            self.w.append(w * np.float32(self.u1[f]))
            self.V.append(V * np.float32(self.u2[f]))
            self.perm.append(frng.permutation(n))
        drng = np.random.default_rng([seed, 0xDE45E])
        self.beta = drng.normal(0, 1, 13)
        self.gamma = drng.normal(0, 0.5, 13)
        self.delta = drng.normal(0, 0.5, 13)
        # calibration: standardisation of log1p(x), scales of the three parts, bias
        self.z_mean = np.zeros(13)
        self.z_std = np.ones(13)
        self.scale = np.ones(3)
        self.center = np.zeros(3)
        self.bias = 0.0
        ranks, dense, dmiss = self.draw(np.random.default_rng([seed, 0xCA11B]), _CALIB_ROWS)
        lx = np.log1p(dense)
        dmiss = self._seen_missing(dmiss)
        for j in range(13):
            present = ~dmiss[:, j]
            if present.any():
                self.z_mean[j] = lx[present, j].mean()
                self.z_std[j] = max(lx[present, j].std(), 1e-6)
        parts = self.parts(ranks, dense, dmiss)
        self.center = parts.mean(axis=0)
        stds = parts.std(axis=0)
        want = np.array([first_order_std, interaction_std, dense_std], dtype=np.float64)
        self.scale = np.where(stds > 0, want / np.maximum(stds, 1e-12), 0.0)
        z = self.logit_from_parts(parts)
        eps = np.random.default_rng([seed, 0xE995]).standard_normal(len(z)) * self.noise_std
        lo, hi = -30.0, 30.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if _sigmoid(z + eps + mid).mean() < target_ctr:
                lo = mid
            else:
                hi = mid
        self.bias = 0.5 * (lo + hi)

    def draw(self, rng: np.random.Generator, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``m`` rows: ranks ``int64[m, 26]`` (-1 = missing), dense counts
        ``int64[m, 13]`` (0 where missing) and the dense missing mask ``bool[m, 13]``."""
        F = len(self.n)
        ranks = np.empty((m, F), dtype=np.int64)
        for f, n in enumerate(self.n):
            r = zipf_sample(rng.random(m), n, self.s)
            r[rng.random(m) < self.missing[f]] = -1
            ranks[:, f] = r
        dense = np.empty((m, 13), dtype=np.int64)
        dmiss = np.empty((m, 13), dtype=bool)
        for j, (miss, zero, mu, sd) in enumerate(CRITEO_DENSE_PROFILE):
            x = np.exp(mu + sd * rng.standard_normal(m))
            x = np.maximum(1, np.rint(np.minimum(x, 1e12))).astype(np.int64)
            x[rng.random(m) < zero] = 0
            dm = rng.random(m) < miss
            x[dm] = 0
            dense[:, j] = x
            dmiss[:, j] = dm
        return ranks, dense, dmiss

    def parts(self, ranks: np.ndarray, dense: np.ndarray, dmiss: np.ndarray) -> np.ndarray:
        """The three raw logit parts ``float64[m, 3]``: first order, interactions, dense."""
        m = len(ranks)
        lin = np.zeros(m, dtype=np.float64)
        vsum = np.zeros((m, self.k), dtype=np.float64)
        vsq = np.zeros(m, dtype=np.float64)
        for f, n in enumerate(self.n):
            r = np.where(ranks[:, f] < 0, n, ranks[:, f])
            lin += self.w[f][r]
            v = self.V[f][r]
            vsum += v
            vsq += np.einsum("ij,ij->i", v, v)
        inter = 0.5 * (np.einsum("ij,ij->i", vsum, vsum) - vsq)
        dmiss = self._seen_missing(dmiss)
        z = (np.log1p(dense) - self.z_mean) / self.z_std
        z[dmiss] = 0.0
        dn = z @ self.beta + (z * z - 1.0) @ self.gamma + dmiss.astype(np.float64) @ self.delta
        return np.stack([lin, inter, dn], axis=1)

    def _seen_missing(self, dmiss: np.ndarray) -> np.ndarray:
        """The dense missing mask as the teacher uses it: ``"own"`` gives a missing value its own
        effect (standardised value 0 plus a per-field indicator weight); ``"zero"`` treats it as a
        count of 0 (``draw`` stores 0 there), as the usual ``log(x + 1)``-with-missing-as-0
        preprocessing shows it to a model."""
        return dmiss if self.dense_missing == "own" else np.zeros_like(dmiss)

    def logit_from_parts(self, parts: np.ndarray) -> np.ndarray:
        return (parts - self.center) @ self.scale + self.bias

    def labels(self, rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
        """Sample 0/1 labels ``int8[m]`` from noiseless logits (adding ``noise_std`` noise)."""
        z = logit + self.noise_std * rng.standard_normal(len(logit))
        return (rng.random(len(logit)) < _sigmoid(z)).astype(np.int8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def generate(out_dir: PathLike, rows: int = 1_000_000, *, profile: str = DEFAULT_PROFILE,
             scale: float = 0.02, seed: int = 0, format: str = "processed",
             zipf_exponent: Optional[float] = None, signal_gamma: Optional[float] = None,
             latent_dim: Optional[int] = None, first_order_std: Optional[float] = None,
             interaction_std: Optional[float] = None, dense_std: Optional[float] = None,
             noise_std: Optional[float] = None, dense_missing: Optional[str] = None,
             target_ctr: float = 0.25,
             small_field_max: int = 10_000, missing_rates: Optional[Sequence[float]] = None,
             num_files: int = 1, progress: bool = False, workers: Optional[int] = 1) -> GenerateReport:
    """Generate a synthetic Criteo-like dataset (see the module docstring for the model).

    Args:
        out_dir: output directory.
        rows: number of rows.
        profile: the teacher's knob preset (:data:`PROFILES`): ``"v2"`` (default, calibrated
            against real Criteo) or ``"v1"`` (the earlier, uncalibrated one). Each knob below
            left at ``None`` takes the profile's value; a knob given explicitly overrides it.
        scale: cardinality scale of the large fields (0.02: ~730k values in total).
        seed: everything (teacher, rows, split) derives from it.
        format: ``"processed"`` (loader-ready) or ``"tsv"`` (raw Criteo text).
        zipf_exponent: frequency exponent ``s`` of every field.
        signal_gamma: rare-value shrink: a value's effects scale as ``(p / p_max)^gamma``
            (0 = every value equally strong).
        latent_dim: teacher latent size ``k`` of the pairwise interactions.
        first_order_std, interaction_std, dense_std: standard deviation of each logit part.
        noise_std: Gaussian logit noise (not seen by the teacher AUC's scores).
        dense_missing: ``"own"`` (a missing I-field has its own effect, which the usual
            preprocessing hides by storing 0) or ``"zero"`` (the teacher sees a missing count as 0).
        target_ctr: mean click probability (bias set by bisection).
        small_field_max: fields up to this size keep their Criteo cardinality.
        missing_rates: per C-field missing rates (default :data:`CRITEO_MISSING_RATES`).
        num_files: TSV only: write ``day_0..day_{k-1}`` instead of ``train.txt``.
        progress: show a tqdm bar.
        workers: TSV only: processes writing chunks (``None``: every core); the files are the
            same bytes for any value (:func:`.parallel.write_tsv_parallel`).

    Returns:
        a :class:`GenerateReport` (also ``out_dir/report.json``; knobs also in the schema meta).

    Example::

        >>> import tempfile
        >>> rep = generate(tempfile.mkdtemp(), rows=200_000, seed=0)
        >>> rep.ctr, rep.teacher_auc
        (0.24999, 0.80627)
    """
    if format not in ("processed", "tsv"):
        raise ValueError(f"format must be 'processed' or 'tsv', got {format!r}")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if format != "tsv" and workers not in (1, None):
        raise ValueError(f"workers applies to format='tsv' only, got workers={workers!r}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    teacher_knobs = resolve_profile(profile, zipf_exponent=zipf_exponent, signal_gamma=signal_gamma,
                                    latent_dim=latent_dim, first_order_std=first_order_std,
                                    interaction_std=interaction_std, dense_std=dense_std,
                                    noise_std=noise_std, dense_missing=dense_missing)
    # written in a sibling temporary directory, swapped in when complete (after the checks: a
    # bad knob leaves no directory); a failure leaves out_dir as it was
    with staged_dir(out) as work:
        cards = synthetic_cardinalities(scale, small_field_max)
        knobs = {"rows": rows, "profile": profile, "scale": scale, "seed": seed, **teacher_knobs,
                 "target_ctr": target_ctr, "small_field_max": small_field_max,
                 "missing_rates": list(missing_rates or CRITEO_MISSING_RATES)}
        teacher = Teacher(cards, seed=seed, target_ctr=target_ctr, missing_rates=knobs["missing_rates"],
                          **teacher_knobs)
        files: List[str] = []
        if format == "processed":
            apps = {s: {"labels": NpyAppender(work / s / "labels.npy", np.float32),
                        "dense": NpyAppender(work / s / "dense.npy", np.float32, (13,)),
                        "sparse": NpyAppender(work / s / "sparse.npy", np.int64, (26,)),
                        "teacher": NpyAppender(work / s / "teacher.npy", np.float32)} for s in SPLITS}
            writers = None
        else:
            names = ["train.txt"] if num_files == 1 else [f"day_{i}" for i in range(num_files)]
            files = [str(out / nm) for nm in names]  # the report names the final paths
            work_files = [str(work / nm) for nm in names]
            bounds = np.linspace(0, rows, num_files + 1).round().astype(np.int64)
            hexes = [hex_strings(n, f, seed) for f, n in enumerate(cards)]
            wopt = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
            tsv_schema = pa.schema([(CRITEO_LABEL, pa.int8())] + [(c, pa.int64()) for c in CRITEO_DENSE]
                                   + [(c, pa.string()) for c in CRITEO_CATEGORICAL])
            writers = [pcsv.CSVWriter(p, tsv_schema, write_options=wopt) for p in work_files]
        counts = {s: 0 for s in SPLITS}
        pos = {s: 0 for s in SPLITS}
        test_z: List[np.ndarray] = []
        test_y: List[np.ndarray] = []
        train_z: List[np.ndarray] = []
        train_y: List[np.ndarray] = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=rows, unit="rows", unit_scale=True, desc="generate")
        n_chunks = math.ceil(rows / CHUNK_ROWS)

        def draw_chunk(c: int):
            lo = c * CHUNK_ROWS
            m = min(CHUNK_ROWS, rows - lo)
            rng = np.random.default_rng([seed, 0x0C4E, c])
            ranks, dense, dmiss = teacher.draw(rng, m)
            z = teacher.logit_from_parts(teacher.parts(ranks, dense, dmiss))
            y = teacher.labels(rng, z)
            row_index = np.arange(lo, lo + m, dtype=np.int64)
            split = random_split(row_index, _SPLIT_WEIGHTS, seed)
            values = np.empty_like(ranks)
            for f in range(len(cards)):
                r = ranks[:, f]
                values[:, f] = np.where(r < 0, -1, teacher.perm[f][np.maximum(r, 0)])
            return lo, m, y, z, split, dense, dmiss, values

        def tsv_slices(lo, m, y, dense, dmiss, values):
            """``[(file index, table)]``: the chunk's rows as TSV tables, cut at file bounds."""
            cols = [pa.array(y)] + [pa.array(dense[:, j], mask=dmiss[:, j]) for j in range(13)]
            for f in range(len(cards)):
                v = values[:, f]
                cols.append(pc.take(hexes[f], pa.array(np.maximum(v, 0), mask=v < 0)))
            table = pa.Table.from_arrays(cols, schema=tsv_schema)
            out_sl = []
            for k in range(num_files):
                a, b = max(lo, int(bounds[k])), min(lo + m, int(bounds[k + 1]))
                if a < b:
                    out_sl.append((k, table.slice(a - lo, b - a)))
            return out_sl

        from .parallel import resolve_workers, write_tsv_parallel

        if format == "tsv" and resolve_workers(workers) > 1:
            def make_chunk(c: int):
                lo, m, y, z, split, dense, dmiss, values = draw_chunk(c)
                # only the first chunks can hold the (up to) 1M training rows of the train AUC
                keep_train = lo < 2 * _AUC_TRAIN_ROWS
                extra = (m, [int((split == i).sum()) for i in range(3)],
                         [int(y[split == i].sum()) for i in range(3)], z[split == 2], y[split == 2],
                         z[split == 0] if keep_train else None, y[split == 0] if keep_train else None)
                return tsv_slices(lo, m, y, dense, dmiss, values), extra

            for w in writers:
                w.close()
            extras = write_tsv_parallel(make_chunk, n_chunks, work_files, resolve_workers(workers),
                                        work / ".tsv_parts")
        else:
            extras = None
        for c in range(n_chunks):
            if extras is not None:
                m, n_by, pos_by, tz_c, ty_c, rz_c, ry_c = extras[c]
                for i, s in enumerate(SPLITS):
                    counts[s] += n_by[i]
                    pos[s] += pos_by[i]
                test_z.append(tz_c)
                test_y.append(ty_c)
                if sum(len(a) for a in train_z) < _AUC_TRAIN_ROWS:
                    if rz_c is None:
                        raise RuntimeError("generate: too few training rows in the first chunks")
                    train_z.append(rz_c)
                    train_y.append(ry_c)
                if bar is not None:
                    bar.update(m)
                continue
            lo, m, y, z, split, dense, dmiss, values = draw_chunk(c)
            for i, s in enumerate(SPLITS):
                sel = split == i
                counts[s] += int(sel.sum())
                pos[s] += int(y[sel].sum())
            test_z.append(z[split == 2])
            test_y.append(y[split == 2])
            if sum(len(a) for a in train_z) < _AUC_TRAIN_ROWS:
                train_z.append(z[split == 0])
                train_y.append(y[split == 0])
            if format == "processed":
                ids = np.where(values < 0, 1, values + 2)
                ld = log_dense(dense, dmiss)
                p = _sigmoid(z).astype(np.float32)
                for i, s in enumerate(SPLITS):
                    sel = split == i
                    if sel.any():
                        apps[s]["labels"].append(y[sel].astype(np.float32))
                        apps[s]["dense"].append(ld[sel])
                        apps[s]["sparse"].append(ids[sel])
                        apps[s]["teacher"].append(p[sel])
            else:
                for k, sl in tsv_slices(lo, m, y, dense, dmiss, values):
                    writers[k].write_table(sl)
            if bar is not None:
                bar.update(m)
        if bar is not None:
            bar.close()
        from sklearn.metrics import roc_auc_score

        tz, ty = np.concatenate(test_z), np.concatenate(test_y)
        rz, ry = np.concatenate(train_z), np.concatenate(train_y)
        auc = float(roc_auc_score(ty, tz)) if 0 < ty.sum() < len(ty) else float("nan")
        auc_tr = float(roc_auc_score(ry, rz)) if 0 < ry.sum() < len(ry) else float("nan")
        names = list(CRITEO_CATEGORICAL)
        num_emb = {nm: n + 2 for nm, n in zip(names, cards)}
        secs = time.perf_counter() - t0
        rep = GenerateReport(
            out_dir=str(out), format=format, files=files, rows=rows, rows_per_split=counts,
            ctr=float(sum(pos.values()) / rows),
            ctr_per_split={s: (pos[s] / counts[s] if counts[s] else 0.0) for s in SPLITS},
            teacher_auc=round(auc, 5), teacher_auc_train=round(auc_tr, 5),
            teacher_logloss=round(_logloss(ty, _sigmoid(tz)), 5) if len(ty) else float("nan"),
            cardinalities=dict(zip(names, cards)), num_embeddings=num_emb,
            total_vocabulary=int(sum(cards)), seconds=round(secs, 3),
            rows_per_s=round(rows / max(secs, 1e-9), 1), peak_rss_mb=round(peak_rss_mb(), 1),
            knobs={**knobs, "bias": teacher.bias})
        if format == "processed":
            for d in apps.values():
                for a in d.values():
                    a.close()
            schema = Schema(
                label=CRITEO_LABEL, dense=list(CRITEO_DENSE),
                categorical=[CategoricalColumn(nm, num_emb[nm]) for nm in names],
                meta={"source": "synthetic", "format_version": FORMAT_VERSION, "splits": counts,
                      "dense": "log", "split": list(_SPLIT_WEIGHTS), "seed": seed,
                      "id_layout": "0 = OOV (unused), 1 = missing, 2 + value index",
                      "generator": {**knobs, "bias": teacher.bias, "teacher_auc": rep.teacher_auc,
                                    "cardinalities": cards}})
            schema.save(work / "schema.json")
        else:
            for w in writers:
                w.close()
        rep.save(work / "report.json")
        return rep
