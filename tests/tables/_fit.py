"""A shared toy for table tests: fit a table's output to a fixed per-field target with Adam."""

from typing import List

import torch


def fit_losses(table: torch.nn.Module, ids: torch.Tensor, steps: int = 30, lr: float = 0.05, seed: int = 0) -> List[float]:
    """Losses of ``steps`` Adam steps fitting ``table(ids) [B, F, D]`` to a random per-field target
    (reachable by any table: one vector per field)."""
    b, f = ids.shape
    g = torch.Generator().manual_seed(seed)
    d = table(ids[:1]).shape[-1]
    target = (torch.randn(1, f, d, generator=g) * 0.1).expand(b, f, d)
    opt = torch.optim.Adam(table.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = ((table(ids) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
