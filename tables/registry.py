"""One way to build any table: a name -> class registry, budgets, and plain-dict configs."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from .feature import Feature

_REGISTRY: Dict[str, type] = {}


def register(name: str) -> Callable[[Type], Type]:
    """Class decorator: make a table class buildable by ``make_table(name, ...)``."""

    def deco(cls: Type) -> Type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"table method {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods(include_export: bool = False) -> List[str]:
    """Registered method names, sorted: the trainable ones, or with ``include_export=True`` also
    the export-only kinds (``trainable = False``: ``quantized``, ``optembed-compact``).

    Example::

        >>> "hash" in available_methods(), "optembed-compact" in available_methods()
        (True, False)
        >>> "optembed-compact" in available_methods(include_export=True)
        True
    """
    return sorted(m for m, cls in _REGISTRY.items() if include_export or getattr(cls, "trainable", True))


def get_table_class(method: str) -> type:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(
            f"unknown table method {method!r}; available: {', '.join(available_methods(include_export=True))}"
        ) from None


def make_table(
    method: str,
    features: Sequence[Feature],
    budget_bytes: Optional[int] = None,
    compression: Optional[float] = None,
    **kwargs: Any,
):
    """Build table ``method`` for ``features``.

    Args:
        method: a registered name (see :func:`available_methods`).
        features: the features the table serves.
        budget_bytes: size the method's knob so the table's memory lands at or under this.
        compression: alternative to ``budget_bytes``: full fp32 bytes / ratio.
        **kwargs: the method's own arguments.

    Example::

        >>> make_table("hash", [Feature("C1", 1000, 16)], compression=10).budget_solution["value"]
        99
    """
    cls = get_table_class(method)
    if budget_bytes is not None and compression is not None:
        raise ValueError("give budget_bytes or compression, not both")
    if compression is not None:
        if compression <= 0:
            raise ValueError(f"compression must be > 0, got {compression}")
        budget_bytes = int(sum(f.num_embeddings * f.embedding_dim * 4 for f in features) / compression)
    if budget_bytes is not None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}")
        return cls.for_budget(list(features), int(budget_bytes), **kwargs)
    return cls(list(features), **kwargs)


def make_table_from_config(config: Dict[str, Any], features: Optional[Sequence[Feature]] = None):
    """Build a table from a plain dict ``{"method": ..., **kwargs}`` (e.g. parsed YAML).

    ``features`` may be given in the dict (as dicts) or as the argument. A class with a
    ``from_config(cfg, features)`` classmethod (an export kind wrapping a source table) builds
    itself from the rest of the dict.

    Example::

        >>> t = make_table("qr", [Feature("C1", 1000, 8)], collisions=10)
        >>> make_table_from_config(t.config()).rows_per_feature
        [110]
    """
    cfg = dict(config)
    method = cfg.pop("method", None)
    if method is None:
        raise ValueError(f"table config needs a 'method' key, got keys {sorted(config)}")
    feats = cfg.pop("features", None)
    if features is None and getattr(get_table_class(method), "from_config", None) is not None:
        return get_table_class(method).from_config(cfg, None)
    if features is None:
        if feats is None:
            raise ValueError("table config has no 'features' and none were passed")
        features = [f if isinstance(f, Feature) else Feature.from_dict(f) for f in feats]
    from_config = getattr(get_table_class(method), "from_config", None)
    if from_config is not None:
        return from_config(cfg, features)
    return make_table(method, features, **cfg)


def method_info(method: str) -> Dict[str, Any]:
    """Everything about a method, read from its class (so it never drifts): the first line of its
    docstring (what it is, and its paper), the budget knob, the other constructor arguments with
    their defaults, and the facts the rest of the library reads.

    Example::

        >>> info = method_info("hash")
        >>> info["budget_knob"], info["vocabulary_free"], info["arguments"]["signed"]
        ('total_rows', True, False)
    """
    import inspect

    cls = get_table_class(method)
    doc = inspect.getdoc(cls) or ""
    summary = " ".join(doc.split("\n\n")[0].split())
    args: Dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "features") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        args[name] = None if p.default is inspect.Parameter.empty else p.default
    why = getattr(cls, "not_shardable_reason", None)
    return {
        "method": method, "class": cls.__name__, "summary": summary,
        "budget_knob": getattr(cls, "budget_knob", None),
        "solved_knobs": list(getattr(cls, "solved_knobs", ())),
        "arguments": {k: v for k, v in args.items() if k not in getattr(cls, "solved_knobs", ())},
        "search_space": dict(getattr(cls, "search_space", {})),
        "vocabulary_free": not getattr(cls, "needs_range", True),
        "trainable": getattr(cls, "trainable", True),
        "shardable": why is None, "not_shardable_reason": why,
        "quantizable": getattr(cls, "quantizable", False),
        "supports_sparse": getattr(cls, "supports_sparse", False),
        "not_swept_reason": getattr(cls, "not_swept_reason", None),
    }

