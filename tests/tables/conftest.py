"""Shared checks for the tables' tests."""

import pytest
import torch
import torch.nn.functional as F


def check_embedding_bag_semantics(make_bag, weight_of, n, bad_id=None):
    """Drop-in vs ``F.embedding_bag`` over rows materialised from the same table."""
    inp = torch.tensor([3, 7, 7, 0, n - 1, 12])
    offs = torch.tensor([0, 2, 2, 5])  # bag 1 is empty
    for mode in ("sum", "mean", "max"):
        bag = make_bag(mode=mode)
        w = weight_of(bag)
        ref = F.embedding_bag(inp, w, offs, mode=mode)
        assert torch.allclose(bag(inp, offs), ref, atol=1e-6), mode
        assert torch.equal(bag(inp, offs)[1], torch.zeros(w.shape[1]))
        x2 = inp[:6].view(2, 3)
        assert torch.allclose(bag(x2), F.embedding_bag(x2, w, mode=mode), atol=1e-6), mode
    bag = make_bag(mode="sum")
    w = weight_of(bag)
    psw = torch.tensor([0.5, -1.0, 2.0, 1.0, 3.0, 0.25])
    assert torch.allclose(bag(inp, offs, psw), F.embedding_bag(inp, w, offs, mode="sum", per_sample_weights=psw),
                          atol=1e-6)
    bag = make_bag(mode="mean", include_last_offset=True, padding_idx=7)
    w = weight_of(bag)
    offs_last = torch.tensor([0, 2, 2, 5, 6])
    ref = F.embedding_bag(inp, w, offs_last, mode="mean", include_last_offset=True, padding_idx=7)
    assert torch.allclose(bag(inp, offs_last), ref, atol=1e-6)
    with pytest.raises(ValueError, match="got id"):
        make_bag(mode="sum")(torch.tensor([n if bad_id is None else bad_id]), torch.tensor([0]))


@pytest.fixture
def embedding_bag_semantics():
    """The drop-in check above, as a fixture (test files cannot import each other)."""
    return check_embedding_bag_semantics
