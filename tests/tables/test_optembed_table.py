"""OptEmbed's supernet table: the long-tailed step estimator, thresholds, masks, variants, export."""

import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import (
    CompactOptEmbedTable, Feature, OptEmbedEmbeddingBag, OptEmbedTable, export_optembed, make_table,
    make_table_from_config, memory_report,
)
from slimembed.tables.optembed import binary_step, compact_bytes, long_tailed_grad

FEATS = [Feature("a", 50, 8), Feature("b", 7, 8), Feature("c", 120, 8)]


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.num_embeddings, (n,), generator=g) for f in FEATS], 1)


def dense_rows(t, ids):
    """Unmasked rows by hand: the fused weight at id + the field's offset."""
    offs = torch.tensor([0, 50, 57])
    return t.weight.detach()[ids + offs]


# ------------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("x, grad", [
    (0.0, 2.0), (0.1, 1.6), (-0.1, 1.6), (0.2, 1.2), (-0.3, 0.8),
    (0.4, 0.4), (-0.4, 0.4), (0.41, 0.4), (0.7, 0.4), (-0.99, 0.4),
    (1.0, 0.4), (-1.0, 0.4), (1.01, 0.0), (-1.01, 0.0), (5.0, 0.0),
])
def test_step_gradient_at_breakpoints(x, grad):
    v = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    y = binary_step(v)
    assert y.item() == (1.0 if x > 0 else 0.0)  # strict: S(0) = 0
    (3.0 * y).sum().backward()
    assert v.grad.item() == pytest.approx(3.0 * grad, abs=1e-12)
    assert long_tailed_grad(torch.tensor([x], dtype=torch.float64)).item() == pytest.approx(grad, abs=1e-12)


def test_regulariser_value_and_gradient():
    t = OptEmbedTable(FEATS, alpha=1e-2)
    with torch.no_grad():
        t.threshold.copy_(torch.tensor([0.0, 0.5, -1.0]))
    reg = t.regularization()
    assert reg.item() == pytest.approx(1e-2 * (1 + math.exp(-0.5) + math.exp(1.0)), rel=1e-6)
    reg.backward()
    assert torch.allclose(t.threshold.grad, -1e-2 * torch.exp(-t.threshold.detach()))
    assert t.weight.grad is None
    t.freeze_rows()
    assert t.regularization().item() == 0.0  # frozen thresholds are not regularised
    assert OptEmbedTable(FEATS, variant="optembed-d").regularization().item() == 0.0


def test_threshold_gradient_through_the_mask():
    """dL/dt_f = -sum_b <dL/dout, e_b> * g(|e_b|_1 - t_f); the norm gets the same factor."""
    torch.manual_seed(0)
    t = OptEmbedTable(FEATS, variant="optembed-e")
    with torch.no_grad():
        t.threshold.copy_(torch.tensor([0.1, 0.2, 0.3]))
    ids = batch(32)
    c = torch.randn(32, 3, 8)
    (t(ids) * c).sum().backward()
    e = dense_rows(t, ids)
    x = e.abs().sum(-1) - t.threshold.detach()
    expect = -((c * e).sum(-1) * long_tailed_grad(x)).sum(0)
    assert torch.allclose(t.threshold.grad, expect, atol=1e-5)


def test_row_mask_l1_default_and_l2_option():
    for norm in (1, 2):
        t = OptEmbedTable(FEATS, variant="optembed-e", norm=norm)
        with torch.no_grad():
            t.threshold.fill_(0.2 if norm == 1 else 0.08)
        ids = batch()
        e = dense_rows(t, ids)
        n = e.abs().sum(-1) if norm == 1 else e.norm(dim=-1)
        keep = n > t.threshold.detach()
        assert 0 < int(keep.sum()) < keep.numel()  # the test exercises both sides
        t.eval()
        assert torch.equal(t(ids), e * keep.unsqueeze(-1))
        # the whole-table mask agrees with the per-batch one
        full = t.threshold_row_mask()
        assert torch.equal(full[ids + torch.tensor([0, 50, 57])], keep)


