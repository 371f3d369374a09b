"""What every CTR model shares: the table factory, field embeddings, the first-order part, and the
split of parameters into tables (sparse optimizers) and the rest (Adam).

Conventions (docs/architecture.md §4, FuxiCTR's):

* The field table is ``self.embedding = table_factory(features)``; first-order models (LR, FM,
  DeepFM, WDL) also build ``self.first_order = table_factory(with_dim(features, 1))`` through the
  same factory, so a compressed method compresses both.
* Dense features: in FM, DeepFM, IPNN, DCN, DCNv2, FNN and WDL each dense feature is an extra
  field embedded by :class:`~slimembed.ctr.layers.NumericEmbedding` (``x_k * e_k``), so the field
  tensor is ``[B, F + n_dense, D]`` and MLP / cross inputs are its flattening
  ``[B, (F + n_dense) * D]`` (FuxiCTR embeds numeric features with a bias-free ``Linear(1, D)``).
  The first-order part adds a linear term ``dense @ w`` (FuxiCTR: ``Linear(1, 1)`` per numeric
  feature). DLRM instead runs a bottom MLP on the raw dense vector.
* ``forward(dense, sparse) -> [B]`` logits; the loss is BCE-with-logits.
"""

from __future__ import annotations

import inspect
from typing import (
    Any, Callable, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Union,
)

import torch
from torch import Tensor, nn

from slimembed.tables import EmbeddingTable, Feature, check_features, make_table, with_dim
from slimembed.tables.base import HAVE_TORCHREC, KeyedJaggedTensor, KeyedTensor

from ..layers import NumericEmbedding, init_linear

TableFactory = Callable[[List[Feature]], EmbeddingTable]
SparseInput = Union[Tensor, "KeyedJaggedTensor"]
# Constructor arguments that are wiring, not hyper-parameters (config() leaves them out).
_NOT_HYPER_PARAMETERS = frozenset({"self", "features", "num_dense", "table_factory"})


def default_table_factory(features: List[Feature]) -> EmbeddingTable:
    """The default factory: an uncompressed ``"full"`` table (``make_table("full", features)``)."""
    return make_table("full", features)


def _keyed_to_fields(kt: "KeyedTensor", names: Sequence[str]) -> Tensor:
    """A ``KeyedTensor`` with values ``[B, F * D]`` -> ``[B, F, D]`` in the order ``names``."""
    keys = list(kt.keys())
    dims = list(kt.length_per_key())
    if len(set(dims)) != 1:
        raise ValueError(
            "field_embeddings needs one embedding dim for all features, got per-feature dims "
            f"{dict(zip(keys, dims))}; use a table that pads or projects to a common D"
        )
    values = kt.values()
    if keys != list(names):
        missing = [n for n in names if n not in keys]
        if missing:
            raise ValueError(f"table output lacks features {missing}; it has {keys}")
        d = kt.to_dict()
        return torch.stack([d[n] for n in names], dim=1)
    return values.reshape(values.shape[0], len(keys), dims[0])


def field_embeddings(table: nn.Module, sparse: SparseInput) -> Tensor:
    """Field embeddings ``[B, F, D]`` from either input form.

    Args:
        table: an embedding table (any :class:`~slimembed.tables.EmbeddingTable`, or a module
            with the same forward contract).
        sparse: dense ids ``LongTensor[B, F]`` (passed to the table, which returns
            ``[B, F, D]``) or a ``KeyedJaggedTensor`` (the table returns a pooled
            ``KeyedTensor`` ``[B, F * D]``, viewed as ``[B, F, D]`` in the table's feature order).

    Raises:
        ValueError: when the features' output dims differ (a ``[B, F, D]`` view needs one D).
    """
    out = table(sparse)
    if isinstance(out, Tensor):
        if out.dim() != 3:
            raise ValueError(f"table returned shape {tuple(out.shape)}, expected [B, F, D]")
        return out
    if HAVE_TORCHREC and isinstance(out, KeyedTensor):
        names = getattr(table, "feature_names", None) or list(out.keys())
        return _keyed_to_fields(out, names)
    raise TypeError(f"table returned {type(out).__name__}; expected a Tensor or a KeyedTensor")


