"""Typed configuration: one loader and one schema library (pydantic v2) for every YAML the project reads.

:func:`load_config` reads a YAML file (or takes a mapping), applies ``section.key=value``
overrides (``--set``) and validates the result against the schema of its ``kind``:

========================  ==========================================================================
``experiment``            ``slimembed train`` (``data``/``model``/``table``/``train``/``output``/``distributed``)
``sweep``                 ``slimembed sweep`` (``experiment``/``methods``/``space``/``exclude``/``study``)
``benchmark``             ``slimembed benchmark`` (the user's sections, before the default grid is merged)
``optembed``              ``slimembed optembed`` (``data``/``model``/``train``/``optembed``/``output``)
``table_schema``          ``slimembed prepare --format table --schema`` (:class:`slimembed.datasets.TableSpec`)
========================  ==========================================================================

Everything is checked before any data is read. An error is one line that names the key path,
the value and what is allowed, e.g. ``train.epochs = 1.5: input should be a valid integer, got a
number with a fractional part``; an unknown key at any depth lists the valid keys, a table
section's valid keys include its method's own constructor keywords. YAML is read with YAML 1.2
floats, so ``1e9`` is a number (YAML 1.1 reads it as a string).

Each section's types come from the code that consumes it: the dataclasses
(:class:`~slimembed.ctr.trainer.TrainConfig`, :class:`~slimembed.ctr.distributed.DistributedConfig`,
``OptEmbedConfig``, ``TableSpec``) and the model and table constructors' signatures, so a new
keyword is validated without touching this module.

Example::

    >>> cfg = load_config({"data": {"path": None}, "train": {"epochs": "2"}}, "experiment", check_paths=False)
    >>> cfg["train"]["epochs"], cfg["data"]["batch_size"]
    (2, 4096)
    >>> try:
    ...     load_config({"train": {"epochs": 1.5}}, "experiment", check_paths=False)
    ... except ConfigError as e:
    ...     print(e)
    config: train.epochs = 1.5: input should be a valid integer, got a number with a fractional part
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

__all__ = [
    "ConfigError", "ConfigPathError", "UserError", "KINDS", "EXPERIMENT_DEFAULTS", "load_config", "read_config_file",
    "parse_override", "deep_merge", "validate_experiment", "validate_table_section", "yaml_load",
]

KINDS = ("experiment", "sweep", "benchmark", "optembed", "table_schema")

#: The experiment's defaults (``data`` is filled in records; the other sections keep what the user gave).
EXPERIMENT_DEFAULTS: Dict[str, Any] = {
    "data": {"path": None, "batch_size": 4096, "eval_batch_size": 16384, "fold": None,
             "fold_min_rows": 0, "shuffle": True, "block_size": 65536},
    "model": {"name": "deepfm", "embedding_dim": 16},
    "table": {"method": "full"},
    "train": {},
    "output": None,
}


class UserError(Exception):
    """A failure the user caused (a config, a path, the data): the CLI prints it as one line and exits 2."""


class ConfigError(UserError, ValueError):
    """A configuration that does not validate (a ``ValueError`` too, for callers that catch those)."""


class ConfigPathError(ConfigError, FileNotFoundError):
    """A config file, or a path a config names, that does not exist (a ``FileNotFoundError`` too)."""


# ---------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: ``1e9`` and ``2E-3`` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str, source: str = "YAML") -> Any:
    """Parse YAML text; a syntax error becomes one :class:`ConfigError` line with its line and column.

    >>> yaml_load("compression: 1e9")
    {'compression': 1000000000.0}
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from e


def read_config_file(path: Union[str, Path], what: str = "config file") -> Dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``); missing/unreadable files and
    non-mapping contents are :class:`ConfigError`."""
    p = Path(path)
    if not p.exists():
        raise ConfigPathError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory, not a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e.strerror or e}") from e
    data = yaml_load(text, str(p)) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return dict(data)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """``over`` merged onto a copy of ``base``, mappings recursively.

    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}}
    """
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> Dict[str, Any]:
    """``"table.compression=10"`` -> ``{"table": {"compression": 10}}`` (the value parsed as YAML).

    >>> parse_override("table.compression=1e9")
    {'table': {'compression': 1000000000.0}}
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key in {key.strip()!r}")
    out: Dict[str, Any] = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = yaml_load(value, f"override {item!r}")
    return out


