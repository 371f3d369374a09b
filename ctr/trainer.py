"""The CTR trainer: BCE-with-logits, Adam + a table optimizer, early stopping on validation AUC,
exact resume from checkpoints, progress bars and a JSON result record (``docs/architecture.md`` §4).

A model is any ``nn.Module`` with ``forward(dense [B, n_dense], sparse [B, F] | KJT) -> logits [B]``
(``slimembed.ctr.models`` adds ``embedding_tables()`` / ``dense_parameters()``, used to split the
optimizers; see :mod:`slimembed.ctr.optim`). A loader is any iterable of
:class:`~slimembed.datasets.Batch` (or ``(dense, sparse, labels)`` tuples); when it has
``set_epoch(epoch)`` the trainer calls it before each epoch, so the shuffle order is a function of
``(seed, epoch)`` and a resumed run sees the same batches.

**Tables and the embedding optimizer.** ``config.embedding_optimizer`` decides the tables'
``sparse`` flag: build the model with ``table_factory=table_factory_for(config.embedding_optimizer)``
(or pass ``**table_kwargs_for(config.embedding_optimizer)`` to the table). ``build_optimizers``
raises if a ``sparse=True`` table meets dense ``adam``.

**Exact resume.** Each evaluation point (every epoch, or every ``eval_every`` steps) and the end of
every epoch writes ``<checkpoint_dir>/last.pt`` atomically (temp file + ``os.replace``) with the
model, the optimizers, the torch/numpy/random (and CUDA) RNG states, the epoch, step and
position within the epoch, the loader's epoch (and ``state_dict()`` if it has one), the
early-stopping state with the best weights, and the history. ``Trainer(..., config with
resume=True).fit()`` (or ``fit(resume=True)``) continues from it: a run of 2 epochs and a run of
1 epoch followed by a resumed run to 2 epochs end with bit-identical parameters (mid-epoch
checkpoints skip the batches already seen, which needs a loader whose order depends only on
``(seed, epoch)``).

Example::

    >>> from slimembed.ctr.models import make_model
    >>> from slimembed.ctr.optim import table_factory_for
    >>> from slimembed.datasets import Batch
    >>> from slimembed.tables import Feature
    >>> seed_everything(0)
    >>> batches = [Batch(torch.randn(16, 2), torch.randint(0, 10, (16, 1)), torch.randint(0, 2, (16,)).float())
    ...            for _ in range(4)]
    >>> cfg = TrainConfig(epochs=2, embedding_optimizer="sparse_adam", progress=False)
    >>> model = make_model("deepfm", [Feature("C0", 10, 4)], 2, hidden_units=[8],
    ...                    table_factory=table_factory_for(cfg.embedding_optimizer))
    >>> record = train_and_evaluate(model, batches, batches[:2], batches[2:], config=cfg)
    >>> record["steps"], record["metrics"]["test"]["num_samples"]
    (8, 32)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import _batch_parts, batch_to_device, evaluate, is_better
from .optim import EMBEDDING_OPTIMIZERS, OptimizerSet
from .safe_io import atomic_torch_save, atomic_write_json, jsonable  # noqa: F401  (re-exported: their home before the split)
from .runtime import Runtime, runtime_for

logger = logging.getLogger("slimembed.ctr.trainer")

CHECKPOINT_NAME = "last.pt"
RESULT_NAME = "result.json"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything the trainer needs; a plain dataclass that round-trips through dicts/YAML.

    Attributes:
        epochs: passes over the training loader.
        batch_size: used by whoever builds the loaders (CLI / ``make_loader``); recorded.
        lr, weight_decay: the dense Adam (and the embedding optimizer unless overridden).
        embedding_optimizer: ``adam | sparse_adam | rowwise_adagrad | adagrad``
            (see :mod:`slimembed.ctr.optim`; it decides the tables' ``sparse`` flag).
        embedding_lr: table learning rate; ``None`` = ``lr`` for Adam, 0.01 for Adagrad family.
        embedding_weight_decay: ``None`` = ``weight_decay``.
        seed: seeds torch/numpy/random at the start of a fresh ``fit`` (seed the model's
            construction yourself, e.g. with :func:`seed_everything`, or via
            :func:`train_and_evaluate`'s ``model_fn``).
        early_stop_patience: evaluations without a validation-AUC gain (> ``min_delta``) before
            stopping; ``None`` or 0 disables early stopping.
        restore_best: load the best-AUC weights into the model when ``fit`` ends.
        eval_every: evaluate every this many steps; ``None`` = at the end of each epoch.
        max_steps: stop after this many optimizer steps in total (across epochs and resumes).
        max_eval_batches: cap on validation batches per evaluation (``None`` = all).
        checkpoint_dir: where ``last.pt`` and ``result.json`` go; ``None`` = no checkpoints.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        log_every: steps between loss logs / progress-bar updates.
        num_threads: ``torch.set_num_threads`` (``None`` = leave as is).
        progress: tqdm bars; ``None`` = only when stderr is a terminal.
        device: ``"cpu"``, ``"cuda"``...
        output_path: where :func:`train_and_evaluate` writes the JSON record (default
            ``checkpoint_dir/result.json`` when there is a checkpoint dir).
    """

    epochs: int = 1
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_optimizer: str = "adam"
    embedding_lr: Optional[float] = None
    embedding_weight_decay: Optional[float] = None
    seed: int = 2024
    early_stop_patience: Optional[int] = 2
    min_delta: float = 0.0
    restore_best: bool = True
    eval_every: Optional[int] = None
    max_steps: Optional[int] = None
    max_eval_batches: Optional[int] = None
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    log_every: int = 100
    num_threads: Optional[int] = None
    progress: Optional[bool] = None
    device: str = "cpu"
    output_path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"embedding_optimizer must be one of {EMBEDDING_OPTIMIZERS}, got {self.embedding_optimizer!r}"
            )
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.eval_every is not None and self.eval_every <= 0:
            raise ValueError(f"eval_every must be a positive step count or None, got {self.eval_every}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {self.max_steps}")
        if self.log_every <= 0:
            raise ValueError(f"log_every must be > 0, got {self.log_every}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain dict; unknown keys raise (listing the valid ones)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_optimizer_set(optimizers: Any) -> OptimizerSet:
    if isinstance(optimizers, OptimizerSet):
        return optimizers
    if isinstance(optimizers, torch.optim.Optimizer):
        return OptimizerSet({"opt0": optimizers})
    if isinstance(optimizers, Mapping):
        return OptimizerSet(optimizers)
    return OptimizerSet({f"opt{i}": o for i, o in enumerate(optimizers)})


def _set_epoch(loader: Any, epoch: int) -> None:
    """``loader.set_epoch(epoch)``, or its sampler's (torch ``DataLoader`` + ``DistributedSampler``)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:  # pragma: no cover
        return False


# ---------------------------------------------------------------------------------- state
@dataclass
class TrainState:
    """Counters that a checkpoint carries (everything but tensors)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps in total
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    samples: int = 0
    train_time_s: float = 0.0
    best_auc: Optional[float] = None
    best_step: Optional[int] = None
    best_epoch: Optional[int] = None
    bad_evals: int = 0
    stopped_early: bool = False
    last_eval_step: Optional[int] = None
    window_loss: float = 0.0  # training-loss sum since the last evaluation point
    window_steps: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Train a CTR model with early stopping on validation AUC and exact resume.

    Args:
        model: ``forward(dense, sparse) -> logits [B]``.
        train_loader: iterable of batches (``set_epoch``/``__len__``/``state_dict`` used if present).
        val_loader: for AUC/logloss at evaluation points and early stopping (optional).
        config: a :class:`TrainConfig` or a dict of its fields.
        optimizers: override :func:`~slimembed.ctr.optim.build_optimizers` (an optimizer, a list,
            a dict name -> optimizer or an :class:`~slimembed.ctr.optim.OptimizerSet`).
        regularizer: ``fn(model) -> scalar Tensor`` added to the BCE loss (e.g. OptEmbed's
            threshold term).

        runtime: how this process trains (:class:`~slimembed.ctr.runtime.Runtime`); default
            :func:`~slimembed.ctr.runtime.runtime_for` ``(model)``.

    Distributed (under ``torchrun``, see ``docs/distributed.md``): pass the model wrapped by
    :func:`slimembed.ctr.runtime.wrap_model` (DDP or torchrec DMP) and loaders sharded by rank.
    Training steps run through the wrapper; ``self.model`` is the unwrapped module (checkpoints,
    best weights); the runtime gathers evaluation over ranks and lets only rank 0 write files.
    Every runtime-dependent step goes through ``self.runtime``: the trainer has no distributed
    branches.

    Example::

        >>> from slimembed.ctr.models import make_model
        >>> from slimembed.datasets import Batch
        >>> from slimembed.tables import Feature
        >>> batches = [Batch(torch.randn(8, 2), torch.randint(0, 10, (8, 1)), torch.tensor([0., 1.] * 4))] * 3
        >>> model = make_model("deepfm", [Feature("C0", 10, 4)], 2, hidden_units=[8])
        >>> trainer = Trainer(model, batches, batches, TrainConfig(epochs=2, progress=False))
        >>> [h["step"] for h in trainer.fit()], trainer.runtime.name
        ([3, 6], 'local')
        >>> sorted(trainer.evaluate(batches))
        ['auc', 'logloss', 'num_samples']
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Any],
        val_loader: Optional[Iterable[Any]] = None,
        config: Union[TrainConfig, Mapping[str, Any], None] = None,
        optimizers: Any = None,
        regularizer: Optional[Callable[[nn.Module], Tensor]] = None,
        runtime: Optional[Runtime] = None,
    ) -> None:
        if config is None:
            config = TrainConfig()
        elif isinstance(config, Mapping):
            config = TrainConfig.from_dict(config)
        self.config: TrainConfig = config
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.runtime: Runtime = runtime if runtime is not None else runtime_for(model)
        self.device = self.runtime.resolve_device(config.device)
        # train_model: what a training step calls (a DDP/DMP wrapper, or the model itself);
        # model: the user's module (evaluation, checkpoints, best weights).
        self.train_model = self.runtime.place(model, self.device)
        self.model = self.runtime.unwrap(self.train_model)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer: OptimizerSet = (
            self.runtime.optimizers(self.train_model, config) if optimizers is None
            else _as_optimizer_set(optimizers)
        )
        self.regularizer = regularizer
        # tables that update themselves after each optimizer step (low-precision tables re-quantize,
        # DeepLight prunes): found once, called in train_step
        self.post_step_modules: List[nn.Module] = [
            m for m in self.model.modules() if callable(getattr(m, "post_step", None))]
        self.state = TrainState()
        self.best_state: Optional[Dict[str, Tensor]] = None
        self._loss_acc = self._new_loss_acc()
        self._loss_n = 0

    def _new_loss_acc(self) -> Tensor:
        """The per-step loss sum, on the training device: adding a CUDA loss to a CPU
        accumulator would fail (or sync every step); it is read back only every ``log_every``
        steps. MPS has no float64."""
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        return torch.zeros((), dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Optional[Path]:
        d = self.config.checkpoint_dir
        return None if d is None else Path(d) / CHECKPOINT_NAME

    @property
    def history(self) -> List[Dict[str, Any]]:
        return self.state.history

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: Any) -> Tensor:
        """One optimizer step on ``batch``; returns the (detached) loss."""
        batch = batch_to_device(batch, self.device)  # tuples too; host-to-CUDA non-blocking
        dense, sparse, labels = _batch_parts(batch)
        logits = self.train_model(dense, sparse)
        loss = F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))
        if self.regularizer is not None:
            loss = loss + self.regularizer(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for m in self.post_step_modules:  # after the step, before the next zero_grad (ALPT reads .grad)
            m.post_step()
        return loss.detach()

    def evaluate(self, loader: Optional[Iterable[Any]] = None, max_batches: Optional[int] = None) -> Dict[str, float]:
        """``{"auc", "logloss", "num_samples"}`` of the current model over ``loader`` (default: val).

        In a distributed run every rank must call it: the predictions of all ranks are gathered
        and the metrics computed on all of them (the same values on every rank).
        """
        loader = self.val_loader if loader is None else loader
        if loader is None:
            raise ValueError("no loader to evaluate: pass one or give the Trainer a val_loader")
        return evaluate(self.model, loader, device=self.device, max_batches=max_batches, runtime=self.runtime)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Dict[str, Any]:
        """The full training state as a dict (what ``last.pt`` holds)."""
        st = self.state
        best_is_current = st.best_step is not None and st.best_step == st.step
        loader_state = None
        if hasattr(self.train_loader, "state_dict"):
            try:
                loader_state = self.train_loader.state_dict()
            except Exception:  # torch DataLoader has none; others may refuse
                loader_state = None
        best_state = None if best_is_current or not self.config.restore_best else self.best_state
        # collective under DMP: the full weights and per-rank fused-optimizer state go to rank 0
        rt = self.runtime
        return {
            "version": CHECKPOINT_VERSION,
            "model": rt.model_state(self.model),
            "optimizer": rt.optimizer_state(self.optimizer),
            "rng": get_rng_state(),
            "train_state": dataclasses.asdict(st),
            "loader_epoch": st.epoch,
            "loader_state": loader_state,
            # The best weights, unless they are the current ones (saves a model copy).
            "best_is_current": best_is_current,
            "best_state": None if best_state is None else rt.model_state(self.model, best_state),
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            return None
        ckpt = self.checkpoint()  # on every rank: collective for sharded models
        if self.runtime.is_main:  # only rank 0 writes
            atomic_torch_save(ckpt, path)
        return path

    def load_checkpoint(self, path: Optional[Union[str, Path]] = None) -> None:
        """Restore everything :meth:`checkpoint` saved (model, optimizers, RNG, counters)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: set config.checkpoint_dir")
        ckpt = self.runtime.read_checkpoint(path)  # rank 0 reads (on the CPU), every rank gets it
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} != {CHECKPOINT_VERSION}")
        self.runtime.load_model_state(self.model, ckpt["model"])
        self.runtime.load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.state = TrainState(**ckpt["train_state"])
        if ckpt["best_is_current"]:
            self.best_state = self.runtime.clone_state(self.model)
        else:
            self.best_state = ckpt["best_state"]
        if ckpt.get("loader_state") is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(ckpt["loader_state"])
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ fit
    def _progress(self, total: Optional[int], initial: int, desc: str):
        enabled = self.config.progress if self.config.progress is not None else _is_tty()
        enabled = enabled and self.runtime.is_main
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)

    def _flush_loss(self) -> float:
        """Move the per-step loss accumulator into the evaluation window; returns its mean."""
        n = self._loss_n
        total = float(self._loss_acc)
        self.state.window_loss += total
        self.state.window_steps += n
        self._loss_acc.zero_()
        self._loss_n = 0
        return total / n if n else float("nan")

    def _eval_point(self) -> None:
        st = self.state
        st.last_eval_step = st.step
        self._flush_loss()
        # the mean over every rank's steps: the global-batch loss
        train_loss = self.runtime.reduce_mean(st.window_loss, st.window_steps)
        st.window_loss, st.window_steps = 0.0, 0
        entry: Dict[str, Any] = {
            "epoch": st.epoch,  # completed epochs
            "batch_in_epoch": st.batch_in_epoch,
            "step": st.step,
            "samples": st.samples,
            "train_loss": train_loss,
            "train_time_s": st.train_time_s,
        }
        if self.val_loader is not None:
            t0 = time.perf_counter()
            metrics = self.evaluate(self.val_loader, max_batches=self.config.max_eval_batches)
            entry.update(val_auc=metrics["auc"], val_logloss=metrics["logloss"],
                         eval_time_s=time.perf_counter() - t0)
            if is_better(metrics["auc"], st.best_auc, self.config.min_delta):
                st.best_auc, st.best_step, st.best_epoch = metrics["auc"], st.step, st.epoch
                st.bad_evals = 0
                if self.config.restore_best:
                    self.best_state = self.runtime.clone_state(self.model)
            else:
                st.bad_evals += 1
                patience = self.config.early_stop_patience
                if patience and st.bad_evals >= patience:
                    st.stopped_early = True
            logger.info(
                "step %d (epoch %d): train loss %.5f, val auc %.5f, val logloss %.5f%s",
                st.step, st.epoch, train_loss, metrics["auc"], metrics["logloss"],
                " (early stop)" if st.stopped_early else "",
            )
        st.history.append(entry)

    def _done(self) -> bool:
        st, cfg = self.state, self.config
        return st.stopped_early or st.epoch >= cfg.epochs or (
            cfg.max_steps is not None and st.step >= cfg.max_steps
        )

    def fit(self, resume: Optional[bool] = None) -> List[Dict[str, Any]]:
        """Train until ``epochs``/``max_steps``/early stopping; returns the history (one dict per
        evaluation point: step, epoch, train_loss, val_auc, val_logloss...).

        With ``resume`` (default ``config.resume``) and an existing checkpoint, training
        continues exactly where it stopped; otherwise RNGs are seeded with ``config.seed``.
        At the end the best-validation-AUC weights are loaded (``restore_best``).
        """
        cfg = self.config
        resume = cfg.resume if resume is None else resume
        path = self.checkpoint_path
        if resume and path is not None and self.runtime.broadcast_object(path.exists()):  # rank 0's view
            self.load_checkpoint(path)
            logger.info("resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.step)
        else:
            seed_everything(cfg.seed)
        st = self.state
        self.runtime.check_even_batches(self.train_loader)
        self.train_model.train()
        length = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None  # type: ignore[arg-type]

        while not self._done():
            epoch = st.epoch
            _set_epoch(self.train_loader, epoch)
            it = iter(self.train_loader)
            for i in range(st.batch_in_epoch):  # mid-epoch resume: skip what was trained
                if next(it, None) is None:
                    raise RuntimeError(
                        f"the checkpoint is {st.batch_in_epoch} batches into epoch {epoch}, but the "
                        f"loader yields only {i} batches: was it built with other data or batch size?"
                    )
            bar = self._progress(length, st.batch_in_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
            self._loss_acc = self._new_loss_acc()
            self._loss_n = 0
            broke = False
            t0 = time.perf_counter()
            try:
                for batch in it:
                    loss = self.train_step(batch)
                    st.step += 1
                    st.batch_in_epoch += 1
                    st.samples += int(_batch_parts(batch)[2].shape[0])
                    self._loss_acc += loss.to(self._loss_acc.device, self._loss_acc.dtype)
                    self._loss_n += 1
                    bar.update(1)
                    if st.step % cfg.log_every == 0:
                        mean = self._flush_loss()
                        if not math.isfinite(mean):
                            raise FloatingPointError(f"training loss is {mean} at step {st.step}")
                        bar.set_postfix(loss=f"{mean:.4f}")
                        logger.debug("step %d: loss %.5f", st.step, mean)
                    if cfg.eval_every is not None and st.step % cfg.eval_every == 0:
                        st.train_time_s += time.perf_counter() - t0
                        self._flush_loss()
                        self._eval_point()
                        if length is None or st.batch_in_epoch < length:
                            self.save_checkpoint()  # the epoch-end save below covers the rest
                        t0 = time.perf_counter()
                    if st.stopped_early or (cfg.max_steps is not None and st.step >= cfg.max_steps):
                        broke = True
                        break
            finally:
                bar.close()
            st.train_time_s += time.perf_counter() - t0
            self._flush_loss()
            if not broke or (length is not None and st.batch_in_epoch >= length):
                st.epoch += 1  # the epoch is complete
                st.batch_in_epoch = 0
                if cfg.eval_every is None and st.last_eval_step != st.step:
                    self._eval_point()
            if self._done() and st.last_eval_step != st.step and self.val_loader is not None:
                self._eval_point()  # the final weights are always evaluated
            self.save_checkpoint()

        if cfg.restore_best and self.best_state is not None:
            self.runtime.load_model_state(self.model, self.best_state)
        return st.history


# ---------------------------------------------------------------------------------- one call
def train_and_evaluate(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Optional[Iterable[Any]] = None,
    test_loader: Optional[Iterable[Any]] = None,
    config: Union[TrainConfig, Mapping[str, Any], None] = None,
    output_path: Optional[Union[str, Path]] = None,
    optimizers: Any = None,
    regularizer: Optional[Callable[[nn.Module], Tensor]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    runtime: Optional[Runtime] = None,
) -> Dict[str, Any]:
    """Fit ``model``, evaluate the best weights on val and test, and return (and write) the record.

    The JSON record has: ``config``, ``model`` (class, parameter count), ``metrics``
    (``val``/``test``: auc, logloss, num_samples), ``best`` (step, epoch, val_auc), ``memory``
    (``memory_report(model, optimizers).to_dict()``: parameter, buffer, optimizer-state and table
    bytes, compression ratio), ``wall_time_s``, ``train_time_s``, ``samples_per_s``, ``steps``,
    ``epochs_completed``, ``stopped_early``, ``history``, ``versions``, ``created`` and ``extra``.
    It is written to ``output_path`` (or ``config.output_path``, or
    ``checkpoint_dir/result.json``) when one is set. NaN becomes ``null``.
    """
    t0 = time.perf_counter()
    trainer = Trainer(model, train_loader, val_loader, config, optimizers=optimizers, regularizer=regularizer,
                      runtime=runtime)
    rt = trainer.runtime
    cfg = trainer.config
    history = trainer.fit()
    st = trainer.state
    metrics: Dict[str, Any] = {"val": None, "test": None}
    if val_loader is not None:
        metrics["val"] = trainer.evaluate(val_loader)
    if test_loader is not None:
        metrics["test"] = trainer.evaluate(test_loader)
    wall = time.perf_counter() - t0
    # every rank's samples; the class and sizes of the unwrapped, unsharded model
    samples = int(rt.all_reduce_sum([st.samples])[0])
    model_info = {"class": type(trainer.model).__name__, "num_parameters": rt.num_parameters(model)}
    memory = rt.memory_record(model, trainer.optimizer)
    record = {
        "config": cfg.to_dict(),
        "model": model_info,
        "metrics": metrics,
        "best": {"step": st.best_step, "epoch": st.best_epoch, "val_auc": st.best_auc},
        "memory": memory,
        "wall_time_s": wall,
        "train_time_s": st.train_time_s,
        "samples_per_s": samples / st.train_time_s if st.train_time_s > 0 else None,
        "train_samples": samples,
        "steps": st.step,
        "epochs_completed": st.epoch,
        "stopped_early": st.stopped_early,
        "history": history,
        "versions": {
            "slimembed": _version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    record.update(rt.record_fields(model))  # e.g. {"distributed": {world_size, backend, plan, ...}}
    record = jsonable(record)
    out = output_path or cfg.output_path
    if out is None and cfg.checkpoint_dir is not None:
        out = Path(cfg.checkpoint_dir) / RESULT_NAME
    if out is not None and rt.is_main:  # only rank 0 writes
        atomic_write_json(record, out)
        record["output_path"] = str(out)
    return record


def _version() -> str:
    try:
        import slimembed

        return str(slimembed.__version__)
    except Exception:  # pragma: no cover
        return "unknown"


__all__ = [
    "TrainConfig",
    "TrainState",
    "Trainer",
    "train_and_evaluate",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "atomic_torch_save",
    "atomic_write_json",
    "jsonable",
]
