"""Deep Hash Embedding: the hash encoding, the MLP, memory, budgets and drop-in semantics."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import DHEEmbeddingBag, DHETable, Feature, make_table, make_table_from_config, memory_report
from slimembed.tables.hashing import MERSENNE_61, coefficients, derive_seed

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
CRITEO_LIKE = [Feature(f"C{i + 1}", max(math.ceil(n / 500), 2), 16) for i, n in enumerate(CRITEO)]
IDS = [0, 1, 12345, 2**40 + 7, 2**62 + 3]
FEATS = [Feature("user", 2**63, 8), Feature("item", 2**63, 8, "mean")]


def small(**kw):
    torch.manual_seed(0)
    return DHETable(FEATS, num_hashes=kw.pop("num_hashes", 64), hidden=kw.pop("hidden", 16), **kw)


def test_encoding_is_the_documented_universal_hash():
    t = small()
    ids = torch.tensor(IDS)
    enc = t.encode(ids, torch.ones_like(ids))  # field 1 ("item")
    assert enc.shape == (5, 64) and enc.dtype == torch.float32
    (a_f, b_f), = coefficients(0, "item", 1).tolist()
    ab = coefficients(derive_seed(0, "dhe"), "", 64).tolist()
    for row, x in enumerate(IDS):
        salted = (a_f * (x % MERSENNE_61) + b_f) % MERSENNE_61  # python big ints: exact
        for j in (0, 17, 63):
            h = ((ab[j][0] * salted + ab[j][1]) % MERSENNE_61) % 1_000_000
            assert enc[row, j].item() == pytest.approx(2 * h / 999_999 - 1, abs=1e-6)


def test_encoding_range_and_fields_differ():
    t = small()
    ids = torch.arange(2000)
    enc = t.encode(ids, torch.zeros_like(ids))
    assert enc.min() >= -1 and enc.max() <= 1 and enc.min() < -0.99 and enc.max() > 0.99
    assert abs(enc.mean().item()) < 0.02  # uniform on [-1, 1]
    assert torch.unique(enc, dim=0).shape[0] == 2000  # no two ids share an identifier
    other = t.encode(ids, torch.ones_like(ids))
    assert not torch.isclose(enc, other).all(dim=1).any()  # same id, other field: other code


def test_encoding_is_deterministic_in_a_fresh_process():
    code = (
        "import torch; from slimembed.tables import DHETable, Feature;"
        "t = DHETable([Feature('user', 2**63, 8), Feature('item', 2**63, 8)], num_hashes=64, hidden=4);"
        f"ids = torch.tensor({IDS}); e = t.encode(ids, torch.tensor([0, 1, 0, 1, 1]));"
        "print(repr(e.double().tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    there = torch.tensor(eval(out.stdout.strip()), dtype=torch.float64)
    here = small().encode(torch.tensor(IDS), torch.tensor([0, 1, 0, 1, 1])).double()
    assert torch.equal(here, there)


def test_gaussian_encoding():
    t = small(encoding="gaussian")
    enc = t.encode(torch.arange(4000), torch.zeros(4000, dtype=torch.long))
    assert abs(enc.mean().item()) < 0.02 and abs(enc.std().item() - 1) < 0.02
    with pytest.raises(ValueError, match="even"):
        DHETable(FEATS, num_hashes=63, encoding="gaussian")


def test_unseen_huge_ids_work_and_output_shape():
    t = small()
    ids = torch.tensor([[2**40 + 1, 2**62], [7, 2**63 - 1], [0, 3]])
    out = t(ids)
    assert out.shape == (3, 2, 8) and torch.isfinite(out).all()
    t.eval()
    assert torch.allclose(t(ids)[0], t(ids[:1])[0])  # eval: rows independent of the batch
    with pytest.raises(ValueError, match=r"'item' got id -5"):
        t(torch.tensor([[1, -5]]))


def test_mlp_architecture_and_memory_formula():
    k, w, d, layers = 64, 16, 8, 5
    t = small()
    mlp = t.mlps[0]
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(k, w)] + [(w, w)] * 4 + [(w, d)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in mlp) == layers
    assert sum(isinstance(m, torch.nn.Mish) for m in mlp) == layers
    rep = memory_report(t)
    params = (k + 1) * w + 4 * (w + 1) * w + (w + 1) * d + 2 * w * layers
    assert rep.param_bytes == 4 * params
    # BN running stats (2w floats + an int64 counter per layer), the k encoding functions' seed
    # (8 bytes: their coefficients are derived from it), the 2 fields' hash coefficients, index buffers
    assert rep.buffer_bytes == layers * (8 * w + 8) + 8 + 16 * 2 + 16 * 2
    assert rep.total_bytes == DHETable.memory_bytes(FEATS, w, num_hashes=k)
    per = small(per_feature=True, activation="relu")
    assert len(per.mlps) == 2 and isinstance(per.mlps[0][2], torch.nn.ReLU)
    assert memory_report(per).total_bytes == DHETable.memory_bytes(FEATS, w, num_hashes=k, per_feature=True)


@pytest.mark.parametrize("ratio", [2, 10, 100, 1000])
def test_budgets_land_from_below_within_one_width(ratio):
    full = sum(f.num_embeddings * 16 * 4 for f in CRITEO_LIKE)
    budget = int(full / ratio)
    minimum = DHETable.memory_bytes(CRITEO_LIKE, 1)
    if budget < minimum:
        with pytest.raises(ValueError, match=f"needs at least {minimum} bytes"):
            make_table("dhe", CRITEO_LIKE, compression=ratio)
        return
    t = make_table("dhe", CRITEO_LIKE, compression=ratio)
    assert memory_report(t).total_bytes <= budget
    assert DHETable.memory_bytes(CRITEO_LIKE, t.hidden + 1) > budget
    assert memory_report(t).total_bytes == DHETable.memory_bytes(CRITEO_LIKE, t.hidden)


def test_criteo_like_at_1000x_is_below_the_minimum():
    with pytest.raises(ValueError, match=r"'dhe' needs at least \d+ bytes.*hidden=1"):
        make_table("dhe", CRITEO_LIKE, compression=1000)


def test_dense_and_kjt_agree():
    t = small().eval()
    ids = torch.tensor([[5, 2**45], [9, 1], [5, 0]])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(6, dtype=torch.long))
    assert torch.allclose(t(kjt).values().view(3, 2, 8), t(ids), atol=1e-6)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([1, 2, 3, 4, 5]),
                                              lengths=torch.tensor([2, 0, 0, 3]))
    kt = t(kjt)
    rows = t(torch.tensor([[1, 3], [2, 4], [0, 5]]))
    assert torch.allclose(kt["user"][0], rows[0, 0] + rows[1, 0], atol=1e-6)
    assert torch.equal(kt["user"][1], torch.zeros(8)) and torch.equal(kt["item"][0], torch.zeros(8))
    assert torch.allclose(kt["item"][1], rows[:, 1].mean(0), atol=1e-6)  # mean pooling


def test_drop_in_matches_embedding_bag_semantics(embedding_bag_semantics):
    n = 50

    def make(**kw):
        torch.manual_seed(1)
        return DHEEmbeddingBag(n, 8, num_hashes=32, hidden=8, **kw).eval()

    def weight_of(bag):
        with torch.no_grad():
            ids = torch.arange(n)
            return bag.table.embed(ids, torch.zeros_like(ids))

    embedding_bag_semantics(make, weight_of, n, bad_id=-1)  # vocabulary-free: only negatives fail
    big = DHEEmbeddingBag(2**63, 8, mode="sum", num_hashes=32, hidden=8)
    assert big(torch.tensor([2**50, 3, 2**61]), torch.tensor([0, 1])).shape == (2, 8)


def test_training_step_and_state_dict_round_trip():
    t = small()
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    ids = torch.randint(0, 2**62, (32, 2))
    t(ids).pow(2).sum().backward()
    opt.step()
    assert int(t.mlps[0][1].num_batches_tracked) == 1
    clone = make_table_from_config(t.config())
    assert clone.config() == t.config()
    clone.load_state_dict(t.state_dict())
    t.eval(), clone.eval()
    assert torch.equal(t(ids), clone(ids))
    # the field salts' coefficients are stored; the k encoding functions keep only their seed
    assert "field_hash.coef" in t.state_dict() and "enc_hash.seed_value" in t.state_dict()


# ------------------------------------------------------------------ the fast path vs straightforward references
def _reference_encoding(t, salted):
    """Straightforward encoding: the project's ``universal_hash``, one function per column."""
    from slimembed.tables.hashing import universal_hash

    a, b = t.enc_hash.table()[0, :, 0], t.enc_hash.table()[0, :, 1]
    h = torch.stack([universal_hash(salted, int(a[j]), int(b[j]), t.buckets) for j in range(t.num_hashes)], 1)
    if t.encoding == "uniform":
        return h.to(torch.float32) * (2.0 / (t.buckets - 1)) - 1.0
    u = h.to(torch.float64)
    u1, u2 = (u[:, 0::2] + 1.0) / t.buckets, u[:, 1::2] / t.buckets
    r = torch.sqrt(-2.0 * torch.log(u1))
    z = torch.stack([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], dim=2)
    return z.reshape(h.shape[0], -1).to(torch.float32)


