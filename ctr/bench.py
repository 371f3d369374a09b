"""Training-throughput benchmark of embedding paths (the ``slimembed bench train`` command).

One DeepFM-shaped model, identical for every variant except its embedding path:

``logit = FM(V) + MLP([flatten(V), dense]) + Linear(dense)``, ``V = [B, F, D]`` field embeddings,
MLP ``hidden`` (default 400x3, ReLU). There is no first-order table, so the variants differ only
in the ``F x D`` lookup, its backward and its optimizer. Variants:

=========================== ===================================================================
``full/adam``               slimembed ``FullTable`` (dense ids ``[B, F]``), ``torch.optim.Adam``
``full/sparse_adam``        ``FullTable(sparse=True)``, ``SparseAdam`` (lazy, touched rows only)
``full/rowwise_adagrad``    ``FullTable(sparse=True)``, slimembed ``RowWiseAdagrad``
``nn.Embedding/adam``       (a) one ``nn.Embedding`` per field in a Python loop, dense Adam
``torchrec.EBC/adam``       (b) torchrec ``EmbeddingBagCollection`` on a ``KeyedJaggedTensor``,
                            dense Adam
``torchrec.FusedEBC/rowwise_adagrad`` (c) torchrec ``FusedEmbeddingBagCollection`` (fbgemm TBE,
                            CPU), ``EXACT_ROWWISE_ADAGRAD`` fused into the backward
=========================== ===================================================================

Ids are random (uniform, or log-uniform "zipf") over Criteo Kaggle's 26 per-field cardinalities
times ``scale`` (at least ``min_rows``). Batches (both the ``[B, F]`` and the KJT form) are built
before timing, as a loader would hand them over; each variant runs ``warmup`` steps, then
``steps`` timed steps. The dense part is Adam at ``lr``; the tables' learning rate is
``embedding_lr``. The output is a table of samples/s and the ratio to variant (c).

Usage (minutes on a CPU, so not a doctest)::

    rows = bench_train(steps=10, warmup=2, scale=0.01)      # from Python
    python -m slimembed.ctr.bench --steps 10 --scale 0.01 --threads 2   # from a shell
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimembed.tables import Feature, FullTable

# Criteo Kaggle (Display Advertising Challenge) C1..C26 cardinalities, as counted by DLRM.
CRITEO_KAGGLE_CARDINALITIES: Tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
VARIANTS: Tuple[str, ...] = (
    "full/adam",
    "full/sparse_adam",
    "full/rowwise_adagrad",
    "nn.Embedding/adam",
    "torchrec.EBC/adam",
    "torchrec.FusedEBC/rowwise_adagrad",
)
REFERENCE = "torchrec.FusedEBC/rowwise_adagrad"


def bench_cardinalities(num_fields: int = 26, scale: float = 0.01, min_rows: int = 4) -> List[int]:
    """Criteo-like cardinalities for ``num_fields`` fields (cycled past 26), scaled by ``scale``."""
    base = CRITEO_KAGGLE_CARDINALITIES
    return [max(min_rows, int(round(base[i % len(base)] * scale))) for i in range(num_fields)]


# ---------------------------------------------------------------------------------- model
class DeepFMHead(nn.Module):
    """``[B, F, D]`` field embeddings + ``[B, n_dense]`` -> logits ``[B]``: FM + MLP + dense linear."""

    def __init__(self, num_fields: int, dim: int, num_dense: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        width = num_fields * dim + num_dense
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.dense_linear = nn.Linear(num_dense, 1) if num_dense else None

    def forward(self, dense: Tensor, v: Tensor) -> Tensor:
        s = v.sum(1)
        fm = 0.5 * (s * s - (v * v).sum(1)).sum(1)
        out = fm + self.mlp(torch.cat([v.flatten(1), dense], 1)).squeeze(1)
        if self.dense_linear is not None:
            out = out + self.dense_linear(dense).squeeze(1)
        return out


class PerFieldEmbedding(nn.Module):
    """(a) One ``nn.Embedding`` per field, looked up in a Python loop over fields."""

    def __init__(self, cards: Sequence[int], dim: int) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(c, dim) for c in cards)
        for e in self.embs:
            nn.init.uniform_(e.weight, -0.05, 0.05)

    def forward(self, ids: Tensor) -> Tensor:
        return torch.stack([e(ids[:, i]) for i, e in enumerate(self.embs)], 1)


class KeyedToFields(nn.Module):
    """Wrap a torchrec (Fused)EmbeddingBagCollection: KJT -> ``[B, F, D]``."""

    def __init__(self, ebc: nn.Module, num_fields: int, dim: int) -> None:
        super().__init__()
        self.ebc, self.num_fields, self.dim = ebc, num_fields, dim

    def forward(self, kjt: Any) -> Tensor:
        return self.ebc(kjt).values().view(-1, self.num_fields, self.dim)


class BenchModel(nn.Module):
    """An embedding path + the shared :class:`DeepFMHead`."""

    def __init__(self, embedding: nn.Module, head: DeepFMHead) -> None:
        super().__init__()
        self.embedding, self.head = embedding, head

    def embedding_tables(self) -> List[nn.Module]:
        return [self.embedding] if isinstance(self.embedding, FullTable) else []

    def dense_parameters(self) -> List[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, dense: Tensor, sparse: Any) -> Tensor:
        return self.head(dense, self.embedding(sparse))


def _ebc_configs(cards: Sequence[int], dim: int):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    return [
        EmbeddingBagConfig(num_embeddings=c, embedding_dim=dim, name=f"t{i}", feature_names=[f"f{i}"])
        for i, c in enumerate(cards)
    ]


def build_variant(
    name: str, cards: Sequence[int], dim: int, num_dense: int, hidden: Sequence[int], lr: float,
    embedding_lr: float,
) -> Tuple[nn.Module, Callable[[], None], Callable[[], None], str]:
    """``(model, step_fn, zero_grad_fn, input_kind)`` for variant ``name``; input_kind: dense|kjt."""
    from .optim import build_optimizers

    head = DeepFMHead(len(cards), dim, num_dense, hidden)
    feats = [Feature(f"f{i}", c, dim) for i, c in enumerate(cards)]
    if name.startswith("full/"):
        opt_name = name.split("/", 1)[1]
        from .optim import table_kwargs_for

        model = BenchModel(FullTable(feats, **table_kwargs_for(opt_name)), head)
        opt = build_optimizers(model, {"lr": lr, "embedding_optimizer": opt_name, "embedding_lr": embedding_lr})
        return model, opt.step, opt.zero_grad, "dense"
    if name == "nn.Embedding/adam":
        model = BenchModel(PerFieldEmbedding(cards, dim), head)
        adam = torch.optim.Adam(model.parameters(), lr=lr)
        return model, adam.step, lambda: adam.zero_grad(set_to_none=True), "dense"
    if name == "torchrec.EBC/adam":
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        ebc = EmbeddingBagCollection(tables=_ebc_configs(cards, dim), device=torch.device("cpu"))
        for p in ebc.parameters():
            nn.init.uniform_(p, -0.05, 0.05)
        model = BenchModel(KeyedToFields(ebc, len(cards), dim), head)
        adam = torch.optim.Adam(model.parameters(), lr=lr)
        return model, adam.step, lambda: adam.zero_grad(set_to_none=True), "kjt"
    if name == "torchrec.FusedEBC/rowwise_adagrad":
        if dim % 4:
            raise ValueError(f"FusedEmbeddingBagCollection (fbgemm TBE) needs dim % 4 == 0, got {dim}")
        import torchrec.optim as trec_optim
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

        # torchrec maps torchrec.optim.RowWiseAdagrad to fbgemm EmbOptimType.EXACT_ROWWISE_ADAGRAD.
        fused = FusedEmbeddingBagCollection(
            tables=_ebc_configs(cards, dim), optimizer_type=trec_optim.RowWiseAdagrad,
            optimizer_kwargs={"lr": embedding_lr}, device=torch.device("cpu"),
        )
        model = BenchModel(KeyedToFields(fused, len(cards), dim), head)
        adam = torch.optim.Adam(head.parameters(), lr=lr)  # the tables update inside backward
        return model, adam.step, lambda: adam.zero_grad(set_to_none=True), "kjt"
    raise ValueError(f"unknown variant {name!r}; available: {', '.join(VARIANTS)}")


# ---------------------------------------------------------------------------------- data
def make_batches(
    cards: Sequence[int], batch_size: int, num_dense: int, n: int, seed: int, distribution: str
) -> List[Dict[str, Any]]:
    """``n`` random batches in both forms: ``ids [B, F]`` and a KJT (feature-major, one id per bag)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    limits = torch.tensor(cards, dtype=torch.float64)
    keys = [f"f{i}" for i in range(len(cards))]
    out = []
    for _ in range(n):
        u = torch.rand(batch_size, len(cards), generator=g, dtype=torch.float64)
        if distribution == "uniform":
            ids = (u * limits).long()
        elif distribution == "zipf":  # log-uniform: P(id) ~ 1 / (id + 1), a Zipf-like head
            ids = (torch.exp(u * torch.log1p(limits)) - 1.0).long()
        else:
            raise ValueError(f"distribution must be 'uniform' or 'zipf', got {distribution!r}")
        ids = torch.minimum(ids, torch.tensor(cards) - 1)
        kjt = KeyedJaggedTensor(
            keys=keys, values=ids.t().contiguous().reshape(-1),
            lengths=torch.ones(batch_size * len(cards), dtype=torch.int32),
        )
        out.append({
            "dense": torch.randn(batch_size, num_dense, generator=g),
            "ids": ids,
            "kjt": kjt,
            "labels": (torch.rand(batch_size, generator=g) < 0.25).float(),
        })
    return out


