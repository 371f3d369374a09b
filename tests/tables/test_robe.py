"""ROBE: embeddings are signed, wrapping, contiguous blocks of one shared array."""

import json

import pytest
import torch
import torch.nn.functional as F

from slimembed.tables import Feature, RobeEmbeddingBag, RobeTable, make_table_from_config, memory_report
from slimembed.tables.hashing import coefficients, universal_hash

FEATS = [Feature("a", 2**63, 8), Feature("b", 1000, 8)]


def by_hand(t, x, feat, m, n_blocks, signed=True):
    """The embedding of id ``x`` of feature ``feat``, read from the array by hand (``n_blocks``
    blocks of ``8 / n_blocks`` values: the block size is the paper's Z)."""
    d = 8
    blk = d // n_blocks
    ab = coefficients(t.seed, feat, n_blocks)
    sab = coefficients(t.seed, repr(("sign", feat)), n_blocks)
    arr = t.weight.detach()
    out = []
    for z in range(n_blocks):
        start = int(universal_hash(torch.tensor([x]), int(ab[z, 0]), int(ab[z, 1]), m))
        raw = int(universal_hash(torch.tensor([x]), int(sab[z, 0]), int(sab[z, 1]), None))
        sign = 1.0 - 2.0 * ((raw >> 30) & 1) if signed else 1.0
        out.extend(sign * float(arr[(start + i) % m]) for i in range(blk))
    return torch.tensor(out), start


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_robe_reads_signed_wrapping_blocks(n_blocks):
    m = 37
    t = RobeTable(FEATS, size=m, num_blocks=n_blocks, seed=4)
    with torch.no_grad():
        t.weight.copy_(torch.arange(m, dtype=torch.float32) + 1)
    xs = torch.arange(200)
    out = t(torch.stack([xs, xs], 1))
    wrapped = 0
    for x in range(200):
        for f, name in enumerate(["a", "b"]):
            ref, start = by_hand(t, x, name, m, n_blocks)
            assert torch.equal(out[x, f], ref), (x, name)
            wrapped += start > m - 8 // n_blocks
    assert wrapped > 0  # some blocks crossed the end of the array and wrapped to its start


def test_robe_vocabulary_free_ids_and_negatives():
    t = RobeTable(FEATS, size=1000)
    ids = torch.tensor([[2**40 + 5, 3], [2**63 - 1, 999], [123_456_789_012, 0]])
    out = t(ids)
    assert out.shape == (3, 2, 8)
    ref, _ = by_hand(t, 2**63 - 1, "a", 1000, 1)
    assert torch.allclose(out[1, 0], ref)
    with pytest.raises(ValueError, match=r"'a'.*-7"):
        t(torch.tensor([[-7, 1]]))


def test_robe_gradient_is_the_scatter_of_block_gradients():
    m = 50
    t = RobeTable(FEATS, size=m, num_blocks=2, seed=1)
    ids = torch.randint(0, 1000, (16, 2))
    g = torch.randn(16, 2, 8)
    (t(ids) * g).sum().backward()
    # reference: plain autograd through indexing
    pos = t.positions(ids, None)
    s = t.signs(ids, None).repeat_interleave(4, -1)
    w = t.weight.detach().clone().requires_grad_(True)
    ((w[pos] * s) * g).sum().backward()
    assert torch.allclose(t.weight.grad, w.grad, atol=1e-6)


def test_robe_memory_is_the_array():
    t = RobeTable(FEATS, size=12_345, num_blocks=2)
    rep = memory_report(t)
    assert rep.param_bytes == 4 * 12_345
    # buffers: hash coefficients (2 salts x 2 blocks x (a, b), signs too) + arange + id limits
    assert rep.buffer_bytes == 8 * (2 * 2 * 2 * 2) + 8 * 4 + 8 * 2
    assert float(t.weight.detach().abs().max()) <= 0.05


