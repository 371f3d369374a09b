"""OptEmbed's pipeline (Lyu et al., CIKM 2022): supernet -> evolutionary dim search -> retrain -> export.

Stages (each writes its artifacts under ``out_dir`` and a ``result.json`` last, which marks it
done; a rerun skips finished stages and resumes the unfinished one):

1. ``supernet/``: train the model with :class:`~slimembed.tables.OptEmbedTable` (learnable
   per-field thresholds, uniform per-sample-per-field dimension sampling) under
   ``BCE + alpha * sum_f exp(-t_f)``; thresholds by plain SGD at ``threshold_lr``, the rest by the
   trainer's optimizers (Adam with ``weight_decay``); early stop on validation AUC (patience 1 by
   default, the reference's "stop at the first epoch without a gain"). ``init.pt`` holds the
   weights before the first step (for the lottery-ticket rewind), ``model.pt`` the best weights;
   ``ckpt/last.pt`` lets a killed run continue mid-stage.
2. ``search/``: freeze the row mask from the thresholds, then search per-field dims ``k_f`` in
   ``1..D`` by evolution (:class:`EvolutionSearch`): population 20 = 10 mutations of the top 10
   (each field reset with probability 0.1 to a uniform dim in ``1..D``) + 10 single-point
   crossovers of two distinct top-10 parents, cut over the *field* axis; 30 generations; fitness
   = validation AUC of the supernet with the candidate's dims (optionally on the first
   ``search_max_eval_batches`` validation batches). ``state.pt`` is saved after every generation
   (a killed search resumes from its last finished generation), ``masks.pt`` holds the result.
   Beyond the paper: ``budget_bytes`` bounds the exported field table; a candidate whose
   :func:`~slimembed.tables.optembed.compact_bytes` exceed it is infeasible (fitness ``-inf``,
   never evaluated; the initial population is sampled feasible).
   OptEmbed-E has no dims to search: the stage only freezes the row mask.
3. ``retrain/``: rebuild the model with both masks fixed and retrain it from the supernet's
   *initial* weights (``retrain_from="rewind"``, the paper's default) or from the supernet's
   trained weights (``"supernet"``); thresholds are not parameters any more.
4. ``export/``: :func:`~slimembed.tables.export_optembed`: pruned rows removed behind a keep
   bitmap + rank index (1.5 bits per original row), each field stored at its dim, zero-padded
   to ``D``; checks the exported model's logits against the masked model's, evaluates it on
   test, reports its bytes.

Differences from the reference code (``fuyuanlyu/OptEmbed``), on purpose (its bugs):
mutation copies the parent (the reference edits parents in place, so crossover and the recorded
best see mutated tensors); the best-so-far is read from the *sorted* fitness list (the reference
compares against the unsorted list's first entry); the crossover point is drawn over the fields
``1..F-1`` (the reference draws it over ``D``, so many "crossovers" are copies) and the two
parents are distinct top-``k`` candidates; mutation draws from ``1..D`` (the reference never
draws dim 1).

Example (trains all four stages; or ``slimembed optembed --config optembed.yaml``)::

    summary = run_pipeline("optembed.yaml"); summary["export"]["table_bytes"]
    >>> OptEmbedConfig(generations=5).population    # the optembed: section's defaults
    20
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from slimembed.tables import Feature, make_table, memory_report
from slimembed.tables.optembed import (
    VARIANTS, CompactOptEmbedTable, OptEmbedTable, compact_bytes, export_optembed,
)

# the evolutionary search lives in optembed_search (re-exported: imports from here keep working)
from .optembed_search import EvolutionSearch, crossover, crossover_point, mutate, random_candidate  # noqa: F401

PathLike = Union[str, Path]
STAGES = ("supernet", "search", "retrain", "export")
RETRAIN_FROM = ("rewind", "supernet")


# ---------------------------------------------------------------------------------- config
@dataclass
class OptEmbedConfig:
    """The ``optembed:`` section of a pipeline config (everything that is not data/model/train).

    Attributes:
        variant: ``optembed`` (rows + dims), ``optembed-e`` (rows), ``optembed-d`` (dims).
        norm: row norm of the row mask, 1 (default) or 2.
        alpha: threshold regulariser weight (``alpha * sum_f exp(-t_f)``).
        threshold_lr: plain-SGD learning rate of the thresholds.
        threshold_init: initial thresholds (0).
        init, init_scale: table init (``uniform`` ±0.05, or ``xavier`` as the reference code).
        generations: evolution generations (30).
        mutation_num, crossover_num: children per generation (10 + 10 = population 20).
        parents: the top-``parents`` candidates breed (10).
        keep_num: elites copied unchanged into the next generation (0, as the paper).
        mutation_prob: per-field reset probability (0.1).
        search_max_eval_batches: validation batches per fitness evaluation (None = all).
        search_seed: the search's RNG seed (None = ``train.seed``).
        budget_bytes: optional cap on the exported field table's bytes (beyond the paper).
        retrain_from: ``rewind`` (supernet's initial weights, default) or ``supernet``.
        retrain: ``TrainConfig`` overrides for stage 3 (default: the ``train`` section).
        pad: export with every field zero-padded to ``D`` (True; models need equal dims).
    """

    variant: str = "optembed"
    norm: int = 1
    alpha: float = 1e-4
    threshold_lr: float = 1e-4
    threshold_init: float = 0.0
    init: str = "uniform"
    init_scale: float = 0.05
    generations: int = 30
    mutation_num: int = 10
    crossover_num: int = 10
    parents: int = 10
    keep_num: int = 0
    mutation_prob: float = 0.1
    search_max_eval_batches: Optional[int] = None
    search_seed: Optional[int] = None
    budget_bytes: Optional[int] = None
    retrain_from: str = "rewind"
    retrain: Dict[str, Any] = field(default_factory=dict)
    pad: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"optembed.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.retrain_from not in RETRAIN_FROM:
            raise ValueError(f"optembed.retrain_from must be one of {RETRAIN_FROM}, got {self.retrain_from!r}")
        if self.generations < 0:
            raise ValueError(f"optembed.generations must be >= 0, got {self.generations}")
        if self.parents < 1 or self.mutation_num < 0 or self.crossover_num < 0 or self.keep_num < 0:
            raise ValueError("optembed.parents must be >= 1; mutation_num, crossover_num, keep_num >= 0")
        if self.mutation_num + self.crossover_num + self.keep_num < 1:
            raise ValueError("the population (keep_num + mutation_num + crossover_num) must be >= 1")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"optembed.mutation_prob must be in [0, 1], got {self.mutation_prob}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"optembed.budget_bytes must be > 0, got {self.budget_bytes}")

    @property
    def population(self) -> int:
        return self.keep_num + self.mutation_num + self.crossover_num

    def table_kwargs(self) -> Dict[str, Any]:
        return dict(variant=self.variant, norm=self.norm, alpha=self.alpha,
                    threshold_init=self.threshold_init, init=self.init, init_scale=self.init_scale)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "OptEmbedConfig":
        d = dict(d or {})
        names = {f.name for f in dc_fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown optembed keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- model parts
def optembed_table_factory(variant: str = "optembed", **table_kwargs: Any) -> Callable[[Sequence[Feature]], nn.Module]:
    """``features -> table``: an :class:`OptEmbedTable` for the field embeddings, and an
    uncompressed ``full`` table for 1-dim features (the first-order weights of LR/FM/DeepFM/WDL,
    which the reference keeps as a plain ``FeaturesLinear``)."""

    def factory(features: Sequence[Feature]) -> nn.Module:
        if all(int(f.embedding_dim) == 1 for f in features):
            return make_table("full", features)
        return make_table(variant, features, **table_kwargs)

    return factory


def optembed_tables(model: nn.Module) -> List[OptEmbedTable]:
    """The :class:`OptEmbedTable` modules of ``model`` (the model itself if it is one)."""
    return [m for m in model.modules() if isinstance(m, OptEmbedTable)]


def _single_table(model: nn.Module) -> OptEmbedTable:
    tables = optembed_tables(model)
    if len(tables) != 1:
        raise ValueError(f"the OptEmbed pipeline needs exactly one OptEmbedTable in the model, found {len(tables)}")
    return tables[0]


def optembed_regularizer(model: nn.Module) -> Tensor:
    """``sum over OptEmbed tables of alpha * sum_f exp(-t_f)``: the trainer's ``regularizer``."""
    regs = [t.regularization() for t in optembed_tables(model)]
    if not regs:
        return torch.zeros(())
    return torch.stack(regs).sum()


@contextlib.contextmanager
def _thresholds_hidden(model: nn.Module) -> Iterator[List[nn.Parameter]]:
    """Temporarily mark the thresholds as not trainable (so ``build_optimizers`` skips them)."""
    ths = [t.threshold for t in optembed_tables(model) if t.threshold is not None]
    flags = [p.requires_grad for p in ths]
    for p in ths:
        p.requires_grad_(False)
    try:
        yield ths
    finally:
        for p, f in zip(ths, flags):
            p.requires_grad_(f)


def supernet_optimizers(model: nn.Module, train_config: Any, threshold_lr: float):
    """The supernet's optimizers: the trainer's usual set (dense Adam + the embedding optimizer,
    with weight decay) for everything but the thresholds, plus ``"threshold"``: plain SGD (no
    momentum, no weight decay) at ``threshold_lr`` over every trainable threshold."""
    from slimembed.ctr.optim import OptimizerSet, build_optimizers

    with _thresholds_hidden(model) as ths:
        base = build_optimizers(model, train_config)
    members = dict(base.optimizers)
    trainable = [p for p in ths if p.requires_grad]
    if trainable:
        members["threshold"] = torch.optim.SGD(trainable, lr=float(threshold_lr), momentum=0.0, weight_decay=0.0)
    return OptimizerSet(members)


# ---------------------------------------------------------------------------------- pipeline config
PIPELINE_DEFAULTS: Dict[str, Any] = {
    "data": {"path": None, "batch_size": 2048, "eval_batch_size": 16384, "fold": None,
             "shuffle": True, "block_size": 65536},
    "model": {"name": "deepfm", "embedding_dim": 16},
    "train": {"early_stop_patience": 1},
    "optembed": {},
    "output": "runs/optembed",
}
# keys that may change between a run and its resume (they do not change results)
_VOLATILE = {"train": ("progress", "num_threads", "log_every"), "optembed": ()}


def load_pipeline_config(path: Optional[PathLike] = None, overrides: Sequence[str] = (),
                         config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A validated pipeline config from a YAML file and/or a dict, with ``section.key=value``
    overrides. Sections: ``data``, ``model``, ``train`` (as ``slimembed train``), ``optembed``
    (:class:`OptEmbedConfig`), ``output`` (the output directory); validated by
    :func:`slimembed.ctr.config.load_config` (kind ``optembed``)."""
    from slimembed.ctr.config import deep_merge, load_config, read_config_file

    cfg: Dict[str, Any] = {} if path is None else read_config_file(path)
    if config is not None:
        cfg = deep_merge(cfg, config)
    return load_config(cfg, "optembed", overrides)


def _comparable(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    c = json.loads(json.dumps(cfg, default=str))
    for section, keys in _VOLATILE.items():
        for k in keys:
            c.get(section, {}).pop(k, None)
    c.pop("output", None)
    return c


# ---------------------------------------------------------------------------------- pipeline
class OptEmbedPipeline:
    """The four stages over one output directory (see the module docstring).

    Args:
        config: a validated config (:func:`load_pipeline_config`).
        log: a ``str -> None`` sink for stage messages (default ``print``).
        progress: tqdm bars (default: when stderr is a terminal).

    Example::

        pipe = OptEmbedPipeline(load_pipeline_config("optembed.yaml"))
        summary = pipe.run()                  # resumes from out_dir if it was cut off
    """

    def __init__(self, config: Mapping[str, Any], log: Optional[Callable[[str], None]] = None,
                 progress: Optional[bool] = None) -> None:
        from slimembed.ctr.trainer import TrainConfig
        from slimembed.datasets import load_processed

        self.cfg = dict(config)
        self.oe = OptEmbedConfig.from_dict(self.cfg["optembed"])
        self.out = Path(self.cfg["output"])
        self.log = log or (lambda s: print(s, flush=True))
        self.progress = progress
        self.train_cfg = TrainConfig.from_dict(self.cfg["train"])
        if progress is not None:
            self.train_cfg = self.train_cfg.replace(progress=progress)
        self.retrain_cfg = TrainConfig.from_dict({**self.train_cfg.to_dict(), **self.oe.retrain})
        data = self.cfg["data"]
        self.dataset = load_processed(data["path"])
        mcfg = dict(self.cfg["model"])
        self.model_name = mcfg.pop("name")
        self.dim = int(mcfg.pop("embedding_dim", 16))
        self.model_kwargs = mcfg
        self.features = self.dataset.schema.features(self.dim, fold=data.get("fold"))
        self.seed = self.train_cfg.seed
        self._check_out_dir()

    # ------------------------------------------------------------------ plumbing
    def _check_out_dir(self) -> None:
        from slimembed.ctr.trainer import atomic_write_json

        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.json"
        if path.exists():
            old = json.loads(path.read_text())
            if _comparable(old) != _comparable(self.cfg):
                raise ValueError(
                    f"{self.out} holds an OptEmbed run with another config ({path}); resume it with the "
                    "same config, or choose another output directory"
                )
        else:
            atomic_write_json(self.cfg, path)

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "result.json").exists()

    def stage_result(self, stage: str) -> Dict[str, Any]:
        return json.loads((self.stage_dir(stage) / "result.json").read_text())

    def _finish(self, stage: str, result: Mapping[str, Any]) -> Dict[str, Any]:
        from slimembed.ctr.trainer import atomic_write_json, jsonable

        atomic_write_json(result, self.stage_dir(stage) / "result.json")
        return jsonable(dict(result))

    def build_model(self) -> nn.Module:
        """A fresh model with an OptEmbed field table (seeded: same init every time)."""
        from slimembed.ctr.models import make_model
        from slimembed.ctr.trainer import seed_everything

        seed_everything(self.seed)
        factory = optembed_table_factory(**self.oe.table_kwargs())
        return make_model(self.model_name, self.features, self.dataset.schema.num_dense,
                          table_factory=factory, **self.model_kwargs)

    @property
    def device(self) -> torch.device:
        """The training config's device (the search and the export run there too)."""
        from slimembed.ctr.distributed import resolve_device

        return resolve_device(self.train_cfg.device)

    def loaders(self, seed: Optional[int] = None):
        from slimembed.datasets import make_loader

        data = self.cfg["data"]
        common = dict(fold=data.get("fold"))
        path = str(data["path"])
        train = make_loader(path, "train", data["batch_size"], shuffle=data["shuffle"],
                            seed=self.seed if seed is None else seed, block_size=data["block_size"], **common)
        val = make_loader(path, "val", data["eval_batch_size"], **common)
        test = make_loader(path, "test", data["eval_batch_size"], **common)
        return train, val, test

    @staticmethod
    def _load(path: Path) -> Dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=False)

    def _table_stats(self, table: OptEmbedTable) -> Dict[str, Any]:
        kept = table.kept_rows()
        dims = table.current_dims()
        return {
            "kept_rows": dict(zip(table.feature_names, kept)),
            "kept_rows_total": sum(kept),
            "rows_total": sum(table.rows),
            "kept_row_fraction": sum(kept) / float(sum(table.rows)),
            "dims": dict(zip(table.feature_names, dims)),
            "sparsity": table.sparsity(),
            "export_bytes": compact_bytes(table.features, dims, kept),
            "thresholds": None if table.threshold is None else table.threshold.detach().tolist(),
        }

    # ------------------------------------------------------------------ stage 1
    def run_supernet(self) -> Dict[str, Any]:
        from slimembed.ctr.trainer import atomic_torch_save, train_and_evaluate

        d = self.stage_dir("supernet")
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model = self.build_model()
        init_path = d / "init.pt"
        if init_path.exists():
            model.load_state_dict(self._load(init_path)["model"])
        else:
            atomic_torch_save({"model": model.state_dict()}, init_path)
        table = _single_table(model)
        cfg = self.train_cfg.replace(checkpoint_dir=str(d / "ckpt"), resume=True, output_path=None)
        opt = supernet_optimizers(model, cfg, self.oe.threshold_lr)
        train, val, test = self.loaders()
        self.log(f"[optembed] stage 1/4: supernet ({self.oe.variant}, {self.model_name}) -> {d}")
        record = train_and_evaluate(model, train, val, test, config=cfg, optimizers=opt,
                                    regularizer=optembed_regularizer)
        atomic_torch_save({"model": model.state_dict()}, d / "model.pt")
        stats = self._table_stats(table)
        result = {
            "stage": "supernet",
            "val": record["metrics"]["val"],
            "test": record["metrics"]["test"],
            "best": record["best"],
            "epochs_completed": record["epochs_completed"],
            "stopped_early": record["stopped_early"],
            "steps": record["steps"],
            "train_time_s": record["train_time_s"],
            "wall_time_s": time.perf_counter() - t0,
            "history": record["history"],
            **stats,
        }
        self.log(f"[optembed] supernet: val AUC {result['val']['auc']:.5f}, kept rows "
                 f"{stats['kept_rows_total']}/{stats['rows_total']} ({100 * stats['kept_row_fraction']:.1f}%)")
        return self._finish("supernet", result)

    def supernet_model(self) -> nn.Module:
        model = self.build_model()
        model.load_state_dict(self._load(self.stage_dir("supernet") / "model.pt")["model"])
        return model

    # ------------------------------------------------------------------ stage 2
    def run_search(self) -> Dict[str, Any]:
        from slimembed.ctr.metrics import evaluate
        from slimembed.ctr.trainer import atomic_torch_save

        d = self.stage_dir("search")
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        dev = self.device
        model = self.supernet_model().to(dev).eval()
        table = _single_table(model)
        row_keep = table.freeze_rows()
        kept = table.kept_rows()
        _, val, _ = self.loaders()
        max_b = self.oe.search_max_eval_batches
        budget = self.oe.budget_bytes
        feats = table.features

        def feasible(c: Tensor) -> bool:
            return budget is None or compact_bytes(feats, c.tolist(), kept) <= budget

        self.log(f"[optembed] stage 2/4: search ({self.oe.variant}) -> {d}")
        state_path = d / "state.pt"
        prior = self._load(state_path) if state_path.exists() else None
        history: List[Dict[str, Any]] = []
        evaluations = 0
        if not table.searches_dims:
            dims = [table.dim] * table.num_features  # OptEmbed-E: rows only
            table.set_dims(None)
            best_fit = evaluate(model, val, device=dev, max_batches=max_b)["auc"]
            if budget is not None and not feasible(torch.tensor(dims)):
                raise ValueError(f"optembed-e: the pruned table needs {compact_bytes(feats, dims, kept)} bytes, "
                                 f"over budget_bytes={budget} (the rows-only variant cannot search dims)")
        else:
            if budget is not None and not feasible(torch.ones(table.num_features, dtype=torch.long)):
                raise ValueError(f"budget_bytes={budget} is below the smallest export (every dim 1): "
                                 f"{compact_bytes(feats, [1] * table.num_features, kept)} bytes")

            def fitness(c: Tensor) -> float:
                table.set_dims(c.tolist())
                return evaluate(model, val, device=dev, max_batches=max_b)["auc"]

            seed = self.seed if self.oe.search_seed is None else self.oe.search_seed
            es = EvolutionSearch(fitness, table.num_features, table.dim, mutation_num=self.oe.mutation_num,
                                 crossover_num=self.oe.crossover_num, parents=self.oe.parents,
                                 keep_num=self.oe.keep_num, mutation_prob=self.oe.mutation_prob,
                                 feasible=feasible if budget is not None else None, seed=seed)
            elapsed0 = 0.0
            if prior is not None:
                es.load_state_dict(prior["search"])
                elapsed0 = float(prior.get("elapsed_s", 0.0))
                self.log(f"[optembed] search: resuming after generation {es.generation}/{self.oe.generations}")
            t_run = time.perf_counter()

            def checkpoint(s: EvolutionSearch) -> None:
                atomic_torch_save({"search": s.state_dict(),
                                   "elapsed_s": elapsed0 + time.perf_counter() - t_run}, state_path)
                h = s.history[-1]
                self.log(f"[optembed] generation {h['generation'] + 1}/{self.oe.generations}: best "
                         f"{h['best']:.5f}, best so far {h['best_so_far']:.5f}")

            best, best_fit = es.run(self.oe.generations, on_generation=checkpoint, progress=self._bar())
            if best is None:  # 0 generations: evaluate the first candidate of the population
                best = es.population[0]
                best_fit = es.evaluate(best)
            dims = [int(v) for v in best.tolist()]
            history, evaluations = es.history, es.evaluations
            table.set_dims(dims)
        search_time = time.perf_counter() - t0
        if prior is not None:
            search_time += float(prior.get("elapsed_s", 0.0))
        atomic_torch_save({"row_keep": row_keep.cpu(), "dims": dims}, d / "masks.pt")
        stats = self._table_stats(table)
        result = {
            "stage": "search",
            "dims": dims,
            "best_val_auc": best_fit,
            "generations": self.oe.generations if table.searches_dims else 0,
            "evaluations": evaluations,
            "budget_bytes": budget,
            "search_time_s": search_time,
            "max_eval_batches": max_b,
            "history": history,
            **stats,
        }
        self.log(f"[optembed] search: dims {dims}, val AUC {best_fit:.5f}, export "
                 f"{stats['export_bytes']:,} bytes")
        return self._finish("search", result)

    # ------------------------------------------------------------------ stage 3
    def masked_model(self, source: str) -> nn.Module:
        """A model with both masks fixed, weights from ``source`` (``rewind``: the supernet's
        initial weights; ``supernet``: its trained weights; ``retrain``: the retrained ones)."""
        model = self.build_model()
        files = {"rewind": self.stage_dir("supernet") / "init.pt",
                 "supernet": self.stage_dir("supernet") / "model.pt",
                 "retrain": self.stage_dir("retrain") / "model.pt"}
        model.load_state_dict(self._load(files[source])["model"])
        masks = self._load(self.stage_dir("search") / "masks.pt")
        table = _single_table(model)
        table.freeze_rows(masks["row_keep"])
        table.set_dims(masks["dims"] if table.searches_dims else None)
        return model

    def run_retrain(self) -> Dict[str, Any]:
        from slimembed.ctr.trainer import atomic_torch_save, train_and_evaluate

        d = self.stage_dir("retrain")
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model = self.masked_model(self.oe.retrain_from)
        cfg = self.retrain_cfg.replace(checkpoint_dir=str(d / "ckpt"), resume=True, output_path=None)
        if self.progress is not None:
            cfg = cfg.replace(progress=self.progress)
        train, val, test = self.loaders()
        self.log(f"[optembed] stage 3/4: retrain from {self.oe.retrain_from} weights with fixed masks -> {d}")
        record = train_and_evaluate(model, train, val, test, config=cfg)
        atomic_torch_save({"model": model.state_dict()}, d / "model.pt")
        result = {
            "stage": "retrain",
            "retrain_from": self.oe.retrain_from,
            "val": record["metrics"]["val"],
            "test": record["metrics"]["test"],
            "best": record["best"],
            "epochs_completed": record["epochs_completed"],
            "steps": record["steps"],
            "train_time_s": record["train_time_s"],
            "wall_time_s": time.perf_counter() - t0,
            "history": record["history"],
        }
        self.log(f"[optembed] retrain: test AUC {result['test']['auc']:.5f}, logloss {result['test']['logloss']:.5f}")
        return self._finish("retrain", result)

    # ------------------------------------------------------------------ stage 4
    def run_export(self) -> Dict[str, Any]:
        from slimembed.ctr.metrics import _batch_parts, evaluate
        from slimembed.ctr.trainer import atomic_torch_save

        d = self.stage_dir("export")
        d.mkdir(parents=True, exist_ok=True)
        dev = self.device
        model = self.masked_model("retrain").to(dev).eval()
        exported = export_optembed(model, pad=self.oe.pad).to(dev)
        compact = [m for m in exported.modules() if isinstance(m, CompactOptEmbedTable)][0]
        _, val, test = self.loaders()
        max_diff = 0.0
        with torch.no_grad():
            for i, batch in enumerate(val):
                if i >= 2:
                    break
                dense, sparse, _ = _batch_parts(batch.to(dev))
                max_diff = max(max_diff, float((model(dense, sparse) - exported(dense, sparse)).abs().max()))
        metrics = evaluate(exported, test, device=dev)
        rep = memory_report(compact)
        full_table = rep.full_bytes  # the uncompressed fp32 table, same features and D
        atomic_torch_save({"model": exported.cpu().state_dict(), "table_config": compact.config(),
                           "model_name": self.model_name, "model_kwargs": self.model_kwargs,
                           "embedding_dim": self.dim}, d / "model.pt")
        result = {
            "stage": "export",
            "test": metrics,
            "max_abs_logit_diff": max_diff,
            "table_bytes": rep.total_bytes,
            "values_bytes": int(compact.values.numel()) * 4,
            "remap_bytes": int(compact.bitmap.numel()) + 4 * int(compact.rank.numel()),  # id index: bitmap + rank
            "full_table_bytes": full_table,
            "compression": full_table / rep.total_bytes,
            "model_table_bytes": memory_report(exported).table_bytes,
            "kept_rows_total": sum(compact.kept),
            "rows_total": sum(compact.rows),
            "dims": compact.dims,
        }
        self.log(f"[optembed] stage 4/4: export: field table {rep.total_bytes:,} bytes vs full "
                 f"{full_table:,} ({result['compression']:.2f}x), test AUC {metrics['auc']:.5f}, "
                 f"max |logit diff| vs masked model {max_diff:.2e}")
        return self._finish("export", result)

    # ------------------------------------------------------------------ all
    def _bar(self) -> bool:
        if self.progress is not None:
            return bool(self.progress)
        from slimembed.ctr.trainer import _is_tty

        return self.train_cfg.progress if self.train_cfg.progress is not None else _is_tty()

    def run(self, stop_after: Optional[str] = None) -> Dict[str, Any]:
        """Run (or resume) the stages in order; ``stop_after`` ends after that stage.

        Returns the summary (also ``out_dir/summary.json`` once every stage is done).
        """
        from slimembed.ctr.trainer import atomic_write_json

        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
        runners = {"supernet": self.run_supernet, "search": self.run_search,
                   "retrain": self.run_retrain, "export": self.run_export}
        results: Dict[str, Any] = {}
        for stage in STAGES:
            if self.is_done(stage):
                self.log(f"[optembed] {stage}: done earlier ({self.stage_dir(stage) / 'result.json'})")
                results[stage] = self.stage_result(stage)
            else:
                results[stage] = runners[stage]()
            if stage == stop_after:
                return results
        summary = summarize(results, self.cfg)
        atomic_write_json(summary, self.out / "summary.json")
        return summary


def summarize(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The headline numbers of a finished pipeline (plus every stage's record)."""
    s, se, r, e = (results[k] for k in STAGES)
    return {
        "variant": cfg["optembed"]["variant"],
        "model": cfg["model"]["name"],
        "test_auc": r["test"]["auc"],
        "test_logloss": r["test"]["logloss"],
        "exported_test_auc": e["test"]["auc"],
        "kept_rows": se["kept_rows_total"],
        "rows": se["rows_total"],
        "kept_row_fraction": se["kept_row_fraction"],
        "dims": se["dims"],
        "exported_table_bytes": e["table_bytes"],
        "full_table_bytes": e["full_table_bytes"],
        "compression": e["compression"],
        "supernet_time_s": s["wall_time_s"],
        "search_time_s": se["search_time_s"],
        "retrain_time_s": r["wall_time_s"],
        "stages": dict(results),
    }


def run_pipeline(config: Union[PathLike, Mapping[str, Any], None] = None, overrides: Sequence[str] = (),
                 stop_after: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                 progress: Optional[bool] = None) -> Dict[str, Any]:
    """Load the config (a YAML path or a dict), then run or resume the pipeline (see the module)."""
    if isinstance(config, Mapping):
        cfg = load_pipeline_config(None, overrides, config=config)
    else:
        cfg = load_pipeline_config(config, overrides)
    return OptEmbedPipeline(cfg, log=log, progress=progress).run(stop_after=stop_after)


def load_exported(out_dir: PathLike) -> nn.Module:
    """Rebuild the exported inference model written by stage 4 (``out_dir/export/model.pt``)."""
    from slimembed.ctr.models import make_model
    from slimembed.tables import make_table_from_config

    blob = torch.load(Path(out_dir) / "export" / "model.pt", map_location="cpu", weights_only=False)
    tcfg = blob["table_config"]
    feats = [Feature.from_dict(f) for f in tcfg["features"]]
    cfg = json.loads((Path(out_dir) / "config.json").read_text())
    from slimembed.datasets import load_processed

    num_dense = load_processed(cfg["data"]["path"]).schema.num_dense

    def factory(fs: Sequence[Feature]) -> nn.Module:
        if all(int(f.embedding_dim) == 1 for f in fs):
            return make_table("full", fs)
        return make_table_from_config(tcfg)

    model = make_model(blob["model_name"], feats, num_dense, table_factory=factory, **blob["model_kwargs"])
    model.load_state_dict(blob["model"])
    return model.eval()


__all__ = [
    "STAGES",
    "OptEmbedConfig",
    "OptEmbedPipeline",
    "EvolutionSearch",
    "mutate",
    "crossover",
    "crossover_point",
    "random_candidate",
    "optembed_table_factory",
    "optembed_tables",
    "optembed_regularizer",
    "supernet_optimizers",
    "load_pipeline_config",
    "run_pipeline",
    "summarize",
    "load_exported",
]
