"""Distributed training on 2 CPU processes over loopback (gloo), against one process.

One torchrun job (``_distributed_worker.py``, 2 ranks on 127.0.0.1 and a free port) runs every
scenario while this process trains the single-process references on the same data and global
batches; then the results are compared:

* DDP (a hashed table with dense Adam; sparse-gradient full tables with row-wise Adagrad, whose
  gradients bypass DDP's reducer): the same weights on both ranks, and the same weights, loss
  curve and validation AUC/logloss (gathered over ranks, never averaged) as one process on the
  whole global batch;
* torchrec DMP: a ``unified`` table (backend torchrec, two shared sub-tables + a collision-free
  block) sharded table-wise and a ``full`` table sharded column-wise (8-wide shards): the gathered
  weights after training equal the unsharded module trained the same way;
* exact resume from rank 0's checkpoint (DDP and DMP, without shared storage), only rank 0
  writing files, and ``slimembed train`` under torchrun matching the single-process command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as W  # noqa: E402

from slimembed.ctr import distributed as D  # noqa: E402

pytest.importorskip("torchrec")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

WORKER = Path(__file__).parent / "_distributed_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_configs(root: Path, data: Path):
    from slimembed.datasets import load_processed

    n = load_processed(data).splits["train"]
    batch = next(g for g in range(n // 4, 1, -1) if n % g == 0 and g % 2 == 0)  # >= 4 steps, none partial
    common = {"data": {"path": str(data), "batch_size": batch, "eval_batch_size": 256},
              "model": {"name": "deepfm", "hidden_units": [16]}}
    cfgs = {
        "ddp": {**common, "table": {"method": "hash", "compression": 4},
                "train": {"epochs": 1, "seed": 0, "lr": 0.003, "eval_every": 2},
                "distributed": {"sharding": "none"}},
        "dmp": {**common, "table": {"method": "multiplexed", "backend": "torchrec", "sparse": False, "compression": 4},
                "train": {"epochs": 1, "seed": 0, "lr": 0.003, "embedding_optimizer": "rowwise_adagrad"},
                "distributed": {"sharding": "table_wise"}},
    }
    paths = {}
    for name, cfg in cfgs.items():
        cfg["output"] = str(root / f"{name}_torchrun.json")
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg))
    return paths


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Start the 2-rank torchrun job, train the references meanwhile, wait for the job."""
    from slimembed.ctr.experiment import load_config, run_experiment
    from slimembed.datasets import generate

    root = tmp_path_factory.mktemp("distributed")
    data = root / "data"
    generate(data, rows=3000, seed=3, scale=0.001)
    configs = _cli_configs(root, data)
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(WORKER), str(out), str(configs["ddp"]), str(configs["dmp"])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        refs = {name: W.run(name) for name in W.SCENARIOS}
        cli_refs = {}
        for name, path in configs.items():  # the same configs, one process (distributed: ignored)
            cfg = load_config(path, [f"output={root / (name + '_single.json')}"])
            cli_refs[name] = run_experiment(cfg)
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"torchrun job failed:\n{log[-6000:]}"
    load = lambda name, r: torch.load(out / f"{name}.rank{r}.pt", weights_only=False)  # noqa: E731
    return {"out": out, "refs": refs, "cli_refs": cli_refs, "load": load, "log": log,
            "wall_s": time.perf_counter() - t0, "root": root}


def _close(a: dict, b: dict, atol: float = 2e-6) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        worst = max(worst, float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0)
    assert worst <= atol, worst
    return worst


def _as_full_layout(state: dict) -> dict:
    """A sharded ``full`` model's per-feature torchrec tables, concatenated as FullTable's weight."""
    keys = sorted((k for k in state if ".ebc.embedding_bags.full_" in k),
                  key=lambda k: int(k.split("full_C")[1].split(".")[0]))  # feature order C0, C1, ...
    if not keys:
        return state
    out = {k: v for k, v in state.items() if k not in keys}
    out[keys[0].split(".ebc.")[0] + ".weight"] = torch.cat([state[k] for k in keys])
    return out


def _same_curve(ref_hist, hist):
    assert len(ref_hist) == len(hist) == W.STEPS // 3
    for (l0, a0, g0), (l1, a1, g1) in zip(ref_hist, hist):
        assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-7)  # global-batch training loss
        assert a1 == pytest.approx(a0, abs=1e-6)  # AUC of the gathered predictions
        assert g1 == pytest.approx(g0, rel=1e-6)


