"""Scenarios for tests/ctr/test_distributed.py: each trains the same seeded model on the same data,
either on one process over whole global batches (the reference, built in the pytest process) or
on every rank of a torchrun job over its half of each global batch.

Run by the test as::

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port P \\
        tests/ctr/_distributed_worker.py OUT_DIR [CLI_CONFIG ...]

Each rank writes ``OUT_DIR/<scenario>.rank<r>.pt`` (history, gathered metrics, final weights:
full tensors; for sharded models gathered on rank 0), ``<scenario>_resumed.rank<r>.pt`` for the
scenarios in ``RESUMED`` (3 steps, then a fresh model resumed from rank 0's checkpoint to the
end; each rank has its own checkpoint directory, so resuming cannot rely on shared storage), and
runs ``slimembed train --config CLI_CONFIG`` for each config given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

from slimembed.ctr.models import make_model
from slimembed.ctr.optim import table_factory_for
from slimembed.ctr.trainer import TrainConfig, Trainer, seed_everything
from slimembed.datasets import Batch
from slimembed.tables import Feature

CARDS = [40, 25, 12, 6]
N_DENSE = 3
DIM = 16
GLOBAL_BATCH = 64
STEPS = 6
N_VAL = 150
VAL_BATCH = 50  # 3 batches: rank 0 gets 2, rank 1 gets 1 (sharded models: ranks step in lockstep)

SCENARIOS: Dict[str, Dict[str, Any]] = {
    # compressed table, dense Adam: plain DDP
    "ddp_hash": dict(method="hash", opt="adam", table={"rows": 8}, sharding="none"),
    # sparse COO gradients: kept out of DDP, averaged by hooks
    "ddp_sparse_full": dict(method="full", opt="rowwise_adagrad", table={}, sharding="none"),
    # torchrec DMP: the unified table's EBC (two shared sub-tables + the collision-free block)
    # sharded table-wise over the ranks (fused EXACT_ROWWISE_ADAGRAD)
    "dmp_unified_tw": dict(method="unified", opt="rowwise_adagrad", sharding="table_wise",
                           table={"rows": 32, "num_tables": 2, "collisionless_max": 10, "backend": "torchrec",
                                  "sparse": False}),
    # torchrec DMP: the full table moved onto a torchrec EBC, each table split column-wise into
    # two 8-wide shards (fused EXACT_ADAGRAD: element-wise, so column shards change nothing); the
    # 1-dim first-order table stays replicated with sparse gradients (averaged by hooks, not DDP)
    "dmp_full_cw": dict(method="full", opt="adagrad", table={}, sharding="column_wise",
                        dist={"column_shard_dim": 8}),
}


def make_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tg = torch.Generator().manual_seed(999)
    effects = [torch.randn(c, generator=tg) * 1.5 for c in CARDS]
    a = torch.randn(N_DENSE, generator=tg)
    sparse = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], 1)
    dense = torch.randn(n, N_DENSE, generator=g)
    logit = sum(effects[f][sparse[:, f]] for f in range(len(CARDS))) + dense @ a - 0.5
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return dense, sparse, labels


def train_batches(rank: int = 0, world: int = 1) -> List[Batch]:
    """Global batch k = rows [kG, (k+1)G); rank r of W takes its r-th 1/W of each."""
    dense, sparse, labels = make_data(GLOBAL_BATCH * STEPS, seed=1)
    local = GLOBAL_BATCH // world
    out = []
    for k in range(STEPS):
        lo = k * GLOBAL_BATCH + rank * local
        out.append(Batch(dense[lo:lo + local], sparse[lo:lo + local], labels[lo:lo + local]))
    return out


def val_batches(rank: int = 0, world: int = 1) -> List[Batch]:
    """Batch j of the validation set goes to rank j % W (uneven counts and sizes)."""
    dense, sparse, labels = make_data(N_VAL, seed=2)
    out = []
    for j, lo in enumerate(range(0, N_VAL, VAL_BATCH)):
        if j % world == rank:
            out.append(Batch(dense[lo:lo + VAL_BATCH], sparse[lo:lo + VAL_BATCH], labels[lo:lo + VAL_BATCH]))
    return out


def build_model(name: str) -> torch.nn.Module:
    sc = SCENARIOS[name]
    seed_everything(0)
    features = [Feature(f"C{i}", c, DIM) for i, c in enumerate(CARDS)]
    factory = table_factory_for(sc["opt"], sc["method"], **sc["table"])
    return make_model("deepfm", features, N_DENSE, table_factory=factory, hidden_units=[16])


def train_config(name: str, **kw: Any) -> TrainConfig:
    sc = SCENARIOS[name]
    return TrainConfig(epochs=1, lr=0.01, embedding_optimizer=sc["opt"], embedding_lr=0.05, eval_every=3,
                       early_stop_patience=None, restore_best=False, seed=0, progress=False, log_every=1, **kw)


def run(name: str, rank: int = 0, world: int = 1, **overrides: Any) -> Dict[str, Any]:
    """Train scenario ``name``; returns history, metrics and the (gathered) final weights."""
    from slimembed.ctr import distributed as D

    model = build_model(name)
    cfg = train_config(name, **overrides)
    if D.is_initialized():
        dcfg = {"sharding": SCENARIOS[name]["sharding"], **SCENARIOS[name].get("dist", {})}
        model = D.wrap_model(model, dcfg, train_config=cfg)
    trainer = Trainer(model, train_batches(rank, world), val_batches(rank, world), cfg)
    history = trainer.fit()
    metrics = trainer.evaluate()
    # only rank 0 has a batch (the first global one): the other ranks contribute nothing
    first_only = trainer.evaluate(val_batches(rank, world)[:1] if rank == 0 else [])
    state = D.full_state_dict(trainer.model) if D.is_initialized() else trainer.model.state_dict()
    return {
        "history": [(h["train_loss"], h.get("val_auc"), h.get("val_logloss")) for h in history],
        "metrics": metrics,
        "metrics_first_batch": first_only,
        "state": None if state is None else {k: v.detach().clone() for k, v in state.items()},
        "sharded": D.is_sharded(trainer.model),
        "summary": D.sharding_summary(model) if D.is_initialized() else None,
    }


RESUMED = ("ddp_sparse_full", "dmp_unified_tw")


def main(argv: List[str]) -> int:
    from slimembed.ctr import distributed as D

    out = Path(argv[0])
    assert D.init_distributed(), "run me under torchrun"
    rank, world = D.get_rank(), D.get_world_size()
    for name in SCENARIOS:
        ckpt = out / f"ckpt_{name}_rank{rank}"
        res = run(name, rank, world, checkpoint_dir=str(ckpt))
        res["wrote_checkpoint"] = (ckpt / "last.pt").exists()
        torch.save(res, out / f"{name}.rank{rank}.pt")
    for name in RESUMED:
        ckpt = str(out / f"ckpt_{name}_resume_rank{rank}")
        run(name, rank, world, checkpoint_dir=ckpt, max_steps=STEPS // 2)
        torch.save(run(name, rank, world, checkpoint_dir=ckpt, resume=True), out / f"{name}_resumed.rank{rank}.pt")
    from slimembed.ctr.cli import main as cli_main

    for i, config in enumerate(argv[1:]):  # `slimembed train` inside this torchrun job
        torch.save({"code": cli_main(["train", "--config", config])}, out / f"cli{i}.rank{rank}.pt")
    D.barrier()
    D.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
