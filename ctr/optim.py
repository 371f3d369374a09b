"""Optimizers for CTR models: Adam for the dense part, a selectable optimizer for the tables.

``build_optimizers(model, cfg)`` splits the model's parameters in two:

* dense parameters (MLPs, cross layers, biases...) -> ``torch.optim.Adam(lr, weight_decay)``;
* embedding-table parameters -> ``cfg["embedding_optimizer"]``:

  ================== ============ ==============================================================
  name               table grads  optimizer
  ================== ============ ==============================================================
  ``adam``           dense        ``torch.optim.Adam`` (every row's moments decay every step)
  ``sparse_adam``    sparse COO   :class:`LazySparseAdam` = ``torch.optim.SparseAdam`` + L2
  ``rowwise_adagrad`` sparse COO  :class:`RowWiseAdagrad` (fbgemm/torchrec
                                  ``EXACT_ROWWISE_ADAGRAD``: one accumulator per row)
  ``adagrad``        sparse COO   :class:`L2Adagrad` = ``torch.optim.Adagrad`` + L2
  ================== ============ ==============================================================

**The ``sparse`` flag of the tables must match.** Sparse optimizers pay only when the table's
backward produces sparse row gradients (``FullTable(sparse=True)``), and ``torch.optim.Adam``
rejects sparse gradients. The trainer config's ``embedding_optimizer`` therefore decides how the
tables are built: pass :func:`table_kwargs_for` ``(name)`` (``{"sparse": True/False}``) to the
table constructor, or use :func:`table_factory_for` as ``make_model(..., table_factory=...)``.
:func:`build_optimizers` checks the built tables and raises if a table is ``sparse=True`` under
``adam``; the sparse optimizers also accept dense gradients (rows with a non-zero gradient are
updated, the same lazy semantics), so a table without a ``sparse`` switch still trains.

Weight decay on embeddings is L2 added to the gradient. For the sparse optimizers it is applied
to the rows present in the batch only (fbgemm's semantics; untouched rows do not move), whereas
dense Adam decays every row every step.

Example::

    >>> from slimembed.ctr.models import make_model
    >>> from slimembed.tables import Feature
    >>> factory = table_factory_for("rowwise_adagrad")          # tables built sparse=True
    >>> model = make_model("deepfm", [Feature("C0", 10, 4)], 2, table_factory=factory, hidden_units=[8])
    >>> opt = build_optimizers(model, {"lr": 1e-3, "embedding_optimizer": "rowwise_adagrad"})
    >>> opt
    OptimizerSet(dense=Adam, embedding=RowWiseAdagrad)
    >>> loss = model(torch.randn(3, 2), torch.randint(0, 10, (3, 1))).sum()
    >>> loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

EMBEDDING_OPTIMIZERS = ("adam", "sparse_adam", "rowwise_adagrad", "adagrad")
SPARSE_OPTIMIZERS = ("sparse_adam", "rowwise_adagrad", "adagrad")
# Adagrad-family optimizers need a larger step than Adam; used when embedding_lr is not given.
DEFAULT_ADAGRAD_LR = 0.01


# ---------------------------------------------------------------------------------- helpers
def table_kwargs_for(optimizer_name: str) -> Dict[str, Any]:
    """Table constructor kwargs that match ``optimizer_name``: ``{"sparse": bool}``.

    Example::

        >>> table_kwargs_for("sparse_adam")
        {'sparse': True}
    """
    _check_name(optimizer_name)
    return {"sparse": optimizer_name in SPARSE_OPTIMIZERS}


def with_sparse(optimizer_name: str, method: str, table_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """``table_kwargs`` plus ``sparse`` as ``optimizer_name`` wants it, where ``method``'s
    constructor takes it (an explicit ``sparse`` in ``table_kwargs`` wins).

    >>> with_sparse("rowwise_adagrad", "hash", {"rows": 10})
    {'rows': 10, 'sparse': True}
    >>> with_sparse("rowwise_adagrad", "robe", {})       # robe has no sparse path
    {}
    """
    from slimembed.tables import get_table_class

    kwargs = dict(table_kwargs)
    try:
        params = inspect.signature(get_table_class(method).__init__).parameters
        accepts = "sparse" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        accepts = False
    if accepts:
        kwargs.setdefault("sparse", table_kwargs_for(optimizer_name)["sparse"])
    return kwargs


def table_factory_for(
    optimizer_name: str, method: str = "full", **table_kwargs: Any
) -> Callable[[Sequence[Any]], nn.Module]:
    """A ``table_factory(features) -> EmbeddingTable`` building ``method`` with the right ``sparse``.

    ``sparse`` is passed only when the method's constructor accepts it (hashing/MLP methods
    without a sparse path get dense gradients, which every embedding optimizer accepts).
    Extra ``table_kwargs`` (e.g. ``compression=10``) go to ``make_table``.
    """
    from slimembed.tables import get_table_class, make_table

    kwargs = with_sparse(optimizer_name, method, table_kwargs)

    def factory(features: Sequence[Any], **more: Any) -> nn.Module:
        return make_table(method, features, **{**kwargs, **more})

    return factory


def _check_name(name: str) -> None:
    if name not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"unknown embedding_optimizer {name!r}; choose one of {', '.join(EMBEDDING_OPTIMIZERS)}"
        )


def _rows_view(t: Tensor) -> Tensor:
    """``t`` as ``[rows, row_size]`` (a 1-D tensor is rows of one element)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(-1, 1)
    return t.reshape(t.shape[0], -1)


