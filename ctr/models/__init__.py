"""slimembed.ctr.models: standard CTR models over any slimembed table, and their registry.

Every model is built as ``Model(features, num_dense, table_factory=None, **hyper_params)`` and
called as ``model(dense [B, n_dense], sparse LongTensor[B, F] | KeyedJaggedTensor) -> [B]`` logits
(loss: BCE-with-logits). ``table_factory(features) -> table`` builds the field table and, for the
models with a first-order term (LR, FM, DeepFM, WDL), the 1-dim first-order table too.

Example::

    >>> from slimembed.tables import Feature, make_table
    >>> from slimembed.ctr.models import make_model
    >>> feats = [Feature(f"C{i}", 1000, 16) for i in range(26)]
    >>> model = make_model("deepfm", feats, num_dense=13, hidden_units=[400, 400, 400],
    ...                    table_factory=lambda fs: make_table("full", fs))
    >>> [t is model.embedding or t is model.first_order for t in model.embedding_tables()]
    [True, True]
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Type

from slimembed.tables import Feature

from .base import CTRModel, TableFactory, default_table_factory, field_embeddings
from .dcn import DCN
from .dcnv2 import DCNv2
from .deepfm import DeepFM
from .dlrm import DLRM
from .fm import FM
from .fnn import FNN
from .ipnn import IPNN
from .lr import LR
from .wdl import WDL

MODELS: Dict[str, Type[CTRModel]] = {
    cls.name: cls for cls in (LR, FM, DeepFM, DCN, DCNv2, DLRM, FNN, IPNN, WDL)
}


def available_models() -> List[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def get_model_class(name: str) -> Type[CTRModel]:
    """The model class registered as ``name`` (case-insensitive)."""
    try:
        return MODELS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        ) from None


def model_hyper_parameters(name: str) -> Dict[str, Any]:
    """The hyper-parameters of model ``name`` and their defaults (its constructor's arguments after
    ``table_factory``, in signature order)."""
    return get_model_class(name).hyper_parameter_defaults()


def make_model(
    name: str,
    features: Sequence[Feature],
    num_dense: int,
    table_factory: Optional[TableFactory] = None,
    **cfg: Any,
) -> CTRModel:
    """Build model ``name`` (see :func:`available_models`) from plain config values.

    Args:
        name: registry name, e.g. ``"deepfm"``.
        features: the categorical features.
        num_dense: number of dense features (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``.
        **cfg: the model's hyper-parameters (see :func:`model_hyper_parameters`); unknown keys
            raise ``ValueError`` naming the accepted ones.
    """
    cls = get_model_class(name)
    accepted = model_hyper_parameters(name)
    unknown = sorted(set(cfg) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown hyper-parameters {unknown}; accepted: {sorted(accepted)}"
        )
    return cls(list(features), num_dense, table_factory=table_factory, **cfg)


__all__ = [
    "MODELS",
    "available_models",
    "get_model_class",
    "make_model",
    "model_hyper_parameters",
    "CTRModel",
    "TableFactory",
    "default_table_factory",
    "field_embeddings",
    "LR",
    "FM",
    "DeepFM",
    "DCN",
    "DCNv2",
    "DLRM",
    "FNN",
    "IPNN",
    "WDL",
]
