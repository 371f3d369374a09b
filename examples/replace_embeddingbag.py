"""Swap ``nn.EmbeddingBag`` for ``QREmbeddingBag`` in an existing model and compare memory.

A small bag-of-items click model uses ``nn.EmbeddingBag``; replacing it with slimembed's
quotient-remainder drop-in (same constructor arguments, same forward) keeps the code unchanged
and shrinks the table. Both are trained on the same toy data and both memory reports printed.

    python examples/replace_embeddingbag.py --items 200000 --collisions 64
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from slimembed.tables import QREmbeddingBag, memory_report


class BagModel(nn.Module):
    """Pools a user's item history with an EmbeddingBag and predicts a click logit."""

    def __init__(self, bag: nn.Module, dim: int) -> None:
        super().__init__()
        self.bag = bag
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, items: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(items, offsets)).squeeze(-1)


def toy_batch(n_items: int, batch: int, gen: torch.Generator):
    lengths = torch.randint(1, 8, (batch,), generator=gen)
    items = torch.randint(0, n_items, (int(lengths.sum()),), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    labels = (items % 7 == 0).float()  # an item property the model can learn
    per_bag = torch.zeros(batch).index_add_(0, torch.repeat_interleave(torch.arange(batch), lengths), labels)
    return items, offsets, (per_bag > 0).float()


def train(model: nn.Module, n_items: int, steps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        items, offsets, y = toy_batch(n_items, 512, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(items, offsets), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--collisions", type=int, default=64, help="QR: ids per quotient row")
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args()
    torch.manual_seed(0)
    before = BagModel(nn.EmbeddingBag(a.items, a.dim, mode="mean"), a.dim)
    # The one-line change: same arguments, plus the method's own.
    after = BagModel(QREmbeddingBag(a.items, a.dim, mode="mean", num_collisions=a.collisions), a.dim)
    for name, model in (("nn.EmbeddingBag", before), ("QREmbeddingBag", after)):
        loss = train(model, a.items, a.steps)
        rep = memory_report(model)
        print(f"{name}: final loss {loss:.4f}; {rep.param_bytes:,} parameter bytes, {rep.total_bytes:,} total bytes")
    ratio = memory_report(before).total_bytes / memory_report(after).total_bytes
    print(f"QREmbeddingBag holds the model in {ratio:.1f}x fewer bytes")


if __name__ == "__main__":
    main()