# ------------------------------------------------------------------------------- dims
def test_training_dim_masks_keep_exactly_the_first_k_dims_uniformly():
    t = OptEmbedTable(FEATS, variant="optembed-d")
    with torch.no_grad():
        t.weight.copy_(torch.rand_like(t.weight) + 0.5)  # no zero entries
    torch.manual_seed(1)
    ids = batch(4000)
    out = t.train()(ids)
    nz = out != 0
    k = nz.sum(-1)  # [B, F]
    # a prefix of ones then zeros: exactly the first k dims
    prefix = torch.arange(8) < k.unsqueeze(-1)
    assert torch.equal(nz, prefix)
    assert torch.equal(out[prefix], dense_rows(t, ids)[prefix])
    assert int(k.min()) == 1 and int(k.max()) == 8
    counts = torch.bincount(k.reshape(-1), minlength=9)[1:].float()
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.02  # uniform on 1..D
    assert not torch.equal(k[:, 0], k[:, 1])  # per field, not per batch
    assert len(set(k[:, 0].tolist())) == 8  # per sample
    # evaluation: full dims, no sampling
    assert torch.equal(t.eval()(ids), dense_rows(t, ids))


def test_fixed_dims_apply_in_train_and_eval_and_variant_e_does_not_sample():
    t = OptEmbedTable(FEATS, variant="optembed-d")
    t.set_dims([1, 8, 3])
    ids = batch()
    ref = dense_rows(t, ids) * (torch.arange(8) < torch.tensor([1, 8, 3]).unsqueeze(-1))
    assert torch.equal(t.train()(ids), ref) and torch.equal(t.eval()(ids), ref)
    with pytest.raises(ValueError):
        t.set_dims([0, 8, 3])
    with pytest.raises(ValueError):
        t.set_dims([9, 8, 3])
    e = OptEmbedTable(FEATS, variant="optembed-e")
    with torch.no_grad():
        e.threshold.fill_(-1.0)  # keep every row
    assert torch.equal(e.train()(ids), dense_rows(e, ids))
    with pytest.raises(ValueError):
        e.set_dims([4, 8, 8])


def test_frozen_rows_give_zero_vectors_and_stop_thresholds():
    t = OptEmbedTable(FEATS)
    keep = torch.rand(177, generator=torch.Generator().manual_seed(3)) < 0.5
    t.freeze_rows(keep)
    assert not t.threshold.requires_grad
    ids = batch()
    rows = ids + torch.tensor([0, 50, 57])
    out = t.eval()(ids)
    assert torch.equal(out, dense_rows(t, ids) * keep[rows].unsqueeze(-1))
    assert t.kept_rows() == [int(keep[:50].sum()), int(keep[50:57].sum()), int(keep[57:].sum())]
    t.unfreeze_rows()
    assert t.threshold.requires_grad and not t.is_rows_frozen


def test_variants_registry_and_config_round_trip():
    for name in ("optembed", "optembed-e", "optembed-d"):
        t = make_table(name, FEATS)
        assert isinstance(t, OptEmbedTable) and t.variant == name
        assert (t.threshold is None) == (name == "optembed-d")
        t.freeze_rows()
        if t.searches_dims:
            t.set_dims([2, 5, 8])
        t2 = make_table_from_config(t.config())
        t2.load_state_dict(t.state_dict())
        ids = batch()
        assert torch.equal(t2.eval()(ids), t.eval()(ids))
        assert t2.is_rows_frozen and t2.is_dims_fixed == t.searches_dims
    with pytest.raises(ValueError):
        make_table("optembed-e", FEATS, variant="optembed")
    with pytest.raises(ValueError):
        OptEmbedTable(FEATS, variant="optembed-x")
    with pytest.raises(ValueError, match="budget_bytes"):
        make_table("optembed", FEATS, compression=4)  # the search takes the budget, not the supernet


def test_kjt_and_drop_in_agree_with_dense_path():
    t = OptEmbedTable(FEATS).eval()
    with torch.no_grad():
        t.threshold.fill_(0.15)
    ids = batch(5)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(15, dtype=torch.int32))
    assert torch.allclose(t(kjt).values(), t(ids).reshape(5, -1))
    w = torch.randn(30, 4)
    bag = OptEmbedEmbeddingBag(30, 4, mode="sum", _weight=w, variant="optembed-e").eval()
    with torch.no_grad():
        bag.table.threshold.fill_(2.5)
    x = torch.tensor([1, 2, 3, 7, 9])
    keep = (w.abs().sum(1) > 2.5).float().unsqueeze(1)
    ref = torch.stack([(w * keep)[[1, 2]].sum(0), (w * keep)[[3, 7, 9]].sum(0)])
    assert torch.allclose(bag(x, torch.tensor([0, 2])), ref)


