"""Seeded builds are reproducible: the logits of a model built after ``torch.manual_seed(0)``
are pinned, so a refactor of the constructors that changes the parameter creation order (and so
the random initialisation) or the forward math fails here."""

from __future__ import annotations

import pytest
import torch

from slimembed.ctr.models import make_model
from slimembed.tables import Feature

FEATURES = [Feature(f"C{i}", 11 + 7 * i, 8) for i in range(4)]

# Logits for 4 rows, recorded from the constructors before the shared-wiring refactor.
PINNED = {
    "lr": [0.378654, -0.305691, 0.070736, 0.520408],
    "deepfm": [-0.669705, -0.237808, -0.300782, -0.239348],
    "dcnv2": [0.002247, -0.041692, -0.003987, 0.013762],
    "dlrm": [-0.010661, -0.006448, -0.003029, -0.013346],
    "ipnn": [0.000289, -0.007368, 0.002254, -0.004129],
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_seeded_logits_are_pinned(name):
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, f.num_embeddings, (4,), generator=g) for f in FEATURES], 1)
    dense = torch.rand(4, 3, generator=g)
    cfg = {} if name in ("lr", "dlrm") else {"hidden_units": [16, 8]}
    torch.manual_seed(0)
    model = make_model(name, FEATURES, 3, **cfg).eval()
    with torch.no_grad():
        out = model(dense, ids)
    torch.testing.assert_close(out, torch.tensor(PINNED[name]), rtol=1e-4, atol=2e-6)