@pytest.mark.parametrize("name", ["ddp_hash", "ddp_sparse_full"])
def test_ddp_matches_single_process(job, name):
    r0, r1, ref = job["load"](name, 0), job["load"](name, 1), job["refs"][name]
    assert not r0["sharded"]
    _close(r0["state"], r1["state"], atol=0.0)  # DDP: identical replicas
    _close(ref["state"], r0["state"])  # = one process on the whole global batch
    _same_curve(ref["history"], r0["history"])
    assert r0["metrics"]["num_samples"] == r1["metrics"]["num_samples"] == W.N_VAL
    assert r0["metrics"]["auc"] == r1["metrics"]["auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-6)


@pytest.mark.parametrize("name", ["dmp_unified_tw", "dmp_full_cw"])
def test_dmp_sharded_table_matches_unsharded(job, name):
    r0, r1, ref = job["load"](name, 0), job["load"](name, 1), job["refs"][name]
    assert r0["sharded"] and r1["state"] is None  # gathered on rank 0 only
    plan = r0["summary"]["plan"]
    want = "table_wise" if name.endswith("tw") else "column_wise"
    assert want in plan and "rank:1" in plan and "rank:0" in plan  # placed on both ranks
    # the 1-dim first-order table cannot use the fused kernel: replicated, and the reason is given
    (why,) = r0["summary"]["not_sharded"].values()
    assert "divisible by 4" in why
    moved = _close(ref["state"], W.build_model(name).state_dict(), atol=10.0)
    assert moved > 1e-3  # training did change the weights
    _close(ref["state"], _as_full_layout(r0["state"]))
    _same_curve(ref["history"], r0["history"])
    assert r0["metrics"]["auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-6)
    # a rank with no evaluation batch at all still steps with the others (collective forwards)
    assert r1["metrics_first_batch"]["num_samples"] == ref["metrics_first_batch"]["num_samples"] == W.VAL_BATCH
    assert r1["metrics_first_batch"]["auc"] == pytest.approx(ref["metrics_first_batch"]["auc"], abs=1e-6)


def test_only_rank0_writes_and_checkpoints_hold_full_weights(job):
    for name in W.SCENARIOS:
        assert job["load"](name, 0)["wrote_checkpoint"] and not job["load"](name, 1)["wrote_checkpoint"]
        assert not (job["out"] / f"ckpt_{name}_rank1").exists()
    ckpt = torch.load(job["out"] / "ckpt_dmp_unified_tw_rank0" / "last.pt", weights_only=False)
    _close(ckpt["model"], job["load"]("dmp_unified_tw", 0)["state"], atol=0.0)
    assert len(ckpt["optimizer"]["fused"]["__per_rank__"]) == 2  # sharded optimizer state, per rank


@pytest.mark.parametrize("name", W.RESUMED)
def test_resume_from_rank0_checkpoint_is_exact(job, name):
    straight = job["load"](name, 0)
    resumed = torch.load(job["out"] / f"{name}_resumed.rank0.pt", weights_only=False)
    _close(straight["state"], resumed["state"], atol=0.0)
    assert resumed["history"] == straight["history"]


@pytest.mark.parametrize("name", ["ddp", "dmp"])
def test_slimembed_train_under_torchrun_matches_one_process(job, name):
    for r in (0, 1):
        assert torch.load(job["out"] / f"cli{['ddp', 'dmp'].index(name)}.rank{r}.pt")["code"] == 0
    rec = json.loads((job["root"] / f"{name}_torchrun.json").read_text())
    ref = job["cli_refs"][name]
    assert rec["distributed"]["world_size"] == 2 and rec["distributed"]["backend"] == "gloo"
    assert ("table_wise" in (rec["distributed"]["plan"] or "")) == (name == "dmp")
    assert rec["train_samples"] == ref["train_samples"] and rec["steps"] == ref["steps"]
    for split in ("val", "test"):
        assert rec["metrics"][split]["num_samples"] == ref["metrics"][split]["num_samples"]
        assert rec["metrics"][split]["auc"] == pytest.approx(ref["metrics"][split]["auc"], abs=1e-6)
        assert rec["metrics"][split]["logloss"] == pytest.approx(ref["metrics"][split]["logloss"], rel=1e-6)
    for h0, h1 in zip(ref["history"], rec["history"]):
        assert h1["train_loss"] == pytest.approx(h0["train_loss"], rel=1e-6)
    assert rec["model"] == ref["model"]
    assert rec["memory"]["full_bytes"] == ref["memory"]["full_bytes"]
    assert rec["memory"]["param_bytes"] == ref["memory"]["param_bytes"]


# ------------------------------------------------------------------ no processes needed
def test_single_process_is_untouched():
    model = W.build_model("ddp_hash")
    assert not D.is_initialized() and D.is_main_process() and D.get_world_size() == 1
    assert D.wrap_model(model, {"sharding": "table_wise"}) is model
    assert D.unwrap_model(model) is model and not D.is_sharded(model)
    from slimembed.ctr.metrics import evaluate

    assert D.evaluate(model, W.val_batches()) == evaluate(model, W.val_batches())
    from slimembed.ctr.trainer import train_and_evaluate

    rec = train_and_evaluate(model, W.train_batches()[:2], W.val_batches(), config=W.train_config("ddp_hash"))
    assert "distributed" not in rec


def test_config_errors_say_what_and_why(tmp_path):
    with pytest.raises(ValueError, match="sharding must be one of"):
        D.DistributedConfig.from_dict({"sharding": "rows"})
    with pytest.raises(ValueError, match="unknown distributed keys"):
        D.DistributedConfig.from_dict({"shards": 2})
    with pytest.raises(ValueError, match="multiple of 4"):
        D.DistributedConfig(column_shard_dim=6)
    with pytest.raises(ValueError, match="quotient and remainder"):
        D.check_method_shardable("qr")
    with pytest.raises(ValueError, match="tensor-train"):
        D.check_method_shardable("tt")
    with pytest.raises(ValueError, match="backend: torchrec"):
        D.check_method_shardable("unified", {"backend": "gather"})
    D.check_method_shardable("multiplexed", {"backend": "torchrec"})
    D.check_method_shardable("full")
    with pytest.raises(ValueError, match="not supported in CPU mode"):
        D.fused_params_for({"embedding_optimizer": "adam"}, "cpu")
    assert D.fused_params_for({"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1})["learning_rate"] == 0.1
    # the experiment config validates the section before reading data
    from slimembed.ctr.experiment import validate_config

    from slimembed.datasets import generate

    generate(tmp_path / "d", rows=300, seed=0, scale=0.0005)
    base = {"data": {"path": str(tmp_path / "d"), "batch_size": 64, "eval_batch_size": 64, "fold": None,
                     "fold_min_rows": 0, "shuffle": True, "block_size": 1024},
            "model": {"name": "deepfm", "embedding_dim": 16}, "train": {}, "output": None}
    with pytest.raises(ValueError, match="cannot be sharded"):
        validate_config({**base, "table": {"method": "hash"}, "distributed": {"sharding": "table_wise"}})
    validate_config({**base, "table": {"method": "hash"}, "distributed": {"sharding": "none"}})
    # shardability per table of a built model
    reasons = D.sharding_candidates(W.build_model("ddp_hash"))
    assert set(reasons) == {"embedding", "first_order"} and all("gather engine" in r for r in reasons.values())
    assert all(r is None for r in D.sharding_candidates(W.build_model("dmp_unified_tw")).values())


def test_runtime_is_picked_from_the_process_and_trainer_asks_it():
    from slimembed.ctr.runtime import LocalRuntime, make_runtime, runtime_for
    from slimembed.ctr.trainer import Trainer

    model = W.build_model("ddp_hash")
    assert isinstance(make_runtime({"sharding": "table_wise"}), LocalRuntime)  # no process group
    rt = runtime_for(model)
    assert rt.name == "local" and rt.is_main and rt.world_size == 1 and rt.reduce_mean(0.0, 0) != rt.reduce_mean(0.0, 0)
    calls = []

    class Spy(LocalRuntime):  # a runtime the trainer must go through for evaluation and state
        def all_gather_1d(self, t):
            calls.append("gather")
            return t

        def optimizers(self, model, train_config):
            calls.append("optimizers")
            return super().optimizers(model, train_config)

    trainer = Trainer(model, W.train_batches()[:3], W.val_batches(), W.train_config("ddp_hash"), runtime=Spy())
    trainer.fit()
    assert "gather" in calls and "optimizers" in calls
    with pytest.raises(RuntimeError, match="needs a process group"):
        from slimembed.ctr.runtime import DDPRuntime

        DDPRuntime()


def test_shardability_is_the_tables_answer(monkeypatch):
    from slimembed.ctr.runtime import shardability
    from slimembed.tables import get_table_class

    table = W.build_model("ddp_hash").embedding
    monkeypatch.setattr(type(table), "why_not_shardable", lambda self: "asked the table", raising=False)
    assert shardability.why_not_shardable(table) == "asked the table"
    monkeypatch.setattr(get_table_class("tt"), "why_not_shardable_config",
                        classmethod(lambda cls, cfg: f"asked the class with {sorted(cfg)}"), raising=False)
    with pytest.raises(ValueError, match=r"'tt' cannot be sharded .*asked the class with \['rank'\]"):
        D.check_method_shardable("tt", {"rank": 4})


def test_torchrec_full_table_has_full_rows():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from slimembed.tables import Feature, TorchrecFullTable, make_table

    torch.manual_seed(0)
    full = make_table("full", [Feature("C0", 7, 4), Feature("C1", 5, 4, pooling="mean")])
    t = D.to_torchrec_full(full)
    assert isinstance(t, TorchrecFullTable) and t.why_not_shardable() is None and t.method == "full"
    ids = torch.tensor([[6, 4], [0, 1], [3, 0]])
    assert torch.equal(t(ids), full(ids))  # [B, F, D]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["C0", "C1"], values=torch.tensor([1, 2, 6, 4, 0, 3]),
                                              lengths=torch.tensor([2, 1, 0, 1, 1, 1]))
    assert torch.allclose(t(kjt).values(), full(kjt).values(), atol=1e-6)
    with pytest.raises(ValueError, match="one embedding_dim"):
        TorchrecFullTable([Feature("C0", 7, 4), Feature("C1", 5, 8)])
