"""The project's one hash family: exact arithmetic, pinned outputs, cross-process determinism."""

import random
import subprocess
import sys

import pytest
import torch

from slimembed.tables.hashing import (
    MERSENNE_61,
    HashFamily,
    coefficients,
    derive_seed,
    hash_ids,
    hash_sign,
    mod_p,
    mulmod_p,
    universal_hash,
)

P = MERSENNE_61
IDS = [0, 1, 2, 12345, 2**40 + 7, 2**62 + 3, 2**63 - 1, -1, -(2**63)]


def ref_hash(x: int, a: int, b: int, m: int) -> int:
    """Pure-Python big-int reference: ids read as unsigned 64-bit."""
    return ((a * ((x % 2**64) % P) + b) % P) % m


def test_mulmod_matches_python_bigints():
    rng = random.Random(0)
    a = [rng.randrange(P) for _ in range(3000)] + [P - 1, 0, 1, 2**31, 2**61 - 2]
    x = [rng.randrange(P) for _ in range(3000)] + [P - 1, P - 1, 2**31 - 1, 2**60, 2**61 - 2]
    got = mulmod_p(torch.tensor(a), torch.tensor(x)).tolist()
    assert got == [ai * xi % P for ai, xi in zip(a, x)]


def test_mod_p_any_int64_as_unsigned():
    xs = IDS + [P, P - 1, 2**61, 2 * P, -5, -P]
    assert mod_p(torch.tensor(xs)).tolist() == [(x % 2**64) % P for x in xs]


def test_universal_hash_matches_reference_for_all_int64():
    rng = random.Random(1)
    n = 4000
    x = [rng.randrange(-(2**63), 2**63) for _ in range(n)] + IDS
    a = [rng.randrange(1, P) for _ in range(len(x))]
    b = [rng.randrange(P) for _ in range(len(x))]
    m = 1_000_003
    got = universal_hash(torch.tensor(x), torch.tensor(a), torch.tensor(b), m).tolist()
    assert got == [ref_hash(xi, ai, bi, m) for xi, ai, bi in zip(x, a, b)]
    # per-element bucket counts (tensor num_buckets) too
    ms = [rng.randrange(1, 10**9) for _ in range(len(x))]
    got = universal_hash(torch.tensor(x), torch.tensor(a), torch.tensor(b), torch.tensor(ms)).tolist()
    assert got == [ref_hash(xi, ai, bi, mi) for xi, ai, bi, mi in zip(x, a, b, ms)]


def test_golden_values():
    assert coefficients(0, "", 2).tolist() == [
        [1416333544553503050, 2146610805042223449],
        [2044657584125956055, 680683061014899275],
    ]
    assert coefficients(42, "C1", 1).tolist() == [[1686068881956922235, 1613996527470857798]]
    ids = torch.tensor(IDS)
    assert hash_ids(ids, 1000, seed=0, salt="C1").tolist() == [960, 90, 220, 3, 908, 659, 350, 919, 480]
    assert hash_ids(ids, P, seed=7, salt=3, index=1).tolist() == [
        111809548385319726, 1912505979077839828, 1407359400556665979, 1382637627536291276,
        1030026907775702939, 2197762674206838383, 902212822035492130, 1187469517164490685,
        397066243514318281,
    ]
    assert hash_sign(ids, seed=0, salt="C1").tolist() == [-1, 1, -1, 1, 1, -1, -1, 1, 1]
    assert derive_seed(0, "C1") == 419937461041281568
    assert derive_seed(1, "C1") == 8536556821252962575


_SNIPPET = r"""
import torch, json
torch.set_num_threads(1)
from slimembed.tables.hashing import HashFamily, hash_ids, hash_sign
ids = torch.arange(-50, 50) * 1_000_000_007 + 2**40
fam = HashFamily(3, seed=11, salts=["C1", "C2"], with_sign=True)
dense = ids.view(50, 2)
out = {
  "h": hash_ids(ids, 977, seed=5, salt="x").tolist(),
  "s": hash_sign(ids, seed=5, salt="x").tolist(),
  "fam": fam(dense, 1000, index=2).tolist(),
  "famsign": fam.sign(dense, index=1).tolist(),
}
print(json.dumps(out))
"""