# ---------------------------------------------------------------------------------- run
def _train_step(model: nn.Module, step: Callable[[], None], zero_grad: Callable[[], None], kind: str,
                b: Dict[str, Any]) -> Tensor:
    zero_grad()
    logits = model(b["dense"], b["ids"] if kind == "dense" else b["kjt"])
    loss = F.binary_cross_entropy_with_logits(logits, b["labels"])
    loss.backward()
    step()
    return loss.detach()


def bench_train(
    batch_size: int = 4096,
    num_fields: int = 26,
    dim: int = 16,
    hidden: Sequence[int] = (400, 400, 400),
    num_dense: int = 13,
    scale: float = 0.01,
    min_rows: int = 4,
    steps: int = 20,
    warmup: int = 5,
    rounds: int = 3,
    num_threads: Optional[int] = None,
    variants: Optional[Sequence[str]] = None,
    lr: float = 1e-3,
    embedding_lr: float = 0.01,
    distribution: str = "uniform",
    seed: int = 0,
    print_table: bool = True,
    file: Any = None,
) -> List[Dict[str, Any]]:
    """Measure training samples/s of each embedding variant in one run; returns one dict per variant.

    All variants are built first and warmed up (``warmup`` steps each); then ``rounds`` rounds
    each time ``steps // rounds`` steps of every variant in turn, so a change of machine load
    hits all variants alike. ``samples_per_s`` is the best round (the least disturbed by other
    load on the machine, like ``timeit``'s minimum), ``samples_per_s_median`` the median and
    ``samples_per_s_rounds`` all of them. With ``rounds=1`` each variant is built, timed and freed in turn (for scales
    whose tables do not fit in memory all at once).

    Each dict: ``variant``, ``samples_per_s``, ``ms_per_step``, ``ratio_to_fused`` (samples/s over
    variant (c)'s), ``table_rows``, ``table_mb`` (fp32 rows), ``error`` (None, or why the variant
    could not run: the other variants still run). Prints a table unless ``print_table=False``.
    """
    if num_threads:
        torch.set_num_threads(int(num_threads))
    variants = list(variants or VARIANTS)
    rounds = max(1, int(rounds))
    per_round = max(1, steps // rounds)
    cards = bench_cardinalities(num_fields, scale, min_rows)
    batches = make_batches(cards, batch_size, num_dense, n=4, seed=seed, distribution=distribution)
    rows_total = sum(cards)
    results: Dict[str, Dict[str, Any]] = {}
    built: Dict[str, Tuple[Any, ...]] = {}
    counter = {"i": 0}

    def next_batch() -> Dict[str, Any]:
        counter["i"] += 1
        return batches[counter["i"] % len(batches)]

    def timed(name: str) -> None:
        model, step, zero_grad, kind = built[name]
        t0 = time.perf_counter()
        for _ in range(per_round):
            loss = _train_step(model, step, zero_grad, kind, next_batch())
        float(loss)
        results[name]["samples_per_s_rounds"].append(per_round * batch_size / (time.perf_counter() - t0))

    for name in variants:
        results[name] = {"variant": name, "table_rows": rows_total, "table_mb": rows_total * dim * 4 / 2**20,
                         "error": None, "samples_per_s_rounds": []}
        try:
            torch.manual_seed(seed)
            built[name] = build_variant(name, cards, dim, num_dense, hidden, lr, embedding_lr)
            built[name][0].train()
            for _ in range(warmup):
                _train_step(*built[name], next_batch())
            if rounds == 1:
                timed(name)
                del built[name]
        except Exception as e:  # report and go on: one broken path must not hide the others
            results[name]["error"] = f"{type(e).__name__}: {e}"
            built.pop(name, None)
    if rounds > 1:
        for _ in range(rounds):
            for name in list(built):
                try:
                    timed(name)
                except Exception as e:
                    results[name]["error"] = f"{type(e).__name__}: {e}"
                    del built[name]
    built.clear()
    out = list(results.values())
    for r in out:
        sps = sorted(r["samples_per_s_rounds"])
        ok = r["error"] is None and sps
        r["samples_per_s"] = sps[-1] if ok else None  # best round: least disturbed by other load
        r["samples_per_s_median"] = sps[len(sps) // 2] if ok else None
        r["ms_per_step"] = 1e3 * batch_size / r["samples_per_s"] if ok else None
    ref = results.get(REFERENCE, {}).get("samples_per_s")
    for r in out:
        r["ratio_to_fused"] = (r["samples_per_s"] / ref) if ref and r["samples_per_s"] else None
    if print_table:
        header = (
            f"train throughput: batch {batch_size}, {num_fields} fields, dim {dim}, MLP "
            f"{'x'.join(map(str, hidden))}, {rows_total:,} rows ({rows_total * dim * 4 / 2**20:.1f} MiB fp32, "
            f"scale {scale}), {distribution} ids, {torch.get_num_threads()} threads, "
            f"{warmup} warmup + {rounds} rounds x {per_round} timed steps (best round)"
        )
        print(format_table(out, header), file=file or sys.stdout)
    return out


def format_table(results: Sequence[Dict[str, Any]], header: str = "") -> str:
    """A plain-text table of :func:`bench_train` results."""
    lines = [header] if header else []
    w = max(len(r["variant"]) for r in results)
    lines.append(f"{'variant':<{w}}  {'samples/s':>11}  {'ms/step':>9}  {'vs (c)':>7}  {'median':>9}")
    for r in results:
        if r["error"]:
            lines.append(f"{r['variant']:<{w}}  {'failed':>11}  {'':>9}  {'':>7}  {r['error']}")
            continue
        ratio = f"{r['ratio_to_fused']:.2f}x" if r["ratio_to_fused"] else "-"
        med = r.get("samples_per_s_median")
        med_s = f"{med:>9,.0f}" if med else f"{'-':>9}"
        lines.append(f"{r['variant']:<{w}}  {r['samples_per_s']:>11,.0f}  {r['ms_per_step']:>9.1f}  {ratio:>7}  {med_s}")
    return "\n".join(lines)


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Arguments of ``slimembed bench train`` (the CLI may pass its own sub-parser)."""
    p = parser or argparse.ArgumentParser(prog="slimembed bench train", description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--hidden", default="400,400,400", help="MLP widths, comma separated")
    p.add_argument("--num-dense", type=int, default=13)
    p.add_argument("--scale", type=float, default=0.01, help="fraction of Criteo Kaggle's cardinalities")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (1: one variant in memory at a time)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--variants", default=None, help=f"comma separated subset of: {','.join(VARIANTS)}")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embedding-lr", type=float, default=0.01)
    p.add_argument("--distribution", choices=["uniform", "zipf"], default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def run_from_args(args: argparse.Namespace) -> List[Dict[str, Any]]:
    results = bench_train(
        batch_size=args.batch_size, num_fields=args.fields, dim=args.dim,
        hidden=[int(h) for h in str(args.hidden).split(",") if h],
        num_dense=args.num_dense, scale=args.scale, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        num_threads=args.threads,
        variants=[v.strip() for v in args.variants.split(",")] if args.variants else None,
        lr=args.lr, embedding_lr=args.embedding_lr, distribution=args.distribution, seed=args.seed,
    )
    if args.json:
        from .trainer import atomic_write_json

        atomic_write_json({"args": vars(args), "results": results}, args.json)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``slimembed bench train [options]``; returns 1 if any variant failed."""
    args = build_parser().parse_args(argv)
    results = run_from_args(args)
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
