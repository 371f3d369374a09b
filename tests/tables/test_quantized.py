"""Quantized export: int8 rows + per-row scale/bias (or fp16), honest memory, same lookups."""

import copy

import pytest
import torch

from slimembed.tables import (
    EmbeddingTable,
    Feature,
    HashEmbeddingBag,
    QuantizedTable,
    export,
    make_table,
    memory_report,
)

FEATS = [Feature("a", 3000, 16), Feature("b", 150, 16), Feature("c", 700, 16)]
CASES = [
    ("full", {}),
    ("hash", {"rows": 100, "signed": True}),
    ("double_hash", {"rows": 60, "frequent_ids": {"a": [1, 2, 3]}}),
    ("double_hash", {"rows": 60, "combine": "concat"}),
    ("qr", {"collisions": 20}),
    ("compositional", {"operation": "add", "partition": "crt"}),
    ("robe", {"size": 1000, "num_blocks": 2}),
]


def ids(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (b,), generator=g) for f in FEATS], 1)


def trained(method, kw):
    t = make_table(method, FEATS, **kw)
    with torch.no_grad():  # a spread like trained rows, with some big values
        t.weight.normal_(0, 0.05)
        t.weight.view(-1)[::97] *= 8
    return t


@pytest.mark.parametrize("method,kw", CASES)
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_export_matches_the_float_table_within_quantization_error(method, kw, dtype):
    t = trained(method, kw)
    q = export(t, dtype)
    x = ids()
    # 1. the stored rows are within the quantization step of the float rows
    deq = q.dequantized_weight()
    w = t.weight.detach()
    if dtype == "int8":
        assert q.qweight.dtype == torch.uint8
        step = q.scale  # per row (per 64-float chunk for ROBE)
        if method == "robe":
            step = step.repeat_interleave(64)[: w.numel()]
            assert ((deq - w).abs() <= step / 2 + 1e-6).all()
        else:
            assert ((deq - w).abs() <= step.unsqueeze(1) / 2 + 1e-6).all()
    else:
        assert q.qweight.dtype == torch.float16
        assert torch.allclose(deq, w, rtol=1e-3, atol=1e-6)
    # 2. lookups equal the float table evaluated on the dequantized rows
    ref_t = copy.deepcopy(t)
    with torch.no_grad():
        ref_t.weight.copy_(deq)
    out = q(x)
    assert torch.allclose(out, ref_t(x), atol=1e-6)
    # 3. and stay close to the float table's own outputs
    err = (out - t(x).detach()).abs().max()
    scale = t(x).detach().abs().max()
    assert err <= (0.02 if dtype == "int8" else 2e-3) * scale


@pytest.mark.parametrize("method,kw", CASES)
def test_memory_report_counts_int8_bytes(method, kw):
    t = trained(method, kw)
    q = export(t)
    rep, frep = memory_report(q), memory_report(t)
    rows = q.qweight.shape[0]
    inner_buffers = frep.buffer_bytes  # the source's index buffers (hash seeds, id maps...)
    assert rep.param_bytes == 0
    assert rep.buffer_bytes == q.qweight.numel() + 8 * rows + inner_buffers + 8 * len(FEATS)
    assert rep.full_bytes == frep.full_bytes
    assert rep.table_bytes < 0.6 * frep.table_bytes  # (w + 8) / 4w bytes per row: 0.375 at w=16
    assert memory_report(export(t, "fp16")).buffer_bytes == 2 * q.qweight.numel() + inner_buffers + 8 * len(FEATS)


def test_exported_table_kjt_state_dict_and_dropin():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    t = trained("qr", {"collisions": 20})
    q = export(t)
    x = ids(5)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=x.t().reshape(-1),
                                              lengths=torch.ones(15, dtype=torch.long))
    assert torch.allclose(q(kjt).values(), q(x).reshape(5, -1), atol=1e-6)
    # a fresh export of another table of the same config takes the state dict
    other = export(make_table("qr", FEATS, collisions=20))
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(x), q(x))
    assert isinstance(q, EmbeddingTable) and not any(p.requires_grad for p in q.parameters())
    with pytest.raises(ValueError, match=r"'b'.*150"):
        q(torch.tensor([[1, 150, 2]]))

    bag = HashEmbeddingBag(2**63, 16, num_rows=50, mode="sum")
    qb = export(bag)
    inp, off = torch.tensor([5, 2**50, 9]), torch.tensor([0, 2])
    assert torch.allclose(qb(inp, off), bag(inp, off), atol=2e-3)
    assert memory_report(qb).param_bytes == 0


def test_export_rejects_non_gather_tables():
    class Odd(EmbeddingTable):
        method = "odd"

    with pytest.raises(TypeError, match="gather-based"):
        QuantizedTable(Odd(FEATS))
    with pytest.raises(ValueError, match="dtype"):
        export(make_table("hash", FEATS, rows=10), "int4")
