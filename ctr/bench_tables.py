"""``slimembed bench tables``: forward+backward throughput of every table method.

Every method is timed on the same id batches (batch 4096, 26 Criteo-like fields, dim 16 by
default) in the same run as the full table and torchrec's ``EmbeddingBagCollection``; results
are printed as samples/s and as ratios to the full table. Rounds are interleaved (full, method,
full, method, ...) and the median round is reported, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from slimembed.tables import Feature, available_methods, make_table, memory_report



def criteo_features(scale: float, dim: int) -> List[Feature]:
    from slimembed.datasets.criteo import CRITEO_KAGGLE_CARDINALITIES

    return [
        Feature(f"C{i + 1}", max(2, min(n, int(round(n * scale))) if n > 1000 else n), dim)
        for i, n in enumerate(CRITEO_KAGGLE_CARDINALITIES)
    ]


def _zipf_ids(features: Sequence[Feature], batch: int, gen: torch.Generator) -> torch.Tensor:
    # Zipf-like ids (rank ~ u^(-1)), like real CTR traffic: hot rows repeat within a batch.
    cols = []
    for f in features:
        u = torch.rand(batch, generator=gen).clamp_min(1e-9)
        cols.append(((u ** -1.1) - 1).long().clamp_max(f.num_embeddings - 1))
    return torch.stack(cols, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[torch.Tensor], None], batches: List[Any],
                device: torch.device = torch.device("cpu")) -> float:
    # Kernels run asynchronously on an accelerator: wait for them before reading the clock.
    _sync(device)
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    _sync(device)
    return time.perf_counter() - t0


def _table_step(table: torch.nn.Module) -> Callable[[Any], None]:
    def step(ids: Any) -> None:
        table.zero_grad(set_to_none=True)
        out = table(ids)
        out = out if isinstance(out, torch.Tensor) else out.values()  # KeyedTensor
        out.sum().backward()

    return step


def _to_kjt(ids: torch.Tensor, names: List[str]):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(
        keys=names, values=ids.t().reshape(-1), lengths=torch.ones(ids.numel(), dtype=torch.long)
    )


def bench_tables(
    methods: Optional[Sequence[str]] = None,
    batch_size: int = 4096,
    dim: int = 16,
    scale: float = 0.02,
    compression: float = 10.0,
    steps: int = 10,
    rounds: int = 5,
    threads: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """Measure samples/s of forward+backward for each method; returns one row per method.

    ``device``: where tables and id batches live (``"cuda"`` times GPU kernels, synchronising
    before and after each timed block).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    features = criteo_features(scale, dim)
    names = [f.name for f in features]
    gen = torch.Generator().manual_seed(seed)
    batches = [_zipf_ids(features, batch_size, gen).to(dev) for _ in range(steps)]
    methods = [m for m in (methods or available_methods()) if m != "full"]
    candidates: Dict[str, Callable[[Any], None]] = {}
    inputs: Dict[str, List[Any]] = {}
    bytes_: Dict[str, int] = {}
    torch.manual_seed(seed)
    full = make_table("full", features).to(dev)
    candidates["full"], inputs["full"], bytes_["full"] = _table_step(full), batches, memory_report(full).table_bytes
    try:
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(num_embeddings=f.num_embeddings, embedding_dim=dim, name=f"t_{f.name}",
                                       feature_names=[f.name]) for f in features],
            device=dev,
        )
        kjts = [_to_kjt(b, names).to(dev) for b in batches]
        candidates["torchrec_ebc"], inputs["torchrec_ebc"] = _table_step(ebc), kjts
        bytes_["torchrec_ebc"] = sum(p.numel() * 4 for p in ebc.parameters())
    except Exception as e:  # pragma: no cover - reported, not hidden
        print(f"[bench] torchrec EmbeddingBagCollection unavailable: {e}")
    for m in methods:
        try:
            t = make_table(m, features, compression=compression).to(dev)
        except Exception as e:
            print(f"[bench] {m}: cannot build at {compression}x: {e}")
            continue
        candidates[m], inputs[m], bytes_[m] = _table_step(t), batches, memory_report(t).table_bytes
    for name, step in candidates.items():  # warm-up
        step(inputs[name][0])
    times: Dict[str, List[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, step in candidates.items():
            times[name].append(_time_steps(step, inputs[name], dev))
    rows = []
    full_rate = batch_size * steps / statistics.median(times["full"])
    for name in candidates:
        rate = batch_size * steps / statistics.median(times[name])
        rows.append({"method": name, "samples_per_s": rate, "ratio_vs_full": rate / full_rate,
                     "table_bytes": bytes_[name],
                     "compression": bytes_["full"] / bytes_[name] if bytes_[name] else float("nan")})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="slimembed bench tables", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--scale", type=float, default=0.02, help="Criteo Kaggle cardinalities x scale (>1000-row fields)")
    p.add_argument("--compression", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--device", default="cpu", help="torch device for tables and batches (e.g. cuda)")
    a = p.parse_args(argv)
    rows = bench_tables(a.methods, a.batch_size, a.dim, a.scale, a.compression, a.steps, a.rounds, a.threads,
                        device=a.device)
    where = torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith("cuda") else "cpu"
    print(f"forward+backward, batch {a.batch_size}, 26 fields, dim {a.dim}, compression {a.compression}x, "
          f"threads {torch.get_num_threads()}, device {a.device} ({where})")
    print("| table | samples/s | vs full | table bytes | compression |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['samples_per_s']:,.0f} | {r['ratio_vs_full']:.2f}x | {r['table_bytes']:,} | "
              f"{r['compression']:.1f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
