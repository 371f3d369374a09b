"""Raw 64-bit ids, unseen at training, through a `unified` table inside torchrec's DLRM_DCN.

Unified Embedding is vocabulary-free: every feature's chunks hash raw ids into one shared table,
so there is no vocabulary pass and ids first met at serving time just work. Here the synthetic
Criteo-like ids are turned into raw 63-bit ids (most above 2**40, like hashed category strings),
the table is built with ``backend="torchrec"`` (its shared table is a plain torchrec
``EmbeddingBagCollection`` table listing every chunk as a feature name, so DistributedModelParallel
would shard it), DLRM_DCN trains on the train split, and the test split, with many ids never
seen in training, is scored; then a batch of brand-new random ids in [2**40, 2**63).

    python examples/unified_torchrec.py            # 200k rows, about a minute on 2 cores
    python examples/unified_torchrec.py --quick    # 25k rows, a few seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torchrec.models.dlrm import DLRM_DCN
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.ctr.metrics import auc
from slimembed.datasets import ID_SPACE, generate, make_loader
from slimembed.datasets.ids import mix64
from slimembed.tables import Feature, make_table, memory_report


def raw_ids(sparse: torch.Tensor) -> torch.Tensor:
    """Vocabulary ids ``[B, F]`` -> stable raw 63-bit ids (a per-field bijective mix)."""
    x = sparse.numpy()
    out = np.stack([mix64(x[:, f], seed=f) for f in range(x.shape[1])], 1)
    return torch.from_numpy((out >> np.uint64(1)).astype(np.int64))


def to_kjt(ids: torch.Tensor, names) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(keys=list(names), values=ids.t().reshape(-1),
                                               lengths=torch.ones(ids.numel(), dtype=torch.long))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--quick", action="store_true", help="25k rows, batches of 512 (seconds)")
    p.add_argument("--budget-kib", type=float, default=256.0, help="memory of the unified table")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args()
    rows, bs = (25_000, 512) if a.quick else (a.rows, a.batch_size)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = tempfile.mkdtemp(prefix="slimembed-unified-")
    generate(out, rows=rows, seed=0)
    train = list(make_loader(out, "train", bs, shuffle=True, seed=0))
    test = list(make_loader(out, "test", 8192))
    names = [f"C{i + 1}" for i in range(train[0].sparse.shape[1])]
    # vocabulary-free features: the id space is all of int64, no vocabulary sizes anywhere
    features = [Feature(n, ID_SPACE, 16) for n in names]
    table = make_table("unified", features, budget_bytes=int(a.budget_kib * 1024), backend="torchrec")
    model = DLRM_DCN(embedding_bag_collection=table, dense_in_features=train[0].dense.shape[1],
                     dense_arch_layer_sizes=[64, 16], over_arch_layer_sizes=[64, 1],
                     dcn_num_layers=2, dcn_low_rank_dim=8)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    seen = [set() for _ in names]
    model.train()
    for batch in train:
        ids = raw_ids(batch.sparse)
        for f in range(len(names)):
            seen[f].update(ids[:, f].tolist())
        logits = model(batch.dense, to_kjt(ids, names)).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores, labels, unseen, total = [], [], 0, 0
    with torch.no_grad():
        for batch in test:
            ids = raw_ids(batch.sparse)
            for f in range(len(names)):
                col = ids[:, f].tolist()
                unseen += sum(v not in seen[f] for v in col)
                total += len(col)
            scores.append(model(batch.dense, to_kjt(ids, names)).squeeze(-1))
            labels.append(batch.labels)
        fresh = torch.randint(2**40, 2**63 - 1, (512, len(names)))
        fresh_logits = model(torch.zeros(512, train[0].dense.shape[1]), to_kjt(fresh, names)).squeeze(-1)
    s, y = torch.cat(scores), torch.cat(labels)
    rep = memory_report(table)
    print(f"unified table (torchrec backend): rows {table.rows}, chunk_dim {table.chunk_dim}, "
          f"chunks {sorted(set(table.chunks))}, {rep.table_bytes / 1024:.1f} KiB")
    print("child EBC tables: " + ", ".join(
        f"{c.name} ({c.num_embeddings} rows x {c.embedding_dim}, {len(c.feature_names)} feature names)"
        for c in table.ebc.embedding_bag_configs()))
    sample = raw_ids(test[0].sparse)
    print(f"raw test ids: e.g. {int(sample[0, 2])}; {float((sample > 2**40).float().mean()):.1%} "
          "of them above 2**40")
    print(f"test AUC {auc(y, s):.4f} on {len(y)} rows; {unseen} of their {total} ids "
          f"({unseen / max(total, 1):.1%}) unseen at training")
    print(f"fresh unseen ids in [2**40, 2**63): {fresh.shape[0]} rows scored, all finite: "
          f"{bool(torch.isfinite(fresh_logits).all())}, mean p {torch.sigmoid(fresh_logits).mean():.3f}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