# ------------------------------------------------------------------------------- export
def trained_like_table(variant="optembed"):
    torch.manual_seed(4)
    t = OptEmbedTable(FEATS, variant=variant)
    with torch.no_grad():
        t.weight.mul_(torch.rand(177, 1) * 3)  # spread the norms
        if t.threshold is not None:
            t.threshold.copy_(torch.tensor([0.2, 0.0, 0.35]))
    t.freeze_rows()
    if t.searches_dims:
        t.set_dims([3, 8, 1])
    return t.eval()


@pytest.mark.parametrize("variant", ["optembed", "optembed-e", "optembed-d"])
def test_export_equals_masked_table_and_counts_the_id_index(variant):
    t = trained_like_table(variant)
    c = export_optembed(t)
    assert isinstance(c, CompactOptEmbedTable)
    ids = torch.cat([batch(200), torch.tensor([[49, 6, 119], [0, 0, 0]])])
    assert torch.equal(c(ids), t(ids))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(3 * ids.shape[0], dtype=torch.int32))
    assert torch.allclose(c(kjt).values(), t(kjt).values())
    kept = t.kept_rows()
    assert c.kept == kept and c.dims == t.current_dims()
    rep = memory_report(c)
    pruned_rows = sum(f.num_embeddings for f, k in zip(FEATS, kept) if k < f.num_embeddings)
    words = sum(math.ceil(f.num_embeddings / 64) for f, k in zip(FEATS, kept) if k < f.num_embeddings)
    assert c.bitmap.numel() == 8 * words and c.bitmap.dtype == torch.uint8
    assert c.rank.numel() == words and c.rank.dtype == torch.int32
    assert rep.param_bytes == 4 * (sum(k * d for k, d in zip(kept, c.dims)) + 1)
    assert rep.buffer_bytes >= 12 * words  # the bitmap + rank index is memory
    assert rep.total_bytes == compact_bytes(FEATS, c.dims, kept)
    if variant == "optembed-d":
        assert pruned_rows == 0 and words == 0  # nothing pruned: no bitmap at all
    else:
        assert 0 < sum(kept) < 177
    # rebuilt from its config + state_dict: the same table
    c2 = make_table_from_config(c.config())
    c2.load_state_dict(c.state_dict())
    assert torch.equal(c2(ids), c(ids))


def reference_rows(keep):
    """Compact row per id by a running count: kept -> its rank among kept ids, pruned -> -1."""
    r = torch.cumsum(keep.long(), 0) - 1
    return torch.where(keep, r, torch.full_like(r, -1))