EDGE_SALTED = [0, 1, 2, 2**30 - 1, 2**30, 2**31 - 1, 2**31, 2**32 + 5, 2**60, MERSENNE_61 - 2, MERSENNE_61 - 1]


@pytest.mark.parametrize("encoding", ["uniform", "gaussian"])
def test_fast_encoding_equals_reference_bit_for_bit(encoding):
    t = small(encoding=encoding)
    gen = torch.Generator().manual_seed(3)
    salted = torch.cat([torch.tensor(EDGE_SALTED), torch.randint(0, MERSENNE_61, (600,), generator=gen)])
    fast = t.encode_salted(salted)  # 611 rows: several CPU chunks
    assert torch.equal(fast, _reference_encoding(t, salted))
    # python big ints for the edge values (no int64 arithmetic at all)
    ab = t.enc_hash.table()[0].tolist()
    for row, x in enumerate(EDGE_SALTED):
        for j in (0, 1, 31, 62, 63):
            h = ((ab[j][0] * x + ab[j][1]) % MERSENNE_61) % t.buckets
            if encoding == "uniform":
                want = torch.tensor(float(h), dtype=torch.float32) * (2.0 / (t.buckets - 1)) - 1.0
                assert torch.equal(fast[row, j], want)
    ids = torch.tensor(IDS)
    fields = torch.tensor([0, 1, 0, 1, 1])
    assert torch.equal(t.encode(ids, fields), _reference_encoding(t, t.field_hash.raw(ids, fields=fields)))