def _row_sparse(grad: Tensor) -> Tuple[Tensor, Tensor]:
    """``(row_ids [n], values [n, row_size])`` of a gradient; unique, sorted row ids.

    A sparse COO gradient is coalesced (duplicate rows summed); a dense gradient keeps the rows
    that have a non-zero entry.
    """
    if grad.is_sparse:
        if grad.sparse_dim() != 1:
            raise ValueError(f"expected a row-sparse gradient (sparse_dim 1), got {grad.sparse_dim()}")
        row_size = 1
        for s in grad.shape[1:]:
            row_size *= int(s)
        idx = grad._indices()[0]
        vals = grad._values().reshape(idx.numel(), row_size)
        if grad.is_coalesced():
            return idx, vals
        # Coalesce: sum duplicate rows (unique + index_add_ is cheaper than .coalesce() on CPU).
        uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        summed = vals.new_zeros(uniq.numel(), row_size).index_add_(0, inverse, vals)
        return uniq, summed
    rows = _rows_view(grad)
    idx = rows.ne(0).any(dim=1).nonzero().reshape(-1)
    return idx, rows.index_select(0, idx)


def _to_row_sparse(param: Tensor, idx: Tensor, vals: Tensor) -> Tensor:
    """Rebuild a sparse COO gradient shaped like ``param`` from row ids and ``[n, row_size]`` values."""
    shape = param.shape if param.dim() > 0 else torch.Size([1])
    values = vals.reshape((idx.numel(),) + tuple(shape[1:]))
    return torch.sparse_coo_tensor(idx.unsqueeze(0), values, shape, is_coalesced=True, check_invariants=False)