def test_robe_dense_kjt_dropin_and_state():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    t = RobeTable(FEATS, size=301, num_blocks=4, seed=9)
    ids = torch.randint(0, 1000, (5, 2))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(10, dtype=torch.long))
    assert torch.allclose(t(kjt).values(), t(ids).reshape(5, -1), atol=1e-6)
    u = make_table_from_config(json.loads(json.dumps(t.config())))
    u.load_state_dict(t.state_dict())
    assert torch.equal(u(ids), t(ids))

    bag = RobeEmbeddingBag(2**63, 6, size=100, num_blocks=3, mode="mean", padding_idx=3)
    inp = torch.tensor([3, 2**40, 3, 7, 9, 11, 2**62, 5])
    off = torch.tensor([0, 2, 2, 5])
    uniq, local = torch.unique(inp, return_inverse=True)
    rows = bag.table.embed(uniq, torch.zeros_like(uniq)).detach()
    pad = int((uniq == 3).nonzero()[0, 0])
    ref = F.embedding_bag(local, rows, off, mode="mean", padding_idx=pad)
    assert torch.allclose(bag(inp, off), ref, atol=1e-6)
    bag = RobeEmbeddingBag(2**63, 6, size=100, mode="sum")
    psw = torch.rand(8)
    rows = bag.table.embed(uniq, torch.zeros_like(uniq)).detach()
    ref = F.embedding_bag(local.view(2, 4), rows, None, mode="sum", per_sample_weights=psw.view(2, 4))
    assert torch.allclose(bag(inp.view(2, 4), None, psw.view(2, 4)), ref, atol=1e-6)


def test_block_size_is_the_papers_z_and_num_blocks_the_alternative():
    ids = torch.randint(0, 1000, (32, 2), generator=torch.Generator().manual_seed(0))
    for z, n in ((8, 1), (4, 2), (2, 4), (1, 8)):
        by_z = RobeTable(FEATS, size=101, block_size=z, seed=3)
        by_n = RobeTable(FEATS, size=101, num_blocks=n, seed=3)
        assert (by_z.block_size, by_z.num_blocks) == (z, n) == (by_n.block_size, by_n.num_blocks)
        by_n.load_state_dict(by_z.state_dict())
        assert torch.equal(by_z(ids), by_n(ids))
        assert by_n.config()["block_size"] == z and "num_blocks" not in by_n.config()
        assert torch.equal(make_table_from_config(by_n.config()).positions(ids, None), by_n.positions(ids, None))
    assert RobeTable(FEATS, size=10).block_size == 8  # default Z = D: one block
    assert RobeTable(FEATS, size=10, num_blocks=2, block_size=4).block_size == 4  # both, consistent
    with pytest.raises(ValueError, match=r"block_size \(the paper's Z.*divide embedding_dim 8, got 3"):
        RobeTable(FEATS, size=10, block_size=3)
    with pytest.raises(ValueError, match=r"num_blocks=2 and block_size=2 disagree"):
        RobeTable(FEATS, size=10, num_blocks=2, block_size=2)
    with pytest.raises(ValueError, match=r"num_blocks must divide embedding_dim 8, got 3"):
        RobeTable(FEATS, size=10, num_blocks=3)


def test_z_equal_to_d_is_one_contiguous_window_per_embedding():
    m = 29  # small: many windows wrap around the end of the array
    t = RobeTable(FEATS, size=m, block_size=8, seed=7)
    with torch.no_grad():
        t.weight.copy_(torch.arange(m, dtype=torch.float32) + 1)  # value = position + 1, all distinct
    xs = torch.arange(300)
    out = t(torch.stack([xs, xs], 1))  # [300, 2, 8]
    for f in range(2):
        e = out[:, f]
        sign = torch.sign(e[:, :1])
        pos = (e * sign).long() - 1  # the array positions read, recovered from the values
        # one sign per embedding, and positions start, start + 1, ... (mod m): one window
        assert torch.equal(e, sign * (pos + 1).float())
        assert torch.equal(pos, (pos[:, :1] + torch.arange(8)) % m)
        assert bool((pos[:, 0] > m - 8).any())  # some windows wrap
    assert set(torch.sign(out).unique().tolist()) == {-1.0, 1.0}  # the sign hash is used
