"""One experiment = data + model + table + training, as a plain dict / YAML file.

This is the single way the CLI, the demo, benchmarks and sweeps build and run a model::

    data:  {path: runs/demo/data, batch_size: 4096, fold: null}   # fold: ids mod ceil(N/fold)
    model: {name: deepfm, embedding_dim: 16, hidden_units: [400, 400, 400]}
    table: {method: full}            # or {method: hash, compression: 10}
    train: {epochs: 1, lr: 0.001, embedding_optimizer: adam, seed: 0}
    output: runs/demo/result.json
    distributed: {sharding: none}    # optional; used under torchrun (docs/distributed.md)

``table.compression`` (or ``table.budget_bytes``) is one budget for all the model's tables together
(the field table and the 1-dim first-order table...), split by :class:`slimembed.tables.plan.TablePlan`;
the record's ``table_plan`` gives the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from slimembed.ctr.config import EXPERIMENT_DEFAULTS, deep_merge, load_config as _load, parse_override, validate_experiment
from slimembed.tables import Feature, make_table

DEFAULTS: Dict[str, Any] = EXPERIMENT_DEFAULTS
SECTIONS = tuple(DEFAULTS) + ("distributed",)  # optional section: no default, not in records unless given
DATA_KEYS = set(DEFAULTS["data"])


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML experiment file, apply ``section.key=value`` overrides, fill defaults, validate
    (:func:`slimembed.ctr.config.load_config` with kind ``experiment``)."""
    return _load(path, "experiment", overrides)