@pytest.mark.parametrize("sizes", [(1, 63, 64, 65), (128, 7, 200), (300,)])
def test_bitmap_rank_equals_a_running_count_at_word_edges(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    feats = [Feature(f"f{i}", n, 4) for i, n in enumerate(sizes)]
    keep = torch.rand(sum(sizes), generator=g) < 0.4
    keep[0] = False  # field 0 prunes at least one row, so it has a bitmap
    t = OptEmbedTable(feats, variant="optembed-e")
    t.freeze_rows(keep)
    c = export_optembed(t)
    for i, (k, n) in enumerate(zip(torch.split(keep, list(sizes)), sizes)):
        ids = torch.arange(n)
        got = c.compact_rows(ids, torch.full_like(ids, i))
        want = reference_rows(k) if int(k.sum()) < n else ids
        assert torch.equal(got, want), (sizes, i)
    ids = torch.stack([torch.randint(0, n, (300,), generator=g) for n in sizes], 1)
    assert torch.equal(c(ids), t.eval()(ids))


def test_compact_export_of_a_third_of_the_rows_costs_at_most_two_bits_per_original_row():
    torch.manual_seed(0)
    feats = [Feature("big", 30000, 16), Feature("mid", 5000, 16), Feature("small", 40, 16)]
    t = OptEmbedTable(feats)
    keep = torch.rand(35040) < 1 / 3
    t.freeze_rows(keep)
    t.set_dims([5, 12, 16])
    t.eval()
    c = export_optembed(t)
    kept_values = sum(k * d for k, d in zip(c.kept, c.dims))
    original_rows = sum(f.num_embeddings for f in feats)
    assert abs(sum(c.kept) / original_rows - 1 / 3) < 0.02
    bound = (kept_values * 4 + 2 * original_rows / 8) * 1.01
    total = memory_report(c).total_bytes
    assert total <= bound, (total, bound)
    assert total == compact_bytes(feats, c.dims, c.kept)
    # the id space costs 1.5 bits per original row (bitmap + int32 rank per 64 ids), not 32
    assert (c.bitmap.numel() + 4 * c.rank.numel()) * 8 / original_rows < 1.52
    ids = torch.stack([torch.randint(0, f.num_embeddings, (512,)) for f in feats], 1)
    assert torch.equal(c(ids), t(ids))
    # a model: exported logits equal the masked model's
    from slimembed.ctr.models import make_model
    from slimembed.search.optembed import optembed_table_factory

    model = make_model("deepfm", feats, 2, table_factory=optembed_table_factory())
    model.embedding.freeze_rows(keep)
    model.embedding.set_dims([5, 12, 16])
    model.eval()
    exp = export_optembed(model)
    dense = torch.randn(512, 2)
    assert torch.equal(exp(dense, ids), model(dense, ids))


def test_compact_state_dict_of_the_int32_remap_format_still_loads():
    t = trained_like_table()
    c = export_optembed(t)
    sd = c.state_dict()
    keeps = [k for k, n, f in zip(torch.split(t.row_keep, [50, 7, 120]), c.kept, FEATS) if n < f.num_embeddings]
    old = {k: v for k, v in sd.items() if k not in ("bitmap", "rank")}
    old["remap"] = torch.cat([reference_rows(k) for k in keeps]).to(torch.int32)
    c2 = make_table_from_config(c.config())
    c2.load_state_dict(old)
    assert torch.equal(c2.bitmap, c.bitmap) and torch.equal(c2.rank, c.rank)
    ids = batch(100)
    assert torch.equal(c2(ids), c(ids))
    old["remap"] = old["remap"][:-1]
    with pytest.raises(ValueError, match="remap"):
        make_table_from_config(c.config()).load_state_dict(old)


def test_export_unpadded_gives_per_field_dims():
    t = trained_like_table()
    c = export_optembed(t, pad=False)
    ids = batch(10)
    out = c(ids)
    assert c.output_dims == [3, 8, 1] and out.shape == (10, 12)
    ref = t(ids)
    assert torch.equal(out, torch.cat([ref[:, 0, :3], ref[:, 1, :8], ref[:, 2, :1]], 1))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=ids.t().reshape(-1),
                                              lengths=torch.ones(30, dtype=torch.int32))
    kt = c(kjt)
    assert kt.length_per_key() == [3, 8, 1] and torch.equal(kt.values(), out)


def test_export_of_a_model_matches_its_logits():
    from slimembed.ctr.models import make_model
    from slimembed.search.optembed import optembed_table_factory

    for name in ("deepfm", "dcn", "dlrm"):
        torch.manual_seed(0)
        model = make_model(name, FEATS, 2, table_factory=optembed_table_factory(), **(
            {"bottom_hidden_units": [8]} if name == "dlrm" else {}))
        table = model.embedding
        with torch.no_grad():
            table.weight.mul_(torch.rand(177, 1) * 3)
            table.threshold.copy_(torch.tensor([0.2, 0.0, 0.35]))
        table.freeze_rows()
        table.set_dims([3, 8, 1])
        model.eval()
        exp = export_optembed(model)
        assert isinstance(exp.embedding, CompactOptEmbedTable)
        ids, dense = batch(50), torch.randn(50, 2)
        assert torch.allclose(exp(dense, ids), model(dense, ids), atol=0, rtol=0)
        assert memory_report(exp).table_bytes < memory_report(model).table_bytes