# ---------------------------------------------------------------------------------- row-wise Adagrad
class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad for embedding tables, on sparse COO or dense gradients.

    The fbgemm/torchrec ``EXACT_ROWWISE_ADAGRAD`` rule: one fp32 accumulator per row (not per
    element), so the optimizer state is ``N`` floats instead of ``N * D``. For each row ``i``
    present in the step's gradient (duplicates summed first: "exact")::

        g_i   = grad_i + weight_decay * w_i
        s_i  += mean_d(g_i ** 2)
        w_i  -= lr * g_i / (sqrt(s_i) + eps)

    Rows absent from the gradient (sparse) or with an all-zero gradient (dense) are left
    untouched, state included. The update is vectorized: coalesce, then ``index_add_`` on the
    touched rows. ``eps`` defaults to fbgemm's TBE default (1e-8).

    Args:
        params: parameters (``[N, D]`` tables; 1-D tensors are rows of one element).
        lr: learning rate. weight_decay: L2 on touched rows. eps: denominator term.
        initial_accumulator_value: starting ``s_i``.

    State per parameter: ``"sum"`` ``FloatTensor[N]`` and ``"step"`` (a 0-d tensor).
    """

    def __init__(
        self,
        params: Any,
        lr: float = DEFAULT_ADAGRAD_LR,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if eps < 0:
            raise ValueError(f"Invalid eps: {eps}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, eps=eps, initial_accumulator_value=initial_accumulator_value
        )
        super().__init__(params, defaults)

    def _state(self, p: Tensor, group: Mapping[str, Any]) -> Dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            rows = _rows_view(p).shape[0]
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["sum"] = torch.full(
                (rows,), float(group["initial_accumulator_value"]), dtype=torch.float32, device=p.device
            )
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p, group)
                state["step"] += 1
                idx, g = _row_sparse(p.grad)
                if idx.numel() == 0:
                    continue
                w = _rows_view(p)  # a view: updates land in p
                g = g.to(torch.float32)
                if wd != 0:
                    g = g + wd * w.index_select(0, idx).to(torch.float32)
                acc = state["sum"]
                acc.index_add_(0, idx, g.pow(2).mean(dim=1))
                denom = acc.index_select(0, idx).sqrt_().add_(eps)
                w.index_add_(0, idx, (g * (-lr / denom).unsqueeze(1)).to(w.dtype))
        return loss


# ---------------------------------------------------------------------------------- L2 wrappers
def _add_l2(p: Tensor, weight_decay: float, densify_to_sparse: bool) -> None:
    """Replace ``p.grad`` by ``grad + weight_decay * p`` on the gradient's rows.

    Sparse gradients are coalesced here (``unique`` + ``index_add_``: several times faster than
    ``Tensor.coalesce()`` on CPU with skewed ids, which torch's sparse optimizers would call) and
    get the decay on their rows only. With ``densify_to_sparse`` a dense gradient is first turned
    into a row-sparse one (its non-zero rows).
    """
    grad = p.grad
    if grad is None:
        return
    if grad.is_sparse or densify_to_sparse:
        if weight_decay == 0 and grad.is_sparse and grad.is_coalesced():
            return
        idx, vals = _row_sparse(grad)
        if weight_decay != 0 and idx.numel():
            vals = vals + weight_decay * _rows_view(p).index_select(0, idx)
        p.grad = _to_row_sparse(p, idx, vals)
    elif weight_decay != 0:
        grad.add_(p, alpha=weight_decay)


class LazySparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` plus L2 weight decay on the touched rows and dense-grad support.

    Dense gradients are converted to row-sparse ones (rows with a non-zero entry) so a table
    without a sparse switch still trains with the same lazy-Adam semantics.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        for g in self.param_groups:
            g.setdefault("weight_decay", weight_decay)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        for group in self.param_groups:
            for p in group["params"]:
                _add_l2(p, group.get("weight_decay", 0.0), densify_to_sparse=True)
        return super().step(closure)


class L2Adagrad(torch.optim.Adagrad):
    """``torch.optim.Adagrad`` whose weight decay also works with sparse gradients (touched rows)."""

    def __init__(self, params: Any, lr: float = DEFAULT_ADAGRAD_LR, weight_decay: float = 0.0,
                 eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=0.0, eps=eps,
                         initial_accumulator_value=initial_accumulator_value)
        for g in self.param_groups:
            g["l2"] = weight_decay

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        for group in self.param_groups:
            for p in group["params"]:
                _add_l2(p, group.get("l2", 0.0), densify_to_sparse=False)
        with warnings.catch_warnings():  # torch's sparse Adagrad path warns about invariant checks
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            return super().step(closure)


# ---------------------------------------------------------------------------------- the set
class OptimizerSet:
    """Several optimizers stepped, zeroed and checkpointed together.

    ``state`` merges the per-parameter states of all members, so
    ``slimembed.tables.memory_report(model, optimizer_set)`` counts every optimizer's bytes.

    Example::

        >>> w, rows = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(4, 2))
        >>> opt = OptimizerSet({"dense": torch.optim.Adam([w]), "embedding": RowWiseAdagrad([rows])})
        >>> (w.sum() + rows[1].sum()).backward(); opt.step(); opt.zero_grad()
        >>> opt.names, len(opt.state)
        (['dense', 'embedding'], 2)
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.optimizers: Dict[str, torch.optim.Optimizer] = dict(optimizers)

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers.values())

    def __len__(self) -> int:
        return len(self.optimizers)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    @property
    def names(self) -> List[str]:
        return list(self.optimizers)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @property
    def state(self) -> Dict[Tensor, Dict[str, Any]]:
        merged: Dict[Tensor, Dict[str, Any]] = {}
        for o in self.optimizers.values():
            merged.update(o.state)
        return merged

    def step(self) -> None:
        for o in self.optimizers.values():
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return {name: o.state_dict() for name, o in self.optimizers.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(
                f"optimizer state has members {sorted(state_dict)}, this set has {sorted(self.optimizers)}"
            )
        for name, o in self.optimizers.items():
            o.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={type(o).__name__}" for n, o in self.optimizers.items())
        return f"OptimizerSet({inner})"


# ---------------------------------------------------------------------------------- building
def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


def split_parameters(
    model: nn.Module, exclude: Iterable[Tensor] = ()
) -> Tuple[List[nn.Module], List[nn.Parameter], List[nn.Parameter]]:
    """``(tables, embedding_params, dense_params)`` of ``model``.

    Uses the model's ``embedding_tables()`` when it has one, else every outermost
    :class:`~slimembed.tables.EmbeddingTable` submodule. Dense parameters are all the others
    (``dense_parameters()`` is cross-checked when present). Shared parameters count once;
    parameters in ``exclude`` (trained elsewhere, e.g. by a fused kernel) are in neither list.
    """
    from slimembed.tables import EmbeddingTable

    if hasattr(model, "embedding_tables"):
        tables = list(model.embedding_tables())
    else:
        found = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
        tables = [t for t in found if not any(t is not o and t in set(o.modules()) for o in found)]
    seen: set = {id(p) for p in exclude}
    emb: List[nn.Parameter] = []
    for t in tables:
        for p in t.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                emb.append(p)
    dense: List[nn.Parameter] = []
    for p in model.parameters():
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            dense.append(p)
    if hasattr(model, "dense_parameters"):
        declared = {id(p) for p in model.dense_parameters()}
        missing = [p for p in dense if id(p) not in declared]
        if declared and missing:
            warnings.warn(
                f"{type(model).__name__}.dense_parameters() misses {len(missing)} parameters that "
                "are in no embedding table; they are trained with the dense optimizer anyway"
            )
    return tables, emb, dense


def build_optimizers(
    model: nn.Module, cfg: Any, *, exclude: Iterable[Tensor] = (), extra: Optional[Mapping[str, Any]] = None
) -> OptimizerSet:
    """Build the optimizers for ``model`` from a config dict (or a ``TrainConfig``).

    The one place optimizers are built; a runtime that trains some parameters itself (torchrec's
    fused kernels for sharded tables) passes them as ``exclude`` and its optimizer in ``extra``
    (``{"fused": ...}``, appended after ``"dense"`` and ``"embedding"``).

    Keys (all optional):
        lr (1e-3), weight_decay (0), betas ((0.9, 0.999)): the dense ``Adam``;
        embedding_optimizer ("adam"): one of ``adam | sparse_adam | rowwise_adagrad | adagrad``;
        embedding_lr: defaults to ``lr`` for the Adam family and ``0.01`` for the Adagrad family;
        embedding_weight_decay: defaults to ``weight_decay``;
        embedding_eps: defaults to each optimizer's own.

    Returns an :class:`OptimizerSet` with members ``"dense"`` and ``"embedding"`` (either is left
    out when it has no parameters). Raises if a ``sparse=True`` table meets ``adam``.

    Example::

        >>> from slimembed.ctr.models import make_model
        >>> from slimembed.tables import Feature
        >>> model = make_model("deepfm", [Feature("C0", 10, 4)], 2, hidden_units=[8])
        >>> build_optimizers(model, {"embedding_optimizer": "adam"})
        OptimizerSet(dense=Adam, embedding=Adam)
    """
    name = _get(cfg, "embedding_optimizer", "adam")
    _check_name(name)
    lr = float(_get(cfg, "lr", 1e-3))
    wd = float(_get(cfg, "weight_decay", 0.0))
    betas = tuple(_get(cfg, "betas", (0.9, 0.999)))
    adagrad_family = name in ("rowwise_adagrad", "adagrad")
    emb_lr = float(_get(cfg, "embedding_lr", DEFAULT_ADAGRAD_LR if adagrad_family else lr))
    emb_wd = float(_get(cfg, "embedding_weight_decay", wd))
    emb_eps = _get(cfg, "embedding_eps", None)

    tables, emb_params, dense_params = split_parameters(model, exclude)
    sparse_tables = [type(t).__name__ for t in tables if getattr(t, "sparse", False)]
    if name == "adam" and sparse_tables:
        raise ValueError(
            f"embedding_optimizer='adam' needs dense gradients but tables {sparse_tables} were built "
            "with sparse=True; build them with table_kwargs_for('adam') or pick sparse_adam / "
            "rowwise_adagrad / adagrad"
        )
    if name in SPARSE_OPTIMIZERS:
        dense_tables = [type(t).__name__ for t in tables if getattr(t, "sparse", None) is False]
        if dense_tables:
            warnings.warn(
                f"embedding_optimizer={name!r} with tables {dense_tables} built sparse=False: dense "
                f"gradients are used (correct but slower); build them with table_kwargs_for({name!r})"
            )

    members: Dict[str, Any] = {}  # torch optimizers, plus extra (e.g. a fused one)
    if dense_params:
        members["dense"] = torch.optim.Adam(dense_params, lr=lr, betas=betas, weight_decay=wd)
    if emb_params:
        eps = {} if emb_eps is None else {"eps": float(emb_eps)}
        if name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                emb_params, lr=emb_lr, betas=betas, weight_decay=emb_wd, **eps
            )
        elif name == "sparse_adam":
            opt = LazySparseAdam(emb_params, lr=emb_lr, betas=betas, weight_decay=emb_wd, **eps)
        elif name == "rowwise_adagrad":
            opt = RowWiseAdagrad(emb_params, lr=emb_lr, weight_decay=emb_wd, **eps)
        else:
            opt = L2Adagrad(emb_params, lr=emb_lr, weight_decay=emb_wd, **eps)
        members["embedding"] = opt
    members.update(extra or {})
    if not members:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return OptimizerSet(members)


__all__ = [
    "EMBEDDING_OPTIMIZERS",
    "SPARSE_OPTIMIZERS",
    "RowWiseAdagrad",
    "LazySparseAdam",
    "L2Adagrad",
    "OptimizerSet",
    "build_optimizers",
    "split_parameters",
    "table_kwargs_for",
    "table_factory_for",
    "with_sparse",
]
