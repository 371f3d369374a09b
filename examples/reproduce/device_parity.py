"""Check that every table method gives the same numbers on an accelerator as on the CPU.

For each registered method the script builds one table on the CPU, copies it to ``--device``,
feeds both the same Zipf-like id batch ``[B, F]`` and compares

* the forward output ``[B, F, D]``,
* the gradient of every parameter after ``(out * w).sum().backward()`` with fixed weights ``w``,
* one training step of DeepFM with that table (sparse Adam for the table, Adam for the rest):
  the logits before and the parameters after the step,
* for the gather-based tables, the int8 / fp16 export's output.

Run it on a GPU machine::

    python examples/reproduce/device_parity.py --device cuda

With ``--device cpu`` it compares the CPU with itself (a smoke run of the script; the tests do
that). Differences are reported as max |a - b|; the script exits 1 when one exceeds ``--atol``
(float32 reductions run in another order on a GPU, so exact equality is not expected).
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, Dict, List, Tuple

import torch

from slimembed.ctr.models import make_model
from slimembed.ctr.optim import build_optimizers, table_factory_for
from slimembed.tables import Feature, available_methods, make_table

# Built by exporting a trained OptEmbed table, not from features: covered by optembed's export.
SKIP = {"optembed-compact"}


def features(dim: int) -> List[Feature]:
    sizes = [3, 17, 150, 1000, 5000, 20000, 60000, 7]
    return [Feature(f"C{i + 1}", n, dim) for i, n in enumerate(sizes)]


def zipf_ids(feats: List[Feature], batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = [((torch.rand(batch, generator=g).clamp_min(1e-9) ** -1.1) - 1).long().clamp_max(f.num_embeddings - 1)
            for f in feats]
    return torch.stack(cols, 1)


def counts_kwargs(method: str, feats: List[Feature]) -> Dict[str, Any]:
    """Frequency-aware tables get Zipf-like training counts (id 1 the most frequent)."""
    from slimembed.tables import get_table_class

    if not getattr(get_table_class(method), "needs_counts", False):
        return {}
    return {"counts": {f.name: (torch.arange(f.num_embeddings).numpy(),
                                (f.num_embeddings - torch.arange(f.num_embeddings)).numpy()) for f in feats}}


def build(method: str, feats: List[Feature]) -> torch.nn.Module:
    from slimembed.tables import get_table_class

    cls = get_table_class(method)
    kw = counts_kwargs(method, feats)
    if cls.budget_knob is None:  # not sized by a budget (full, optembed)
        return make_table(method, feats, **kw)
    try:
        return make_table(method, feats, compression=10.0, **kw)
    except ValueError:  # 10x is below this method's floor (e.g. int8 reaches 4x): its lowest-ratio build
        return make_table(method, feats, compression=2.0, **kw)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max(1, max |a|): sums of many gradient terms are large, and a
    device (or a multi-threaded CPU) adds them in another order."""
    if not a.numel():
        return 0.0
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / max(1.0, float(a.abs().max())))


def table_parity(method: str, feats: List[Feature], ids: torch.Tensor, dev: torch.device) -> Dict[str, float]:
    torch.manual_seed(0)
    ref = build(method, feats)
    if method.startswith("optembed"):
        ref.eval()  # training samples random per-sample dims; the RNG streams differ across devices
    other = copy.deepcopy(ref).to(dev)
    out_a, out_b = ref(ids), other(ids.to(dev))
    w = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(1))
    (out_a * w).sum().backward()
    (out_b * w.to(dev)).sum().backward()
    res = {"forward": max_diff(out_a, out_b), "grad": 0.0}
    for (n, pa), (_, pb) in zip(ref.named_parameters(), other.named_parameters()):
        if pa.grad is None and pb.grad is None:
            continue
        ga = pa.grad.to_dense() if pa.grad.is_sparse else pa.grad
        gb = pb.grad.to_dense() if pb.grad.is_sparse else pb.grad
        res["grad"] = max(res["grad"], max_diff(ga, gb))
    if method in ("full", "hash", "double_hash", "qr", "robe"):
        from slimembed.tables.quantized import export

        for dtype in ("int8", "fp16"):
            qa = export(ref.eval(), dtype=dtype)
            qb = copy.deepcopy(qa).to(dev)
            res[f"export_{dtype}"] = max_diff(qa(ids), qb(ids.to(dev)))
    return res


