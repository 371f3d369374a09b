"""Search spaces of the table methods: which knobs a sweep may vary, and a dry build that says
whether a method can meet a budget before anything trains.

Every budgeted method is searched over one common knob, ``compression`` (the ratio of the full
fp32 tables to the compressed ones, log-uniform in ``[2, 1000]`` by default; the method's own
size knob -- rows, collisions, TT rank, MLP width, array size -- is then *solved* from it by
``make_table(..., compression=c)``), plus the method's own discrete/continuous knobs::

    hash           signed in {False, True}
    double_hash    combine in {sum, concat}
    qr             operation in {mult, add, concat}
    compositional  num_partitions in 2..4, operation in {mult, add, concat}
    robe           num_blocks in {1, 2, 4}        (must divide the dim: 1 for a first-order table)
    tt             (rank is solved from the budget)
    dhe            activation in {mish, relu}, num_layers in 2..5
    mde            alpha in [0.1, 0.5], round_pow2 in {False, True}
    unified        num_tables in {1, 2, 4}
    multiplexed    (rows are solved from the budget)

A knob spec in a config is a list (categorical), ``{low, high[, log][, step][, type]}`` (int when
both ends are ints, else float) or a scalar (fixed). The knobs above are each table class's
``search_space`` attribute (a new method declares its own; none: ``compression`` only). ``full`` is the uncompressed reference and
the OptEmbed tables get their memory from their own search pipeline (``slimembed optembed``),
so neither is swept; :func:`probe` finds such methods by building them.

Example::

    >>> space = resolve_space(["qr", "hash"], {"qr": {"operation": ["mult", "add"]}})
    >>> sorted(space.methods["qr"].knobs)
    ['compression', 'operation']
    >>> space.methods["qr"].knobs["compression"].to_dict()
    {'type': 'float', 'low': 2.0, 'high': 1000.0, 'log': True}
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

COMPRESSION = "compression"
DEFAULT_COMPRESSION: Dict[str, Any] = {"low": 2.0, "high": 1000.0, "log": True}

#: Arguments the experiment sets (``sparse`` follows the embedding optimizer).
SET_BY_EXPERIMENT: Tuple[str, ...] = ("sparse", "counts", "field_weights")


def _table_class(method: str) -> Any:
    from slimembed.tables import get_table_class

    return get_table_class(method)


def not_swept_reason(method: str) -> Optional[str]:
    """Why ``method`` is left out of sweeps and grids by default (``None``: it is swept); the
    table class's ``not_swept_reason``.

    Example::

        >>> not_swept_reason("hash") is None, not_swept_reason("full")[:17]
        (True, 'the uncompressed ')
    """
    return _table_class(method).not_swept_reason


def _class_views() -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Tuple[str, ...]], Dict[str, str]]:
    """The per-method facts as dicts, read from the registered table classes."""
    from slimembed.tables import available_methods, get_table_class

    classes = {m: get_table_class(m) for m in available_methods(include_export=True)}
    spaces = {m: dict(c.search_space) for m, c in classes.items()
              if c.trainable and c.not_swept_reason is None}
    solved = {m: tuple(c.solved_knobs) for m, c in classes.items() if c.solved_knobs}
    not_swept = {m: c.not_swept_reason for m, c in classes.items() if c.not_swept_reason}
    return spaces, solved, not_swept


#: Views of the table classes' attributes at import (``search_space``, ``solved_knobs``,
#: ``not_swept_reason``); the code below reads the classes, so methods registered later count.
#: DEFAULT_SPACES: the knobs a sweep varies per method by default (on top of ``compression``);
#: SOLVED_KNOBS: constructor arguments a budget solves; NOT_SWEPT: methods sweeps leave out, and why.
DEFAULT_SPACES, SOLVED_KNOBS, NOT_SWEPT = _class_views()


# ---------------------------------------------------------------------------------- knobs
@dataclass(frozen=True)
class Knob:
    """One searchable argument: ``categorical`` (choices), ``int``/``float`` range, or ``fixed``."""

    name: str
    kind: str
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    value: Any = None

    def suggest(self, trial: Any, param: str) -> Any:
        """Draw this knob from an Optuna ``trial`` under parameter name ``param``."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(param, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(param, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(param, float(self.low), float(self.high), log=self.log, step=self.step)

    def probe_values(self) -> List[Any]:
        """The values a dry build tries: every choice; a range's low end; the fixed value."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        return [int(self.low) if self.kind == "int" else float(self.low)]

    def contains(self, v: Any) -> bool:
        if self.kind == "categorical":
            return v in self.choices
        if self.kind == "fixed":
            return v == self.value
        return self.low <= v <= self.high

    def with_range(self, low: float, high: float) -> "Knob":
        return Knob(self.name, self.kind, self.choices, low, high, self.log, self.step, self.value)

    def to_dict(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        d: Dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d


def parse_knob(name: str, spec: Any, where: str = "") -> Knob:
    """A knob from its config form: list -> categorical, ``{low, high, ...}`` -> range, scalar -> fixed."""
    at = f" ({where})" if where else ""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"knob {name!r}{at}: an empty list of choices")
        for c in spec:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ValueError(f"knob {name!r}{at}: choices must be plain scalars, got {c!r}")
        return Knob(name, "categorical", choices=tuple(spec))
    if isinstance(spec, Mapping):
        allowed = {"low", "high", "log", "step", "type"}
        bad = sorted(set(spec) - allowed)
        if bad or "low" not in spec or "high" not in spec:
            raise ValueError(f"knob {name!r}{at}: a range needs low and high (optional log, step, type); "
                             f"got keys {sorted(spec)}")
        low, high = spec["low"], spec["high"]
        kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int)
                                    and not isinstance(low, bool) else "float")
        if kind not in ("int", "float"):
            raise ValueError(f"knob {name!r}{at}: type must be int or float, got {kind!r}")
        low, high = (int(low), int(high)) if kind == "int" else (float(low), float(high))
        log = bool(spec.get("log", False))
        if not low <= high:
            raise ValueError(f"knob {name!r}{at}: low {low} > high {high}")
        if log and low <= 0:
            raise ValueError(f"knob {name!r}{at}: a log range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and log:
            raise ValueError(f"knob {name!r}{at}: give step or log, not both")
        return Knob(name, kind, low=low, high=high, log=log, step=step)
    return Knob(name, "fixed", value=spec)


# ---------------------------------------------------------------------------------- spaces
@dataclass
class MethodSpace:
    """The knobs of one method (``compression`` among them, unless the method is the reference)."""

    method: str
    knobs: Dict[str, Knob]
    user_knobs: Tuple[str, ...] = ()  # knobs the config set (the rest are defaults)

    def param_name(self, knob: str) -> str:
        """Optuna parameter name: ``compression`` is shared by all methods, the rest are
        ``method.knob`` (conditional parameters, so TPE's ``group`` mode separates them)."""
        return knob if knob == COMPRESSION else f"{self.method}.{knob}"

    def suggest(self, trial: Any) -> Dict[str, Any]:
        """The table config ``{"method": ..., "compression": ..., **knobs}`` for ``trial``."""
        table: Dict[str, Any] = {"method": self.method}
        for name, knob in self.knobs.items():
            table[name] = knob.suggest(trial, self.param_name(name))
        return table

    def probe_tables(self, compression: Optional[float], limit: int = 32) -> List[Dict[str, Any]]:
        """Table configs covering every choice of the discrete knobs (up to ``limit``), other
        knobs at their low end, at ``compression`` (if given)."""
        names = [n for n in self.knobs if n != COMPRESSION]
        grids = [self.knobs[n].probe_values() for n in names]
        out = []
        for combo in itertools.islice(itertools.product(*grids), limit):
            t: Dict[str, Any] = {"method": self.method, **dict(zip(names, combo))}
            if compression is not None and COMPRESSION in self.knobs:
                t[COMPRESSION] = compression
            out.append(t)
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {k: v.to_dict() for k, v in self.knobs.items()}


@dataclass
class SearchSpace:
    """Methods -> their knob spaces, plus the methods left out and why."""

    methods: Dict[str, MethodSpace]
    excluded: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    explicit: bool = False  # the config listed the methods (else: every swept method)

    def suggest(self, trial: Any) -> Dict[str, Any]:
        """Draw a method and its knobs: ``{"method": m, "compression": c, ...}``."""
        names = list(self.methods)
        method = trial.suggest_categorical("method", names)
        return self.methods[method].suggest(trial)

    def compression_range(self) -> Tuple[float, float]:
        lows = [s.knobs[COMPRESSION].low for s in self.methods.values() if COMPRESSION in s.knobs
                and s.knobs[COMPRESSION].kind != "fixed"]
        highs = [s.knobs[COMPRESSION].high for s in self.methods.values() if COMPRESSION in s.knobs
                 and s.knobs[COMPRESSION].kind != "fixed"]
        return (min(lows) if lows else math.nan, max(highs) if highs else math.nan)

    def to_dict(self) -> Dict[str, Any]:
        return {"methods": {m: s.to_dict() for m, s in self.methods.items()}, "excluded": dict(self.excluded)}


def allowed_knobs(method: str) -> Tuple[List[str], List[str]]:
    """``(allowed, solved)``: the knobs a config may set for ``method`` (``compression`` included)
    and the constructor arguments the budget solves instead."""
    from slimembed.tables import get_table_class

    cls = get_table_class(method)
    solved = list(cls.solved_knobs)
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    names = [n for n, p in params.items()
             if n not in ("self", "features") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    # a class's own for_budget may take budget-split arguments (adaptive's shared_fraction, cafe's hash_rate)
    fb = inspect.signature(cls.for_budget).parameters
    names += [n for n, p in fb.items() if n not in ("cls", "features", "budget_bytes", *names)
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    # first_order: the experiment's table key for the models' 1-dim first-order tables
    allowed = sorted({COMPRESSION, "first_order",
                      *[n for n in names if n not in solved and n not in SET_BY_EXPERIMENT]})
    return allowed, solved


def check_method(method: Any, where: str = "") -> str:
    from slimembed.tables import available_methods

    if method not in available_methods():
        at = f" in {where}" if where else ""
        raise ValueError(f"unknown table method {method!r}{at}; available: {', '.join(available_methods())}")
    return method


def resolve_space(
    methods: Optional[Sequence[str]] = None,
    space: Optional[Mapping[str, Any]] = None,
    exclude: Optional[Mapping[str, str]] = None,
    defaults: bool = True,
) -> SearchSpace:
    """Validate a sweep's ``methods``/``space``/``exclude`` and build its :class:`SearchSpace`.

    Args:
        methods: method names; ``None`` = every registered method that is swept by default
            (all but ``full`` and the OptEmbed tables).
        space: overrides: ``{"compression": spec, METHOD: {KNOB: spec}}``; a method's entry
            replaces the default spec of the knobs it names and keeps the others.
        exclude: ``{METHOD: reason}`` left out (e.g. too slow on CPU); the reason is printed.
        defaults: start from each method's ``search_space`` class attribute (:data:`DEFAULT_SPACES`;
            ``False``: only ``compression`` + ``space``).
    Raises:
        ValueError: unknown method (listing the registered ones), unknown knob (listing the
            method's knobs and the ones its budget solves), malformed spec.
    """
    from slimembed.tables import available_methods

    space = dict(space or {})
    exclude = {str(k): str(v) for k, v in (exclude or {}).items()}
    for m in exclude:
        check_method(m, "exclude")
    common = space.pop(COMPRESSION, None)
    for m in space:
        check_method(m, "space")
    notes: List[str] = []
    if methods is None:
        chosen = []
        for m in available_methods():
            why = not_swept_reason(m)
            if why is None:
                chosen.append(m)
        explicit = False
    else:
        if isinstance(methods, str):
            methods = [methods]
        chosen = [check_method(m, "methods") for m in methods]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"methods lists a method twice: {chosen}")
        explicit = True
    excluded: Dict[str, str] = {}
    for m in list(chosen):
        if m in exclude:
            excluded[m] = exclude[m]
            chosen.remove(m)
    if not chosen:
        raise ValueError("no method left to search (all excluded)")
    comp_spec = DEFAULT_COMPRESSION if common is None else common
    out: Dict[str, MethodSpace] = {}
    for m in chosen:
        allowed, solved = allowed_knobs(m)
        specs: Dict[str, Any] = {}
        if m != "full":
            specs[COMPRESSION] = comp_spec
        if defaults:
            specs.update(copy.deepcopy(_table_class(m).search_space))
        over = space.get(m) or {}
        if not isinstance(over, Mapping):
            raise ValueError(f"space.{m} must map knob -> spec, got {type(over).__name__}")
        specs.update(over)
        for k in specs:
            if k not in allowed:
                hint = f"; solved from the budget (not a knob): {', '.join(solved)}" if solved else ""
                raise ValueError(f"method {m!r} has no knob {k!r}; allowed: {', '.join(allowed)}{hint}")
        if m == "full" and COMPRESSION in specs:
            raise ValueError("method 'full' has no compression: it is the uncompressed reference")
        knobs = {k: parse_knob(k, v, f"space.{m}") for k, v in specs.items()}
        c = knobs.get(COMPRESSION)
        if c is not None and c.kind in ("int", "float") and c.low < 1:
            raise ValueError(f"space.{m}.compression: ratios below 1 grow the table; got low={c.low}")
        out[m] = MethodSpace(m, knobs, tuple(over))
    if explicit:
        for m in chosen:
            why = not_swept_reason(m)
            if why and m != "full":
                notes.append(f"{m}: {why}")
    return SearchSpace(out, excluded, notes, explicit)


# ---------------------------------------------------------------------------------- dry builds
_BUDGET_RE = re.compile(r"needs at least (\d+) bytes.*budget is (\d+)", re.S)


def parse_budget_error(exc: BaseException) -> Optional[Tuple[int, int]]:
    """``(needed, budget)`` bytes when ``exc`` is a table's "budget below the minimum" error
    (:func:`slimembed.tables.budget.budget_error`), else ``None``."""
    if not isinstance(exc, ValueError):
        return None
    m = _BUDGET_RE.search(str(exc))
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class Probe:
    """What a dry build of ``experiment + table`` says.

    ``status``: ``ok`` (builds; ``table_bytes`` is what training will hold), ``infeasible`` (the
    budget is below the method's minimum; ``needed``/``budget`` bytes of the table that failed),
    ``not_budgeted`` (builds above its budget: the method does not size itself to a budget) or
    ``error`` (any other build failure: ``message``).
    """

    status: str
    table: Dict[str, Any]
    table_bytes: Optional[int] = None
    full_bytes: Optional[int] = None
    needed: Optional[int] = None
    budget: Optional[int] = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def probe(experiment: Mapping[str, Any], table: Mapping[str, Any]) -> Probe:
    """Build ``experiment`` with ``table`` on the ``meta`` device (shapes only: milliseconds, no
    memory) through :func:`slimembed.ctr.experiment.build_experiment`, the same code training
    uses, and classify the outcome (see :class:`Probe`)."""
    import torch

    from slimembed.ctr.experiment import build_experiment
    from slimembed.tables import memory_report

    cfg = copy.deepcopy(dict(experiment))
    cfg["table"] = dict(table)
    try:
        with torch.device("meta"):
            model = build_experiment(cfg)[0]
        rep = memory_report(model)
    except Exception as e:  # noqa: BLE001 - classified below
        nb = parse_budget_error(e)
        if nb is not None:
            return Probe("infeasible", dict(table), needed=nb[0], budget=nb[1], message=str(e))
        return Probe("error", dict(table), message=f"{type(e).__name__}: {e}")
    c = table.get(COMPRESSION)
    tb, fb = int(rep.table_bytes), int(rep.full_bytes)
    if c is not None and tb > fb / float(c) + 8:
        return Probe("not_budgeted", dict(table), tb, fb,
                     message=f"built {tb} table bytes at compression {c:g} (budget {int(fb / float(c))})")
    return Probe("ok", dict(table), tb, fb)


def full_table_bytes(experiment: Mapping[str, Any]) -> int:
    """Bytes of the model's tables uncompressed (fp32 rows x dims, ``memory_report().full_bytes``):
    the baseline every compression ratio divides (a full table's own buffers come on top)."""
    p = probe(experiment, {"method": "full"})
    if not p.ok:
        raise ValueError(f"cannot build the experiment's model with the full table: {p.message}")
    return int(p.full_bytes)


def check_space(
    space: SearchSpace,
    experiment: Mapping[str, Any],
    compression: Optional[float] = None,
    budget_bytes: Optional[int] = None,
) -> Dict[str, List[Probe]]:
    """Dry-build every method of ``space`` at ``compression`` (default: each method's lowest, the
    easiest to meet) over all its discrete knob choices, before anything trains.

    * a choice that fails for another reason than the budget (e.g. ``robe`` ``num_blocks=2`` on a
      model with a 1-dim first-order table) is an error if the config set that knob, else it is
      dropped from the (default) space with a note;
    * a method that builds above its budget (not budgeted) or cannot build at all is an error if
      the config listed the methods, else it is excluded with its reason;
    * when no method can meet the budget at all: ``ValueError`` naming each method's minimum.

    Mutates ``space`` (dropped choices, exclusions, notes); returns the probes per method.
    """
    results: Dict[str, List[Probe]] = {}
    for m in list(space.methods):
        ms = space.methods[m]
        ck = ms.knobs.get(COMPRESSION)
        c = compression if compression is not None else (
            None if ck is None else (ck.value if ck.kind == "fixed" else ck.low))
        probes = [probe(experiment, t) for t in ms.probe_tables(c)]
        results[m] = probes
        errors = [p for p in probes if p.status == "error"]
        if errors and len(errors) < len(probes):
            # Drop the categorical choices that only ever fail.
            for kname, knob in list(ms.knobs.items()):
                if knob.kind != "categorical":
                    continue
                bad = [v for v in knob.choices
                       if all(p.status == "error" for p in probes if p.table.get(kname) == v)]
                if bad:
                    msg = next(p.message for p in errors if p.table.get(kname) in bad)
                    if kname in ms.user_knobs:
                        raise ValueError(f"space.{m}.{kname}: {bad} cannot build for this experiment: {msg}")
                    keep = tuple(v for v in knob.choices if v not in bad)
                    ms.knobs[kname] = Knob(kname, "categorical", choices=keep)
                    space.notes.append(f"{m}.{kname}: dropped {bad} ({msg})")
        elif errors:
            if space.explicit:
                raise ValueError(f"method {m!r} cannot build for this experiment: {errors[0].message}")
            space.excluded[m] = f"cannot build for this experiment: {errors[0].message}"
            del space.methods[m]
            continue
        nb = [p for p in probes if p.status == "not_budgeted"]
        if nb:
            why = not_swept_reason(m) or f"it does not size itself to a budget ({nb[0].message})"
            if space.explicit:
                raise ValueError(f"method {m!r} cannot be swept: {why}")
            space.excluded[m] = why
            del space.methods[m]
            continue
        if not any(p.ok for p in probes):
            need = min(p.needed for p in probes if p.needed is not None)
            at = f"compression {c:g}" if c is not None else "its settings"
            space.notes.append(f"{m}: cannot meet {at} for this model (needs at least {need} bytes "
                               f"for one of its tables); its trials will be recorded as infeasible")
    if not space.methods:
        raise ValueError("no method can be built for this experiment: " + "; ".join(
            f"{m}: {r}" for m, r in space.excluded.items()))
    if not any(p.ok for m in space.methods for p in results.get(m, [])):
        what = (f"the budget of {budget_bytes} bytes" if budget_bytes is not None
                else f"compression {compression:g}" if compression is not None else "the space's lowest compression")
        mins = []
        for m in space.methods:
            needs = [p.needed for p in results[m] if p.needed is not None]
            mins.append(f"{m} needs at least {min(needs)} bytes for one of its tables" if needs else f"{m}: failed")
        raise ValueError(f"no method can meet {what}: " + "; ".join(mins))
    return results


__all__ = [
    "COMPRESSION", "DEFAULT_COMPRESSION", "DEFAULT_SPACES", "SOLVED_KNOBS", "NOT_SWEPT",
    "Knob", "MethodSpace", "SearchSpace", "Probe",
    "allowed_knobs", "check_method", "check_space", "full_table_bytes", "not_swept_reason",
    "parse_budget_error", "parse_knob", "probe", "resolve_space",
]