def validate_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fail at once, saying what is wrong and what is allowed (before any data is read); returns
    the config typed (see :mod:`slimembed.ctr.config`)."""
    return validate_experiment(cfg)


def table_plan_from(cfg: Mapping[str, Any], embedding_optimizer: str,
                    data_path: Optional[Union[str, Path]] = None):
    """The experiment's :class:`~slimembed.tables.plan.TablePlan`: ``table.compression`` (or
    ``table.budget_bytes``) is the budget of *all* the model's tables together (docs/architecture.md §2).

    ``table.first_order`` (optional, a method name or a table config without ``features``) builds the
    models' 1-dim first-order tables with another method, e.g. ``{method: hash}`` beside ``mde``,
    whose dims cannot go below 1; they share the one model budget. ``allocation: frequency`` (hash,
    double_hash) reads each field's effective number of values from the training split of
    ``data_path``.
    """
    from slimembed.ctr.optim import with_sparse
    from slimembed.tables.plan import TablePlan

    tcfg = dict(cfg)
    method = tcfg.pop("method")
    first = tcfg.pop("first_order", None)
    budget = tcfg.pop("budget_bytes", None)
    compression = tcfg.pop("compression", None)
    if budget is not None and compression is not None:
        raise ValueError("table: give budget_bytes or compression, not both")
    if first is not None:
        first = {"method": first} if isinstance(first, str) else dict(first)
        first.pop("compression", None), first.pop("budget_bytes", None)  # one model budget
        first = with_sparse(embedding_optimizer, first["method"], first)
    from slimembed.tables import get_table_class

    for m, kw in ((method, tcfg), ((first or {}).get("method"), first or {})):
        # frequency-aware tables (adaptive, mgqe) read the training split's counts
        if m and (getattr(get_table_class(m), "needs_counts", False) or kw.get("frequent")) and not (
                {"counts", "frequent_ids", "num_hot"} & set(kw)):  # double_hash's frequent: K too
            if data_path is None:
                raise ValueError(f"table method {m!r} needs the training data's counts")
            from slimembed.datasets.counts import train_counts

            kw["counts"] = train_counts(data_path)
    for kw in (tcfg, first or {}):
        if kw.get("allocation") == "frequency" and kw.get("field_weights") is None:
            if data_path is None:
                raise ValueError("table.allocation: frequency needs the training data's counts")
            from slimembed.datasets.counts import frequency_weights, train_counts

            kw["field_weights"] = frequency_weights(train_counts(data_path))
    return TablePlan(method, budget_bytes=budget, compression=compression, first_order=first,
                     **with_sparse(embedding_optimizer, method, tcfg))


def planned_model(name: str, features: Sequence[Feature], num_dense: int, plan: Any, **model_cfg: Any):
    """Build model ``name`` with its tables from ``plan``: a probe build on the meta device tells
    the plan which tables the model asks for (field, first-order...), the plan splits the budget,
    then the real model is built. Returns the model."""
    from slimembed.ctr.models import make_model
    from slimembed.tables.plan import probe_requests

    plan.solve(probe_requests(lambda fac: make_model(name, features, num_dense, table_factory=fac, **model_cfg)))
    return make_model(name, features, num_dense, table_factory=plan, **model_cfg)


def build_experiment(cfg: Mapping[str, Any]):
    """Loaders, schema features and the model for a validated config.

    Returns ``(model, train_loader, val_loader, test_loader, features, schema)``.

    In a distributed run (a process group is up) the loaders are sharded by rank: ``batch_size``
    and ``eval_batch_size`` stay global (each rank takes ``1 / world_size`` of every batch, so a
    config trains the same on any number of processes) and the train loader drops the trailing
    rows that cannot be split evenly (``drop_last``).
    """
    from slimembed.ctr import distributed as dist
    from slimembed.ctr.models import make_model
    from slimembed.ctr.trainer import TrainConfig, seed_everything
    from slimembed.datasets import load_processed, make_loader

    data = cfg["data"]
    tcfg = TrainConfig.from_dict(cfg["train"])
    schema = load_processed(data["path"]).schema
    mcfg = dict(cfg["model"])
    name = mcfg.pop("name")
    dim = int(mcfg.pop("embedding_dim", 16))
    features = schema.features(dim, fold=data.get("fold"), fold_min_rows=data.get("fold_min_rows", 0))
    seed_everything(tcfg.seed)  # model init is part of "same seed, same result"
    plan = table_plan_from(cfg["table"], tcfg.embedding_optimizer, data["path"])
    model = planned_model(name, features, schema.num_dense, plan, **mcfg)
    model.table_plan = plan.summary()  # a plain dict on the model: the record and `train` print it
    common = dict(fold=data.get("fold"), fold_min_rows=data.get("fold_min_rows", 0))
    batch_size, eval_batch_size, train_kw = data["batch_size"], data["eval_batch_size"], {}
    if dist.is_initialized():
        world = dist.get_world_size()
        if batch_size % world:
            raise ValueError(f"data.batch_size={batch_size} is the global batch: it must be divisible by "
                             f"the world size {world}")
        batch_size, eval_batch_size = batch_size // world, max(1, -(-eval_batch_size // world))
        common.update(rank=dist.get_rank(), world_size=world)
        train_kw = dict(drop_last=True)
    train = make_loader(data["path"], "train", batch_size, shuffle=data["shuffle"],
                        seed=tcfg.seed, block_size=data["block_size"], **common, **train_kw)
    val = make_loader(data["path"], "val", eval_batch_size, **common)
    test = make_loader(data["path"], "test", eval_batch_size, **common)
    return model, train, val, test, features, schema


def run_experiment(cfg: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Train and evaluate one experiment; returns (and writes to ``output``) the JSON record.

    Under ``torchrun`` the process group is started here (gloo on CPU, nccl on CUDA), the model is
    wrapped by :func:`slimembed.ctr.distributed.wrap_model` per the optional ``distributed``
    section, and only rank 0 writes; see ``docs/distributed.md``.
    """
    from slimembed.ctr import distributed as dist
    from slimembed.ctr.safe_io import check_writable
    from slimembed.ctr.trainer import CHECKPOINT_NAME, TrainConfig, train_and_evaluate

    tc = TrainConfig.from_dict(cfg["train"])
    if cfg.get("output"):  # before any data is read or a step is trained
        check_writable(cfg["output"], "result record")
    if tc.checkpoint_dir:
        check_writable(Path(tc.checkpoint_dir) / CHECKPOINT_NAME, "checkpoint")
    started = not dist.is_initialized() and dist.init_distributed(
        cfg.get("distributed"), device=TrainConfig.from_dict(cfg["train"]).device)
    try:
        model, train, val, test, features, schema = build_experiment(cfg)
        info = {"experiment": dict(cfg), "schema_meta": schema.meta,
                "table_plan": getattr(model, "table_plan", None), **(extra or {})}
        if dist.is_initialized():
            tcfg = TrainConfig.from_dict(cfg["train"])
            model = dist.wrap_model(model, cfg.get("distributed"), train_config=tcfg,
                                    batch_size=train.batch_size)
        record = train_and_evaluate(model, train, val, test, config=cfg["train"],
                                    output_path=cfg.get("output"), extra=info)
        if started:
            dist.barrier()  # rank 0 has written the record
        return record
    finally:
        if started:
            dist.destroy()