def _repeating_ids(b=96):
    gen = torch.Generator().manual_seed(0)
    hot = torch.tensor([0, 1, 7, 2**45, 2**62 + 3])
    ids = hot[torch.randint(0, 5, (b, 2), generator=gen)]
    ids[::7] = torch.randint(0, 2**62, (len(ids[::7]), 2), generator=gen)  # some ids seen once
    return ids


def _plain_pass(t, ids):
    """The straightforward computation: encode every occurrence, run each MLP on all its rows."""
    flat = ids.reshape(-1)
    fields = t.field_index(ids.shape[0], ids.device)
    enc = t.encode(flat, fields).to(t.mlps[0][0].weight.dtype)
    if not t.per_feature:
        return t.mlps[0](enc).view(*ids.shape, -1)
    out = torch.zeros(flat.numel(), t.dim, dtype=enc.dtype)
    for g, mlp in enumerate(t.mlps):
        sel = fields == g
        out[sel] = mlp(enc[sel])
    return out.view(*ids.shape, -1)


@pytest.mark.parametrize("variant", ["shared", "per_feature", "cumulative_bn", "eval", "other_module"])
def test_deduplicated_forward_backward_equals_the_all_rows_pass(variant):
    """Distinct ids run once; count-weighted BatchNorm keeps the all-occurrences batch statistics."""
    t = small(per_feature=variant == "per_feature").double()  # float64: only the math can differ
    ref = make_table_from_config(t.config()).double()
    ref.load_state_dict(t.state_dict())
    for table in (t, ref):
        if variant == "cumulative_bn":
            for m in table.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.momentum = None
        if variant == "other_module":  # not known to be row-wise: the rows are expanded before it
            table.mlps[0][5] = torch.nn.Dropout(p=0.0)
    if variant == "eval":
        t.train(), ref.train()
        t(_repeating_ids()), ref(_repeating_ids())  # running statistics away from their init
        t.eval(), ref.eval()
    ids = _repeating_ids()
    salted = t.field_hash.raw(ids.reshape(-1), fields=t.field_index(ids.shape[0], ids.device))
    assert torch.unique(salted).numel() < salted.numel() / 3  # the fast path really deduplicates
    target = torch.randn(*ids.shape, t.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, want = t(ids), _plain_pass(ref, ids)
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-10)
    (out * target).sum().backward()
    (want * target).sum().backward()
    for (name, p), q in zip(t.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)
    for (name, b), c in zip(t.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-12, msg=name)


def test_deduplicated_float32_close_and_all_equal_ids():
    t = small()
    ref = make_table_from_config(t.config())
    ref.load_state_dict(t.state_dict())
    ids = _repeating_ids()
    torch.testing.assert_close(t(ids), _plain_pass(ref, ids), rtol=1e-4, atol=1e-5)
    for b, c in zip(t.buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-6)
    same = torch.full((4, 2), 9)  # one distinct id per field: zero batch variance, like BatchNorm
    torch.testing.assert_close(t(same), _plain_pass(ref, same), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="more than 1 value"):
        DHEEmbeddingBag(10, 4, mode="sum", num_hashes=8, hidden=4)(torch.tensor([3]), torch.tensor([0]))


def test_derived_encoding_coefficients_equal_the_stored_family():
    """The k encoding functions are derived from one seed: the same functions as a stored family,
    on any device the table moves to, and the seed is what memory counts."""
    from slimembed.tables.hashing import HashFamily

    stored, derived = HashFamily(64, seed=7), HashFamily(64, seed=7, derived=True)
    assert torch.equal(stored.coef, derived.table())
    ids = torch.tensor([0, 5, 2**40])
    assert torch.equal(stored(ids, 1000, index=3), derived(ids, 1000, index=3))
    assert memory_report(derived).buffer_bytes == 8 and memory_report(stored).buffer_bytes == 64 * 16
    with torch.device("meta"):
        m = HashFamily(64, seed=7, derived=True)
    assert memory_report(m).buffer_bytes == 8
