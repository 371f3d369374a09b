"""Distributed CPU training throughput: one process against N processes (torchrun, gloo), same run.

Every configuration trains the same experiment (synthetic Criteo-like data, DeepFM, one global
batch size) through the real ``slimembed train`` path (:func:`slimembed.ctr.experiment.run_experiment`);
the N-process run is launched by ``torchrun`` on loopback (127.0.0.1, a free port), each process
sees ``1 / N`` of every global batch (``make_loader(rank, world_size)``) and DDP averages the
gradients. Throughput is the record's ``samples_per_s``: training samples of all ranks divided by
rank 0's training time (evaluation excluded).

Rows of the table:

* ``1 proc x T threads``: one process using all ``T`` intra-op threads (``--threads``, default:
  the CPU count): what you get without torchrun;
* ``1 proc x 1 thread``: the per-process budget of the N-process run;
* ``N procs x 1 thread``: the distributed run (torchrun sets ``OMP_NUM_THREADS=1``).

Example::

    python examples/distributed_throughput.py --rows 100000 --nproc 2
    python examples/distributed_throughput.py --method multiplexed --table-backend torchrec \\
        --sharding table_wise --embedding-optimizer rowwise_adagrad      # torchrec DMP instead of DDP

Results (and the records) go to ``--out`` (``runs/distributed_throughput``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(args: argparse.Namespace, data: Path, out: Path, threads: int) -> Dict[str, Any]:
    table: Dict[str, Any] = {"method": args.method}
    if args.compression and args.method != "full":
        table["compression"] = args.compression
    if args.table_backend:
        table["backend"] = args.table_backend
        if args.table_backend == "torchrec":
            table["sparse"] = False
    return {
        "data": {"path": str(data), "batch_size": args.batch_size, "eval_batch_size": 16384},
        "model": {"name": args.model, "embedding_dim": args.embedding_dim},
        "table": table,
        "train": {"epochs": args.epochs, "lr": 1e-3, "seed": 0, "embedding_optimizer": args.embedding_optimizer,
                  "early_stop_patience": None, "num_threads": threads, "max_eval_batches": 1,
                  "log_every": 10**9},
        "distributed": {"sharding": args.sharding},
        "output": str(out),
    }


def _run(cmd: List[str], env: Dict[str, str], timeout: float) -> None:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}")


def measure(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import yaml

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if not (data / "schema.json").exists():
        from slimembed.datasets import generate

        print(f"generating {args.rows} synthetic rows into {data} ...", flush=True)
        generate(data, rows=args.rows, seed=0, scale=args.scale)
    cores = args.threads or os.cpu_count() or 1
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    runs = [(f"1 proc x {cores} threads", 1, cores), ("1 proc x 1 thread", 1, 1),
            (f"{args.nproc} procs x 1 thread", args.nproc, 1)]
    if cores == 1:
        runs = runs[1:]
    rows: List[Dict[str, Any]] = []
    for label, nproc, threads in runs:
        rec_path = out / f"record_{nproc}p_{threads}t.json"
        cfg_path = out / f"config_{nproc}p_{threads}t.yaml"
        cfg_path.write_text(yaml.safe_dump(_config(args, data, rec_path, threads)))
        if nproc == 1:
            cmd = [sys.executable, __file__, "--worker", str(cfg_path)]
            run_env = {**env, "OMP_NUM_THREADS": str(threads)}
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   __file__, "--worker", str(cfg_path)]
            run_env = {**env, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        _run(cmd, run_env, args.timeout)
        rec = json.loads(rec_path.read_text())
        rows.append({
            "run": label, "processes": nproc, "threads_per_process": threads,
            "train_samples": rec["train_samples"], "train_time_s": round(rec["train_time_s"], 3),
            "samples_per_s": round(rec["samples_per_s"], 1), "steps": rec["steps"],
            "test_auc": rec["metrics"]["test"]["auc"] if rec["metrics"]["test"] else None,
            "wall_s_incl_startup": round(time.perf_counter() - t0, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup_vs_first"] = round(r["samples_per_s"] / base, 3)
    (out / "throughput.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2) + "\n")
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| run | samples/s | train time (s) | steps | test AUC | speed-up |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        auc = f"{r['test_auc']:.4f}" if r["test_auc"] is not None else "-"
        lines.append(f"| {r['run']} | {r['samples_per_s']:.0f} | {r['train_time_s']:.2f} | {r['steps']} | {auc} | "
                     f"{r['speedup_vs_first']:.2f}x |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one experiment config
    p.add_argument("--data", help="an existing processed dataset (default: generate one)")
    p.add_argument("--rows", type=int, default=100_000, help="synthetic rows to generate")
    p.add_argument("--scale", type=float, default=0.002, help="cardinality scale of the synthetic data")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--method", default="hash", help="table method (compressed tables train under DDP)")
    p.add_argument("--compression", type=float, default=10.0)
    p.add_argument("--table-backend", default=None, help="e.g. torchrec for unified/multiplexed + sharding")
    p.add_argument("--embedding-optimizer", default="adam")
    p.add_argument("--sharding", default="none", help="distributed.sharding (none = DDP)")
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (each of N processes takes 1/N)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="threads of the 1-process baseline (default: CPUs)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="runs/distributed_throughput")
    args = p.parse_args(argv)
    if args.worker:
        from slimembed.ctr.experiment import load_config, run_experiment

        run_experiment(load_config(args.worker))
        return 0
    rows = measure(args)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