# ---------------------------------------------------------------------------------- schemas
_STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _hints(fn: Any) -> Dict[str, Any]:
    """Resolved annotations of ``fn`` (a function or dataclass); unresolvable ones become ``Any``."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # some annotation names a type only imported for type checking
        ann = getattr(fn, "__annotations__", {})
        glb = getattr(inspect.unwrap(fn), "__globals__", None) or vars(inspect.getmodule(fn) or object)
        out = {}
        for k, a in ann.items():
            try:
                out[k] = eval(a, dict(glb)) if isinstance(a, str) else a  # noqa: S307 - our own annotations
            except Exception:
                out[k] = Any
        return out


def _model(name: str, fields: Mapping[str, Tuple[Any, Any]], extra: str = "forbid") -> Type[BaseModel]:
    try:
        return create_model(name, __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),  # type: ignore[call-overload]
                            **dict(fields))
    except Exception:  # an annotation pydantic cannot build a validator for: check keys, not types
        return create_model(name, __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),  # type: ignore[call-overload]
                            **{k: (Any, d) for k, (_, d) in fields.items()})


#: Value bounds on top of the consumers' types (``epochs: 0`` would train nothing and report nothing).
_BOUNDS: Dict[str, Dict[str, Any]] = {
    "train": {"epochs": Field(default=1, ge=1), "batch_size": Field(default=2048, gt=0),
              "lr": Field(default=1e-3, gt=0), "log_every": Field(default=100, gt=0),
              "eval_every": Field(default=None, gt=0), "max_steps": Field(default=None, ge=0),
              "max_eval_batches": Field(default=None, gt=0), "num_threads": Field(default=None, gt=0),
              "early_stop_patience": Field(default=2, ge=0), "weight_decay": Field(default=0.0, ge=0)},
}


@functools.lru_cache(maxsize=None)
def _dataclass_model(dc: type, section: str) -> Type[BaseModel]:
    hints = _hints(dc)
    bounds = _BOUNDS.get(section, {})
    fields = {}
    for f in dataclasses.fields(dc):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)  # type: ignore[misc]
        fields[f.name] = (hints.get(f.name, Any), bounds.get(f.name, default))
    return _model(f"{dc.__name__}Schema", fields)


@functools.lru_cache(maxsize=None)
def _signature_model(fn: Callable, skip: Tuple[str, ...], extra_fields: Tuple[Tuple[str, Any, Any], ...] = ()
                     ) -> Type[BaseModel]:
    params = inspect.signature(fn).parameters
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    hints = _hints(fn)
    fields: Dict[str, Tuple[Any, Any]] = {n: (t, d) for n, t, d in extra_fields}
    for n, p in params.items():
        if n in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        fields[n] = (hints.get(n, Any), p.default if p.default is not p.empty else None)
    return _model(f"{getattr(fn, '__qualname__', 'fn').split('.')[0]}Schema", fields,
                  extra="allow" if var_kw else "forbid")


def _fmt_value(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _message(err: ValidationError, where: str, model: Type[BaseModel], source: str) -> ConfigError:
    lines = []
    for e in err.errors()[:2]:
        path = ".".join([where] * bool(where) + [str(x) for x in e["loc"]])
        msg = e["msg"][:1].lower() + e["msg"][1:]
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            lines.append(f"unknown key {path}; valid keys: {', '.join(sorted(model.model_fields))}")
        elif e["type"] == "missing":
            lines.append(f"{path} is required")
        else:
            lines.append(f"{path} = {_fmt_value(e['input'])}: {msg}")
    more = len(err.errors()) - len(lines)
    return ConfigError(f"{source}: " + "; ".join(lines) + (f" (and {more} more)" if more > 0 else ""))


def _validate(model: Type[BaseModel], data: Any, where: str, source: str,
              unknown: Optional[Callable[[List[str]], str]] = None) -> Dict[str, Any]:
    """The keys the user gave, typed (``"1e9"`` -> ``1e9``, ``"4"`` -> ``4``); values already of an
    accepted kind are kept as given (``10`` stays ``10`` under a float field: records and resume
    fingerprints do not change)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where or 'the config'} must be a mapping of keys, got {_fmt_value(data)}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{source}: {where}: keys must be names, got {_fmt_value(bad[0])}")
    extra = sorted(set(data) - set(model.model_fields)) if model.model_config.get("extra") == "forbid" else []
    if extra:
        path = ".".join([where] * bool(where) + [extra[0]])
        say = unknown(extra) if unknown else f"unknown {where + ' ' if where else ''}keys {extra}"
        raise ConfigError(f"{source}: unknown key {path} ({say}); valid keys: {', '.join(sorted(model.model_fields))}")
    try:
        typed = model.model_validate(dict(data)).model_dump(exclude_unset=True)
    except ValidationError as e:
        raise _message(e, where, model, source) from None
    out = {}
    for k, v in data.items():
        t = typed.get(k, v)
        out[k] = v if (not isinstance(v, str) and _same(v, t)) else t
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and (isinstance(a, bool) == isinstance(b, bool))
    except Exception:
        return False