class CTRModel(nn.Module):
    """Base class of the CTR models: builds the tables through a factory and offers shared parts.

    Args:
        features: the ``F`` categorical features (one common ``embedding_dim`` ``D`` where the
            model has field embeddings).
        num_dense: number of dense float features ``n_dense`` (may be 0).
        table_factory: ``features -> table``; default ``make_table("full", features)``. Never
            stored on the module (a lambda would make the model unpicklable).
        embedding: build the field table ``self.embedding = table_factory(features)``; default
            ``True``. ``self.embedding_dim`` is then its common ``D`` (else ``None``).
        numeric_fields: with ``embedding``, embed each dense feature as one more field
            (:class:`~slimembed.ctr.layers.NumericEmbedding`); default ``True`` (``False`` in DLRM,
            whose bottom MLP reads the raw dense vector).
        first_order: build the first-order part (:meth:`_build_first_order`), after the field
            table; default ``False`` (``True`` in LR, FM, DeepFM, WDL).

    The build order (field table, numeric embedding, first-order table, dense linear, bias, then
    the subclass's layers) fixes the random initialisation of a seeded model.

    A model subclasses this, calls ``super().__init__(features, num_dense, table_factory, ...)``,
    builds its layers, records ``self.hparams`` with :meth:`_save_hparams` and implements
    ``forward(dense: [B, n_dense], sparse: LongTensor[B, F] | KJT) -> [B]`` logits.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        features: Sequence[Feature],
        num_dense: int,
        table_factory: Optional[TableFactory] = None,
        *,
        embedding: bool = True,
        numeric_fields: bool = True,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        self.hparams: Dict[str, Any] = {}  # the model's own hyper-parameters (_save_hparams)
        self.features: List[Feature] = check_features(features)
        if int(num_dense) < 0:
            raise ValueError(f"num_dense must be >= 0, got {num_dense}")
        self.num_dense = int(num_dense)
        self.numeric_embedding: Optional[NumericEmbedding] = None
        self.dense_linear: Optional[nn.Linear] = None
        self.embedding_dim: Optional[int] = None
        if embedding:
            self.embedding_dim = self._build_field_embedding(table_factory, numeric_fields)
        if first_order:
            self._build_first_order(table_factory)

    @classmethod
    def hyper_parameter_defaults(cls) -> Dict[str, Any]:
        """The constructor's hyper-parameters (its arguments after ``table_factory``) and their
        defaults, in signature order."""
        params = inspect.signature(cls.__init__).parameters
        return {k: p.default for k, p in params.items() if k not in _NOT_HYPER_PARAMETERS}

    def _save_hparams(self, init_args: Mapping[str, Any]) -> None:
        """``self.hparams`` from the constructor's ``locals()``: every hyper-parameter in signature
        order, sequences as lists (so :meth:`config` is plain data)."""
        self.hparams = {
            k: list(init_args[k]) if isinstance(init_args[k], (list, tuple)) else init_args[k]
            for k in self.hyper_parameter_defaults()
        }

    # ------------------------------------------------------------------ building
    @staticmethod
    def _logit_layer(in_dim: int) -> nn.Linear:
        """The final ``Linear(in_dim, 1)`` of models with an output head (xavier-uniform, zero bias)."""
        layer = nn.Linear(in_dim, 1)
        init_linear(layer)
        return layer

    @staticmethod
    def _make_table(table_factory: Optional[TableFactory], features: List[Feature]) -> EmbeddingTable:
        table = (table_factory or default_table_factory)(list(features))
        if not isinstance(table, nn.Module):
            raise TypeError(f"table_factory must return an nn.Module, got {type(table).__name__}")
        return table

    def _build_field_embedding(
        self, table_factory: Optional[TableFactory], numeric_fields: bool = True
    ) -> int:
        """``self.embedding = table_factory(features)`` (+ :class:`NumericEmbedding` for the dense
        features when ``numeric_fields``). Returns the common embedding dim ``D``."""
        self.embedding = self._make_table(table_factory, self.features)
        dims = list(getattr(self.embedding, "output_dims", [f.embedding_dim for f in self.features]))
        if len(set(dims)) != 1:
            raise ValueError(
                f"{type(self).__name__} needs one embedding dim for all fields, the table gives "
                f"{dims}; use a table that pads or projects to a common D"
            )
        d = int(dims[0])
        if numeric_fields and self.num_dense > 0:
            self.numeric_embedding = NumericEmbedding(self.num_dense, d)
        return d

    def _build_first_order(self, table_factory: Optional[TableFactory]) -> None:
        """``self.first_order = table_factory(with_dim(features, 1))``, a dense linear term
        ``Linear(n_dense, 1, bias=False)`` (xavier-uniform) and a global bias (zero)."""
        self.first_order = self._make_table(table_factory, with_dim(self.features, 1))
        if self.num_dense > 0:
            self.dense_linear = nn.Linear(self.num_dense, 1, bias=False)
            init_linear(self.dense_linear)
        self.bias = nn.Parameter(torch.zeros(1))

    @property
    def num_fields(self) -> int:
        """Fields seen by interaction layers: ``F`` (+ ``n_dense`` when dense features are fields)."""
        return len(self.features) + (self.num_dense if self.numeric_embedding is not None else 0)

    @property
    def flat_dim(self) -> int:
        """Width of the flattened field tensor ``flatten(V)``: ``num_fields * D``."""
        if self.embedding_dim is None:
            raise ValueError(f"{type(self).__name__} has no field embedding, so no flat_dim")
        return self.num_fields * self.embedding_dim

    def config(self) -> Dict[str, Any]:
        """Plain dict: ``{"model": name, "num_dense": n, **hyper-parameters}`` (the features and
        the table factory are not included)."""
        return {"model": self.name, "num_dense": self.num_dense, **self.hparams}

    # ------------------------------------------------------------------ forward parts
    def _check_dense(self, dense: Optional[Tensor], batch_size: int) -> Optional[Tensor]:
        if self.num_dense == 0:
            if dense is not None and dense.numel() > 0:
                raise ValueError(f"model built with num_dense=0 got dense of shape {tuple(dense.shape)}")
            return None
        if dense is None or dense.dim() != 2 or dense.shape[1] != self.num_dense:
            shape = None if dense is None else tuple(dense.shape)
            raise ValueError(f"dense must be FloatTensor[B, {self.num_dense}], got {shape}")
        if dense.shape[0] != batch_size:
            raise ValueError(f"dense has batch {dense.shape[0]}, sparse has batch {batch_size}")
        return dense

    def field_inputs(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """Field embeddings with numeric fields appended: ``[B, F (+ n_dense), D]``."""
        emb = field_embeddings(self.embedding, sparse)  # [B, F, D]
        dense = self._check_dense(dense, emb.shape[0])
        if self.numeric_embedding is not None and dense is not None:
            emb = torch.cat([emb, self.numeric_embedding(dense.to(emb.dtype))], dim=1)
        return emb

    def first_order_logit(self, dense: Optional[Tensor], sparse: SparseInput) -> Tensor:
        """``Σ_f w[x_f] + dense @ w_dense + b``: ``[B]``."""
        w = field_embeddings(self.first_order, sparse)  # [B, F, 1]
        out = w.sum(dim=(1, 2)) + self.bias
        dense = self._check_dense(dense, w.shape[0])
        if self.dense_linear is not None and dense is not None:
            out = out + self.dense_linear(dense.to(w.dtype)).squeeze(1)
        return out

    # ------------------------------------------------------------------ parameter groups
    def embedding_tables(self) -> List[EmbeddingTable]:
        """All embedding tables (outermost ones; shared tables once), for sparse optimizers and
        memory accounting."""
        tables: List[EmbeddingTable] = []
        seen: Set[int] = set()

        def visit(module: nn.Module) -> None:
            for child in module.children():
                if isinstance(child, EmbeddingTable):
                    if id(child) not in seen:
                        seen.add(id(child))
                        tables.append(child)
                else:
                    visit(child)

        visit(self)
        return tables

    def dense_parameters(self) -> List[nn.Parameter]:
        """All parameters outside the embedding tables (MLPs, cross layers, numeric embeddings,
        first-order dense weights and biases), e.g. for Adam."""
        in_tables = {id(p) for t in self.embedding_tables() for p in t.parameters()}
        return [p for p in self.parameters() if id(p) not in in_tables]

    def table_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all embedding tables."""
        seen: Set[int] = set()
        for t in self.embedding_tables():
            for p in t.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p