def result_summary(record: Mapping[str, Any]) -> List[str]:
    """Human lines for a result record."""
    test = record["metrics"].get("test") or {}
    mem = record["memory"]
    lines = [
        f"test AUC {test.get('auc', float('nan')):.4f}  logloss {test.get('logloss', float('nan')):.4f}",
        f"embedding tables {mem['table_bytes'] / 2**20:.2f} MiB vs full fp32 {mem['full_bytes'] / 2**20:.2f} MiB "
        f"({mem['ratio']:.2f}x compression)",
        f"train {record['train_samples']} samples in {record['train_time_s']:.1f} s = "
        f"{record['samples_per_s']:.0f} samples/s",
    ]
    plan = record.get("extra", {}).get("table_plan") or {}
    if plan.get("budget_bytes") is not None:
        size = lambda b: f"{b / 2**20:.3f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"  # noqa: E731
        parts = [f"{t['role']} {t['method']} {size(t['bytes'])} of its share {size(t['share_bytes'])}"
                 for t in plan["tables"] if t.get("bytes") is not None and t.get("share_bytes") is not None]
        lines.insert(2, f"budget plan: {size(plan['budget_bytes'])} for all the model's tables; " + ", ".join(parts))
    meta = record.get("extra", {}).get("schema_meta") or {}
    teacher = (meta.get("generator") or {}).get("teacher_auc")
    if teacher is not None:
        lines.insert(1, f"teacher AUC (best achievable on this data) {teacher:.4f}")
    return lines


def data_identity(path: Union[str, Path]) -> Dict[str, Any]:
    """What makes a processed dataset what it is, from its ``schema.json``: for synthetic data the
    generator's profile, rows, seed, scale and teacher knobs (data made before profiles existed
    is ``v1``); for other data its source and split sizes."""
    import json

    from slimembed.datasets.synthetic import generator_meta

    meta = json.loads((Path(path) / "schema.json").read_text()).get("meta", {})
    gen = meta.get("generator")
    if gen is None:
        return {"source": meta.get("source"), "splits": meta.get("splits")}
    return {k: v for k, v in generator_meta(gen).items()
            if k not in ("bias", "teacher_auc", "cardinalities", "missing_rates")}


def claim_output_data(out: Union[str, Path], data: Union[str, Path]) -> None:
    """One experiment directory, one dataset. The first call records ``data``'s identity in
    ``OUT/data_identity.json``. Later calls with different data, e.g. the same grid command
    after the generator's default profile changed, fail instead of mixing two datasets in one
    summary."""
    import json

    marker = Path(out) / "data_identity.json"
    ident = data_identity(data)
    if marker.exists():
        old = json.loads(marker.read_text())
        if old != ident:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {ident.get(k)!r}"
                             for k in sorted(set(old) | set(ident)) if old.get(k) != ident.get(k))
            raise ValueError(f"{out} holds runs on other data than {data} ({diff}); "
                             "use another --out (or --profile / --data matching its runs)")
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(ident, indent=2, default=str) + "\n")