def _sections(cfg: Mapping[str, Any], allowed: Sequence[str], source: str, what: str = "config sections") -> None:
    unknown = sorted(map(str, set(cfg) - set(allowed)))
    if unknown:
        raise ConfigError(f"{source}: unknown {what} {unknown}; allowed: {', '.join(allowed)}")


def _check(source: str, where: str, fn: Callable[[], Any]) -> Any:
    """Run a consumer's own checks (dataclass ``__post_init__``), naming the section on failure."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        msg = str(e)
        return_prefix = "" if msg.startswith(where) else f"{where}: "
        raise ConfigError(f"{source}: {return_prefix}{msg}") from e


# ---------------------------------------------------------------------------------- sections
_DATA_MODEL = _model("DataSchema", {
    "path": (Optional[str], None), "batch_size": (int, Field(default=4096, gt=0)),
    "eval_batch_size": (int, Field(default=16384, gt=0)), "fold": (Optional[int], Field(default=None, gt=0)),
    "fold_min_rows": (int, Field(default=0, ge=0)), "shuffle": (bool, True),
    "block_size": (int, Field(default=65536, gt=0)),
})


def _train_section(train: Any, source: str, where: str = "train") -> Dict[str, Any]:
    from slimembed.ctr.trainer import TrainConfig

    typed = _validate(_dataclass_model(TrainConfig, "train"), train, where, source,
                      lambda keys: f"unknown TrainConfig keys {keys}")
    _check(source, where, lambda: TrainConfig(**typed))
    return typed


def _model_section(model: Any, source: str) -> Dict[str, Any]:
    from slimembed.ctr.models import available_models, get_model_class

    if not isinstance(model, Mapping):
        raise ConfigError(f"{source}: model must be a mapping (name, embedding_dim, ...), got {_fmt_value(model)}")
    name = model.get("name")
    if name not in available_models():
        raise ConfigError(f"{source}: model.name: unknown model {_fmt_value(name)}; available: "
                          f"{', '.join(available_models())}")
    schema = _signature_model(get_model_class(name).__init__, ("self", "features", "num_dense", "table_factory"),
                              (("name", str, ...), ("embedding_dim", int, Field(default=16, gt=0))))
    return _validate(schema, model, "model", source, lambda keys: f"model {name!r} has no options {keys}")


def validate_table_section(table: Any, source: str = "config", where: str = "table",
                           first_order: bool = True) -> Dict[str, Any]:
    """A ``table`` section (``{method, compression | budget_bytes, first_order, **method keywords}``)
    typed against ``get_table_class(method).__init__``'s signature; a bare method name is allowed
    for ``first_order``."""
    from slimembed.tables import available_methods, get_table_class

    if isinstance(table, str) and where.endswith("first_order"):
        table = {"method": table}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping with a method, got {_fmt_value(table)}")
    method = table.get("method")
    if method not in available_methods():
        raise ConfigError(f"{source}: {where}: unknown table method {_fmt_value(method)}; "
                          f"available: {', '.join(available_methods())}")
    common = (("method", str, ...), ("compression", Optional[float], Field(default=None, gt=0)),
              ("budget_bytes", Optional[float], Field(default=None, gt=0)))
    if first_order:
        common += (("first_order", Any, None),)
    schema = _signature_model(get_table_class(method).__init__, ("self", "features"), common)
    typed = _validate(schema, table, where, source,
                      lambda keys: f"table method {method!r} has no keywords {keys}")
    if typed.get("compression") is not None and typed.get("budget_bytes") is not None:
        raise ConfigError(f"{source}: {where}: give budget_bytes or compression, not both")
    if first_order and typed.get("first_order") is not None:
        sub = validate_table_section(typed["first_order"], source, f"{where}.first_order", first_order=False)
        typed["first_order"] = typed["first_order"] if isinstance(typed["first_order"], str) else sub
    return typed


def _check_device(train: Mapping[str, Any], source: str) -> None:
    device = str(train.get("device", "cpu"))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{source}: train.device = {device!r}, but this torch build has no usable CUDA "
                              f"(torch {torch.__version__}, torch.cuda.is_available() is False); use device: cpu")


def validate_experiment(cfg: Mapping[str, Any], source: str = "config", check_paths: bool = True,
                        table: bool = True) -> Dict[str, Any]:
    """A filled experiment (defaults merged) checked section by section; returns it typed.

    ``check_paths``: ``data.path`` must be a processed dataset (``schema.json``); ``table``: validate
    the ``table`` section (the OptEmbed pipeline sets its own)."""
    _sections(cfg, tuple(EXPERIMENT_DEFAULTS) + ("distributed",), source)
    out = dict(cfg)
    out["data"] = _validate(_DATA_MODEL, cfg.get("data"), "data", source)
    out["model"] = _model_section(cfg.get("model"), source)
    if table:
        out["table"] = validate_table_section(cfg.get("table"), source)
    out["train"] = _train_section(cfg.get("train"), source)
    _check_device(out["train"], source)
    if out.get("output") is not None and not isinstance(out["output"], (str, Path)):
        raise ConfigError(f"{source}: output = {_fmt_value(out['output'])}: must be a file path or null")
    if "distributed" in cfg:
        from slimembed.ctr.distributed import DistributedConfig, check_method_shardable

        out["distributed"] = _validate(_dataclass_model(DistributedConfig, "distributed"), cfg["distributed"],
                                       "distributed", source)
        dcfg = _check(source, "distributed", lambda: DistributedConfig(**out["distributed"]))
        if dcfg.model_parallel and table:
            _check(source, "table", lambda: check_method_shardable(out["table"]["method"], out["table"]))
    if check_paths:
        path = out["data"].get("path")
        if path is None:
            raise ConfigError(f"{source}: data.path is required (a processed dataset directory; see `slimembed prepare`)")
        if not (Path(path) / "schema.json").exists():
            raise ConfigPathError(f"{source}: data.path = {str(path)!r} is not a processed dataset (no schema.json); "
                              "make one with `slimembed generate` or `slimembed prepare`")
    return out


_STUDY_MODEL = _model("StudySchema", {
    "name": (str, "slimembed-sweep"), "storage": (Optional[str], None), "workdir": (str, "runs/sweep"),
    "mode": (Literal["multi", "budget"], "multi"), "budget_bytes": (Optional[Union[int, float, str]], None),
    "sampler": (Literal["tpe", "nsga2", "random"], "tpe"), "n_startup_trials": (int, Field(default=10, ge=0)),
    "population_size": (int, Field(default=20, gt=0)),
    "pruner": (Optional[Literal["median", "hyperband", "none"]], None),
    "pruner_startup_trials": (int, Field(default=5, ge=0)), "n_trials": (Optional[int], Field(default=None, ge=0)),
    "total_trials": (Optional[int], Field(default=None, ge=0)), "seed": (Optional[int], None),
    "reference": (bool, True), "enqueue": (List[Dict[str, Any]], []),
    "heartbeat_interval": (float, Field(default=30, gt=0)), "grace_period": (float, Field(default=120, gt=0)),
    "checkpoints": (bool, True), "keep_checkpoints": (bool, False),
})
SWEEP_SECTIONS = ("experiment", "methods", "space", "exclude", "study")


def _partial_experiment(exp: Any, source: str, where: str = "experiment") -> Dict[str, Any]:
    """Types and keys of an experiment that is completed elsewhere (sweep/benchmark base experiments)."""
    if isinstance(exp, (str, Path)):
        return exp  # type: ignore[return-value] - a file: loaded as kind "experiment" by its consumer
    if not isinstance(exp, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping or a YAML path, got {_fmt_value(exp)}")
    _sections(exp, tuple(EXPERIMENT_DEFAULTS) + ("distributed",), source, f"{where} sections")
    out = dict(exp)
    if "data" in exp:
        out["data"] = _validate(_DATA_MODEL, exp["data"], f"{where}.data", source)
    if "model" in exp:
        out["model"] = _model_section(exp["model"], source)
    if "train" in exp:
        out["train"] = _train_section(exp["train"], source, f"{where}.train")
    if exp.get("table") is not None:
        out["table"] = validate_table_section(exp["table"], source, f"{where}.table")
    return out


def _method_list(v: Any, source: str, where: str) -> None:
    from slimembed.tables import available_methods

    if v is None:
        return
    if not isinstance(v, list):
        raise ConfigError(f"{source}: {where} = {_fmt_value(v)}: must be a list of table methods")
    allowed = available_methods(include_export=True) if "include_export" in inspect.signature(
        available_methods).parameters else available_methods()
    for m in v:
        if m not in allowed:
            raise ConfigError(f"{source}: {where}: unknown table method {_fmt_value(m)}; available: "
                              f"{', '.join(available_methods())}")


def _method_map(v: Any, source: str, where: str) -> None:
    if v is None:
        return
    if not isinstance(v, Mapping):
        raise ConfigError(f"{source}: {where} = {_fmt_value(v)}: must map method -> value, e.g. {{dhe: 'too slow'}}")
    _method_list(list(v), source, where)


def _sweep(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    _sections(cfg, SWEEP_SECTIONS, source, "sweep config sections")
    if cfg.get("experiment") is None:
        raise ConfigError(f"{source}: experiment is required (a `slimembed train` config: data, model, train)")
    cfg["experiment"] = _partial_experiment(cfg["experiment"], source)
    _method_list(cfg.get("methods"), source, "methods")
    _method_map(cfg.get("exclude"), source, "exclude")
    if cfg.get("space") is not None and not isinstance(cfg["space"], Mapping):
        raise ConfigError(f"{source}: space = {_fmt_value(cfg['space'])}: must map knob or method -> range")
    cfg["study"] = _validate(_STUDY_MODEL, cfg.get("study"), "study", source)
    return cfg


_BENCHMARK_MODEL = _model("BenchmarkSchema", {
    "experiment": (Any, None), "generate": (Optional[Dict[str, Any]], None),
    "methods": (Optional[List[str]], None), "budgets": (List[float], Field(default=None, min_length=1)),
    "seeds": (List[int], Field(default=None, min_length=1)), "knobs": (Optional[Dict[str, Dict[str, Any]]], None),
    "exclude": (Optional[Dict[str, str]], None), "reference": (bool, True), "out": (str, "runs/benchmark"),
})


def _benchmark(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    _sections(cfg, tuple(_BENCHMARK_MODEL.model_fields), source, "benchmark config sections")
    out = _validate(_BENCHMARK_MODEL, cfg, "", source)
    if out.get("experiment") is not None:
        out["experiment"] = _partial_experiment(out["experiment"], source)
    bad = [b for b in out.get("budgets") or [] if b <= 1]
    if bad:
        raise ConfigError(f"{source}: budgets = {out['budgets']!r}: budgets must be compression ratios > 1")
    _method_list(out.get("methods"), source, "methods")
    _method_map(out.get("exclude"), source, "exclude")
    _method_map(out.get("knobs"), source, "knobs")
    return out


OPTEMBED_SECTIONS = ("data", "model", "train", "optembed", "output")


def _optembed(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    from slimembed.search.optembed import PIPELINE_DEFAULTS, OptEmbedConfig

    _sections(cfg, OPTEMBED_SECTIONS, source, "optembed config sections")
    cfg = deep_merge(PIPELINE_DEFAULTS, cfg)
    oe = _validate(_dataclass_model(OptEmbedConfig, "optembed"), cfg["optembed"], "optembed", source)
    oe_cfg = _check(source, "optembed", lambda: OptEmbedConfig(**oe))
    if oe_cfg.retrain:
        _train_section({**cfg["train"], **oe_cfg.retrain}, source, "optembed.retrain")
    exp = validate_experiment({"data": cfg["data"], "model": cfg["model"], "train": cfg["train"], "output": None},
                              source, table=False)
    if cfg["output"] is None:
        raise ConfigError(f"{source}: output (the pipeline's directory) is required")
    return {**cfg, "data": exp["data"], "model": exp["model"], "train": exp["train"], "optembed": oe_cfg.to_dict()}


def _table_schema(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    from slimembed.datasets.tabular import TableSpec

    typed = _validate(_dataclass_model(TableSpec, "table_schema"), cfg, "", source)
    _check(source, "schema", lambda: TableSpec(**typed))
    return typed


# ---------------------------------------------------------------------------------- the loader
def load_config(source: Union[str, Path, Mapping[str, Any], None], kind: str, overrides: Sequence[str] = (),
                check_paths: bool = True) -> Dict[str, Any]:
    """Read (a YAML path) or take (a mapping) a config, apply ``section.key=value`` overrides and
    validate it as ``kind`` (one of :data:`KINDS`). Raises :class:`ConfigError` (one line naming the
    key path, the value and what is allowed).

    Returns a plain dict: ``experiment`` configs are filled with :data:`EXPERIMENT_DEFAULTS`,
    ``sweep`` configs with the study defaults, ``optembed`` with the pipeline defaults;
    ``benchmark`` returns the user's sections only (the grid merges them onto its defaults);
    ``check_paths`` (experiment only) requires ``data.path`` to be a processed dataset.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; kinds: {', '.join(KINDS)}")
    if source is None:
        cfg: Dict[str, Any] = {}
        label = "config"
    elif isinstance(source, Mapping):
        cfg, label = copy.deepcopy(dict(source)), "config"
    else:
        cfg, label = read_config_file(source, f"{kind.replace('_', ' ')} config"), str(source)
        exp = cfg.get("experiment") if kind in ("sweep", "benchmark") else None
        if isinstance(exp, str) and not Path(exp).is_absolute():  # relative to the sweep file
            cfg["experiment"] = str(Path(source).parent / exp)
    for item in overrides:
        cfg = deep_merge(cfg, parse_override(item))
    if kind == "experiment":
        _sections(cfg, tuple(EXPERIMENT_DEFAULTS) + ("distributed",), label)
        return validate_experiment(deep_merge(EXPERIMENT_DEFAULTS, cfg), label, check_paths=check_paths)
    if kind == "sweep":
        return _sweep(cfg, label)
    if kind == "benchmark":
        return _benchmark(cfg, label)
    if kind == "optembed":
        return _optembed(cfg, label)
    return _table_schema(cfg, label)
