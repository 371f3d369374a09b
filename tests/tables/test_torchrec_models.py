"""A slimembed table inside torchrec's own DLRM_DCN trains a step."""

import pytest
import torch
from torchrec.models.dlrm import DLRM_DCN
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import Feature, available_methods, get_table_class, make_table


def test_full_table_in_torchrec_dlrm_dcn_trains_a_step():
    torch.manual_seed(0)
    feats = [Feature(f"C{i}", n, 8) for i, n in enumerate([30, 50, 7])]
    table = make_table("full", feats)
    model = DLRM_DCN(
        embedding_bag_collection=table,
        dense_in_features=4,
        dense_arch_layer_sizes=[16, 8],
        over_arch_layer_sizes=[16, 1],
        dcn_num_layers=2,
        dcn_low_rank_dim=4,
    )
    b = 16
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in feats],
        values=torch.cat([torch.randint(0, f.num_embeddings, (b,)) for f in feats]),
        lengths=torch.ones(b * len(feats), dtype=torch.long),
    )
    dense = torch.randn(b, 4)
    labels = torch.randint(0, 2, (b,)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = table.weight.detach().clone()
    logits = model(dense, kjt).squeeze(-1)
    assert logits.shape == (b,)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, table.weight)


# every budgetable method (the hand list this replaces named exactly these ten)
@pytest.mark.parametrize("method", [m for m in available_methods() if get_table_class(m).budget_knob])
def test_every_method_trains_a_step_inside_torchrec_dlrm_dcn(method):
    torch.manual_seed(0)
    feats = [Feature(f"C{i}", n, 8) for i, n in enumerate([30, 5000, 700])]
    # frequency-aware methods take the training counts the experiment gives them (id 1 + i: count)
    kw = ({"counts": {f.name: torch.arange(f.num_embeddings - 1) % 13 for f in feats}}
          if getattr(get_table_class(method), "needs_counts", False) else {})
    table = make_table(method, feats, **kw)
    model = DLRM_DCN(embedding_bag_collection=table, dense_in_features=4, dense_arch_layer_sizes=[16, 8],
                     over_arch_layer_sizes=[16, 1], dcn_num_layers=1, dcn_low_rank_dim=4)
    b = 16
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in feats], values=torch.cat([torch.randint(0, f.num_embeddings, (b,)) for f in feats]),
        lengths=torch.ones(b * len(feats), dtype=torch.long))
    opt = torch.optim.Adam(table.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in table.parameters()]
    model(torch.randn(b, 4), kjt).pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, table.parameters()))