def train_step_parity(method: str, feats: List[Feature], ids: torch.Tensor, dev: torch.device) -> Dict[str, float]:
    torch.manual_seed(0)
    num_dense = 4
    if method.startswith("optembed"):
        return {}  # its training forward samples random dims per sample (device RNG streams differ)
    from slimembed.ctr.experiment import planned_model
    from slimembed.ctr.optim import with_sparse
    from slimembed.tables import get_table_class
    from slimembed.tables.plan import TablePlan

    cls = get_table_class(method)
    kw = with_sparse("sparse_adam", method, counts_kwargs(method, feats))
    # DeepFM's first-order (dim 1) table: mde cannot shrink dim-1 fields, so it is hashed there.
    first = {"method": "hash"} if method == "mde" else None
    model = None
    for c in ((None,) if cls.budget_knob is None else (10.0, 2.0)):  # 2x where 10x is below the floor
        try:
            plan = TablePlan(method, compression=c, first_order=first, **kw)
            model = planned_model("deepfm", feats, num_dense, plan, hidden_units=[32, 32])
            break
        except ValueError:
            if c == 2.0:
                raise
    twin = copy.deepcopy(model).to(dev)
    g = torch.Generator().manual_seed(2)
    dense = torch.rand(ids.shape[0], num_dense, generator=g)
    labels = (torch.rand(ids.shape[0], generator=g) < 0.3).float()
    res: Dict[str, float] = {}
    for name, net, d in (("cpu", model, torch.device("cpu")), ("dev", twin, dev)):
        opt = build_optimizers(net, {"embedding_optimizer": "sparse_adam", "lr": 1e-2})
        for group in opt.param_groups:
            # Adam's first step is lr * sign(g) for |g| >> eps: a near-zero gradient, whose sign
            # depends on the order of summation, would move by +-lr. eps 1e-3 keeps those small.
            group["eps"] = 1e-3
        logits = net(dense.to(d), ids.to(d))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(d))
        opt.zero_grad()
        loss.backward()
        opt.step()
        res[f"logits_{name}"] = logits.detach().cpu()
    out = {"logits": max_diff(res["logits_cpu"], res["logits_dev"]), "step": 0.0}
    for pa, pb in zip(model.parameters(), twin.parameters()):
        out["step"] = max(out["step"], max_diff(pa, pb))
    return out


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--methods", nargs="+", default=None)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"parity: cpu vs {dev} ({where}), torch {torch.__version__}, batch {a.batch_size}, dim {a.dim}")
    feats = features(a.dim)
    ids = zipf_ids(feats, a.batch_size, 0)
    failed: List[Tuple[str, str, float]] = []
    print("| method | check | max abs diff / max(1, max abs) | ok |\n|---|---|---|---|")
    for m in (a.methods or [m for m in available_methods() if m not in SKIP]):
        try:
            checks = {**table_parity(m, feats, ids, dev), **train_step_parity(m, feats, ids, dev)}
        except Exception as e:  # report and go on: one broken method must not hide the others
            print(f"| {m} | error | {type(e).__name__}: {str(e).splitlines()[0][:200]} | no |")
            failed.append((m, "error", float("nan")))
            continue
        for k, v in checks.items():
            ok = v <= a.atol
            print(f"| {m} | {k} | {v:.2e} | {'yes' if ok else 'NO'} |")
            if not ok:
                failed.append((m, k, v))
    print(f"parity: {len(failed)} failure(s)" + (": " + ", ".join(f"{m}/{k}" for m, k, _ in failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
