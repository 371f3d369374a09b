"""A slimembed table inside torchrec's own DLRM_DCN, trained on synthetic Criteo-like data.

The table implements torchrec's EmbeddingBagCollectionInterface, so it goes where torchrec
expects an EmbeddingBagCollection; the batches are torchrec KeyedJaggedTensors.

    python examples/torchrec_dlrm.py --method hash --compression 10
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torchrec.models.dlrm import DLRM_DCN

from slimembed.ctr.metrics import evaluate
from slimembed.datasets import generate, load_processed, make_loader
from slimembed.tables import make_table, memory_report


class _Logits(torch.nn.Module):
    """Adapts DLRM_DCN's ``[B, 1]`` output to the ``[B]`` logits slimembed's evaluator reads."""

    def __init__(self, dlrm: DLRM_DCN) -> None:
        super().__init__()
        self.dlrm = dlrm

    def forward(self, dense, sparse):
        return self.dlrm(dense, sparse).squeeze(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--method", default="full")
    p.add_argument("--compression", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="slimembed-torchrec-")
    generate(out, rows=a.rows, seed=0)
    schema = load_processed(out).schema
    torch.manual_seed(0)
    kw = {} if a.compression is None else {"compression": a.compression}
    table = make_table(a.method, schema.features(16), **kw)
    model = _Logits(DLRM_DCN(
        embedding_bag_collection=table,
        dense_in_features=schema.num_dense,
        dense_arch_layer_sizes=[64, 16],
        over_arch_layer_sizes=[64, 1],
        dcn_num_layers=2,
        dcn_low_rank_dim=8,
    ))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step, batch in enumerate(make_loader(out, "train", 2048, shuffle=True, as_kjt=True)):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch.dense, batch.sparse), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if a.steps is not None and step + 1 >= a.steps:
            break
    metrics = evaluate(model, make_loader(out, "test", 8192, as_kjt=True))
    print(f"torchrec DLRM_DCN with slimembed table {a.method!r}: test AUC {metrics['auc']:.4f}, "
          f"logloss {metrics['logloss']:.4f}")
    print(memory_report(model))


if __name__ == "__main__":
    main()