def test_same_hashes_in_a_fresh_process():
    import json

    res = subprocess.run([sys.executable, "-c", _SNIPPET], capture_output=True, text=True,
                         timeout=120, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert res.returncode == 0, res.stderr
    other = json.loads(res.stdout.strip().splitlines()[-1])
    torch.set_num_threads(2)
    ids = torch.arange(-50, 50) * 1_000_000_007 + 2**40
    fam = HashFamily(3, seed=11, salts=["C1", "C2"], with_sign=True)
    dense = ids.view(50, 2)
    assert other["h"] == hash_ids(ids, 977, seed=5, salt="x").tolist()
    assert other["s"] == hash_sign(ids, seed=5, salt="x").tolist()
    assert other["fam"] == fam(dense, 1000, index=2).tolist()
    assert other["famsign"] == fam.sign(dense, index=1).tolist()


def test_family_salts_fields_and_dense_agree():
    fam = HashFamily(2, seed=3, salts=["C1", "C2", "C3"], with_sign=True)
    dense = torch.randint(0, 2**62, (64, 3))
    fields = torch.arange(3).repeat(64)
    for j in range(2):
        a = fam(dense, 1000, index=j).reshape(-1)
        b = fam(dense.reshape(-1), 1000, index=j, fields=fields)
        assert torch.equal(a, b)
        # field f of the family is hash_ids with salt = the field's name
        for f, name in enumerate(["C1", "C2", "C3"]):
            assert torch.equal(fam(dense[:, f], 1000, index=j, fields=torch.full((64,), f)),
                               hash_ids(dense[:, f], 1000, seed=3, salt=name, index=j))
    assert torch.equal(fam.sign(dense).reshape(-1), fam.sign(dense.reshape(-1), fields=fields))
    # salts give different functions; seeds too
    x = torch.arange(1000)
    assert not torch.equal(hash_ids(x, 10**6, salt="C1"), hash_ids(x, 10**6, salt="C2"))
    assert not torch.equal(hash_ids(x, 10**6, seed=0), hash_ids(x, 10**6, seed=1))
    assert derive_seed(0, "C1") != derive_seed(0, "C2")
    assert derive_seed(0, 1) != derive_seed(0, "1")  # type-tagged: index 1 != name "1"


def test_buckets_and_signs_are_balanced():
    x = torch.randint(0, 2**62, (200_000,))
    counts = torch.bincount(hash_ids(x, 100, seed=9), minlength=100).float()
    expected = x.numel() / 100
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 200  # 99 dof: mean 99, sd 14
    s = hash_sign(x, seed=9)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.01
    # consecutive ids (label-encoded vocabularies) spread too
    c = torch.bincount(hash_ids(torch.arange(100_000), 97, seed=2), minlength=97)
    assert int(c.min()) > 900 and int(c.max()) < 1150


def test_large_and_negative_ids_hash_without_error():
    big = torch.tensor([2**40, 2**40 + 1, 2**62, 2**63 - 1])
    h = hash_ids(big, 1000)
    assert h.min() >= 0 and h.max() < 1000
    neg = torch.tensor([-1, -2])
    # documented: negative ids hash as their unsigned 64-bit pattern
    assert hash_ids(neg, 1000).tolist() == [ref_hash(-1, *coefficients(0, "", 1)[0].tolist(), 1000),
                                            ref_hash(-2, *coefficients(0, "", 1)[0].tolist(), 1000)]
    with pytest.raises(ValueError):
        hash_ids(big, 0)


def test_family_is_a_module_with_persistent_coefficients():
    fam = HashFamily(2, seed=4, salts=["a", "b"], with_sign=True)
    sd = fam.state_dict()
    assert set(sd) == {"coef", "sign_coef"} and sd["coef"].shape == (2, 2, 2)
    other = HashFamily(2, seed=5, salts=["a", "b"], with_sign=True)
    other.load_state_dict(sd)
    x = torch.randint(0, 2**40, (10, 2))
    assert torch.equal(other(x, 100), fam(x, 100))
    with pytest.raises(ValueError, match="salts"):
        fam(torch.arange(5), 10)  # 2 salts, no fields, last dim is not 2
