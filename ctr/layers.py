"""Small named building blocks for CTR models (docs/architecture.md §4, FuxiCTR-style layers).

Notation: ``B`` batch size, ``F`` number of fields (categorical fields plus numeric fields where a
model treats dense features as fields), ``D`` embedding dim, ``n_dense`` number of dense features.

Blocks:

* :class:`MLPBlock` -- ``Linear -> [BatchNorm1d] -> activation -> [Dropout]`` per hidden layer,
  optional final linear output. Linear layers start xavier-uniform with zero bias.
* :class:`FMInteraction` -- the paper FM second-order term, ``[B, F, D] -> [B, 1]``.
* :class:`CrossNet` -- DCN (v1) vector cross layers, ``x_{l+1} = x0 * (w_l^T x_l) + b_l + x_l``.
* :class:`CrossNetV2` -- DCN-V2 matrix cross layers, ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``,
  optionally low rank ``W_l = U_l V_l^T``.
* :class:`InnerProduct` -- IPNN pairwise inner products, ``[B, F, D] -> [B, F(F-1)/2]``.
* :class:`DotInteraction` -- DLRM dot interactions, ``[B, N, D] -> [B, N(N-1)/2]``
  (``N(N+1)/2`` with ``self_interaction``).
* :class:`NumericEmbedding` -- FuxiCTR's numeric-as-field embedding: a learned vector per dense
  feature scaled by its value, ``[B, n_dense] -> [B, n_dense, D]``.

Example::

    >>> mlp = MLPBlock(32, [64, 64], output_dim=1)
    >>> mlp(torch.randn(8, 32)).shape
    torch.Size([8, 1])
    >>> FMInteraction()(torch.randn(8, 5, 4)).shape
    torch.Size([8, 1])
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from slimembed.tables import DEFAULT_INIT_SCALE

ActivationSpec = Union[str, Callable[[], nn.Module], None]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
    "linear": nn.Identity,
}


def make_activation(activation: ActivationSpec) -> nn.Module:
    """Build an activation module from a name (``"relu"``, ``"gelu"``, ...), a zero-argument
    factory (e.g. ``nn.ReLU``) or ``None`` (identity)."""
    if activation is None:
        return nn.Identity()
    if isinstance(activation, str):
        try:
            return _ACTIVATIONS[activation.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; available: {', '.join(sorted(_ACTIVATIONS))}"
            ) from None
    module = activation()
    if not isinstance(module, nn.Module):
        raise TypeError(f"activation factory must return an nn.Module, got {type(module).__name__}")
    return module


def init_linear(linear: nn.Linear) -> None:
    """The project's dense-layer init: xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class MLPBlock(nn.Module):
    """A multi-layer perceptron: per hidden layer ``Linear -> [BatchNorm1d] -> act -> [Dropout]``.

    Args:
        input_dim: input width ``I``.
        hidden_units: widths of the hidden layers (may be empty).
        activation: activation after every hidden layer (name or factory); default ``"relu"``.
        dropout: dropout probability after every hidden activation; default ``0.0`` (no layer).
        batch_norm: add ``BatchNorm1d`` between each hidden ``Linear`` and its activation;
            default ``False``.
        output_dim: if given, a final plain ``Linear`` (no activation) to this width, e.g. 1 for
            a logit; if ``None`` the output is the last hidden layer (activation applied).

    Every ``Linear`` starts xavier-uniform with zero bias.

    Shapes: ``[B, I] -> [B, output_dim]`` (or ``[B, hidden_units[-1]]``; ``[B, I]`` when there is
    neither a hidden layer nor an output layer).

    Example::

        >>> MLPBlock(10, [400, 400, 400], output_dim=1)(torch.randn(4, 10)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: ActivationSpec = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"MLPBlock input_dim must be >= 1, got {input_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_dim = int(input_dim)
        self.hidden_units: List[int] = [int(h) for h in hidden_units]
        layers: List[nn.Module] = []
        width = self.input_dim
        for h in self.hidden_units:
            if h < 1:
                raise ValueError(f"hidden layer widths must be >= 1, got {self.hidden_units}")
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if output_dim is not None:
            layers.append(nn.Linear(width, int(output_dim)))
            width = int(output_dim)
        self.output_dim = width
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.layers:
            if isinstance(m, nn.Linear):
                init_linear(m)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, input_dim] -> [B, output_dim]``."""
        return self.layers(x)


class FMInteraction(nn.Module):
    """Second-order factorization-machine term (Rendle 2010), field-wise:

    ``0.5 * Σ_d [(Σ_f v_fd)² − Σ_f v_fd²] = Σ_{i<j} <v_i, v_j>``.

    Shapes: ``[B, F, D] -> [B, 1]``.
    """

    def forward(self, v: Tensor) -> Tensor:
        square_of_sum = v.sum(dim=1).pow(2)  # [B, D]
        sum_of_square = v.pow(2).sum(dim=1)  # [B, D]
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)


class CrossNet(nn.Module):
    """DCN (Wang et al. 2017) cross network of vector cross layers:

    ``x_{l+1} = x0 * (w_l^T x_l) + b_l + x_l`` for ``l = 0..L-1``.

    Args:
        input_dim: width ``I`` of ``x0``.
        num_layers: number of cross layers ``L``; default 3.

    ``w_l`` start xavier-uniform (as a ``1 x I`` linear map), ``b_l`` zero.

    Shapes: ``[B, I] -> [B, I]``.
    """

    def __init__(self, input_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CrossNet needs num_layers >= 1, got {num_layers}")
        self.input_dim = int(input_dim)
        self.num_layers = int(num_layers)
        self.weight = nn.Parameter(torch.empty(self.num_layers, self.input_dim))  # [L, I]
        self.bias = nn.Parameter(torch.empty(self.num_layers, self.input_dim))  # [L, I]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (self.input_dim + 1))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x0: Tensor) -> Tensor:
        """``x0: [B, I] -> [B, I]``."""
        x = x0
        for l in range(self.num_layers):
            xw = x @ self.weight[l]  # [B]
            x = x0 * xw.unsqueeze(1) + self.bias[l] + x
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 (Wang et al. 2021) cross network of matrix cross layers:

    ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``; with ``low_rank=r``, ``W_l = U_l V_l^T``
    (``U_l, V_l`` are ``I x r``), i.e. ``W_l x = U_l (V_l^T x)``.

    Args:
        input_dim: width ``I`` of ``x0``.
        num_layers: number of cross layers; default 3.
        low_rank: rank ``r`` of each ``W_l``; default ``None`` (full ``I x I`` matrices).

    ``W_l`` (or ``U_l`` and ``V_l``) start xavier-uniform, ``b_l`` zero.

    Shapes: ``[B, I] -> [B, I]``.
    """

    def __init__(self, input_dim: int, num_layers: int = 3, low_rank: Optional[int] = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CrossNetV2 needs num_layers >= 1, got {num_layers}")
        if low_rank is not None and low_rank < 1:
            raise ValueError(f"low_rank must be >= 1 or None, got {low_rank}")
        self.input_dim = int(input_dim)
        self.num_layers = int(num_layers)
        self.low_rank = None if low_rank is None else int(low_rank)
        i = self.input_dim
        if self.low_rank is None:
            self.weight = nn.Parameter(torch.empty(self.num_layers, i, i))  # W_l: [L, I, I]
        else:
            r = self.low_rank
            self.u = nn.Parameter(torch.empty(self.num_layers, i, r))  # U_l: [L, I, r]
            self.v = nn.Parameter(torch.empty(self.num_layers, i, r))  # V_l: [L, I, r]
        self.bias = nn.Parameter(torch.empty(self.num_layers, i))  # [L, I]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.low_rank is None:
            for l in range(self.num_layers):
                nn.init.xavier_uniform_(self.weight[l])
        else:
            for l in range(self.num_layers):
                nn.init.xavier_uniform_(self.u[l])
                nn.init.xavier_uniform_(self.v[l])
        nn.init.zeros_(self.bias)

    def layer_weight(self, l: int) -> Tensor:
        """The ``[I, I]`` matrix ``W_l`` of layer ``l`` (``U_l V_l^T`` when low rank)."""
        if self.low_rank is None:
            return self.weight[l]
        return self.u[l] @ self.v[l].t()

    def forward(self, x0: Tensor) -> Tensor:
        """``x0: [B, I] -> [B, I]``."""
        x = x0
        for l in range(self.num_layers):
            if self.low_rank is None:
                wx = x @ self.weight[l].t()  # [B, I]
            else:
                wx = (x @ self.v[l]) @ self.u[l].t()  # [B, r] -> [B, I]
            x = x0 * (wx + self.bias[l]) + x
        return x


def _pair_indices(n: int, include_diagonal: bool) -> Tensor:
    """``LongTensor[2, P]``: row-major ``(i, j)`` pairs with ``i < j`` (``i <= j`` with diagonal)."""
    return torch.triu_indices(n, n, offset=0 if include_diagonal else 1)


def _pairwise_dots(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``x: [B, N, D]`` -> ``[B, P]`` with ``out[:, p] = <x[:, rows[p]], x[:, cols[p]]>``."""
    gram = torch.bmm(x, x.transpose(1, 2))  # [B, N, N]
    return gram[:, rows, cols]


class InnerProduct(nn.Module):
    """IPNN (Qu et al. 2016) product layer: all pairwise field inner products ``<v_i, v_j>``,
    ``i < j``, in row-major pair order ``(0,1), (0,2), ..., (F-2,F-1)``.

    Args:
        num_fields: ``F``.

    Shapes: ``[B, F, D] -> [B, F(F-1)/2]``.
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.num_fields = int(num_fields)
        pairs = _pair_indices(self.num_fields, include_diagonal=False)
        self.register_buffer("rows", pairs[0], persistent=False)
        self.register_buffer("cols", pairs[1], persistent=False)

    @property
    def output_dim(self) -> int:
        return self.num_fields * (self.num_fields - 1) // 2

    def forward(self, v: Tensor) -> Tensor:
        """``[B, F, D] -> [B, F(F-1)/2]``."""
        if v.shape[1] != self.num_fields:
            raise ValueError(f"InnerProduct expects {self.num_fields} fields, got {v.shape[1]}")
        return _pairwise_dots(v, self.rows, self.cols)


class DotInteraction(nn.Module):
    """DLRM (Naumov et al. 2019) dot interaction: the strictly-upper triangle of ``X X^T``
    (``N(N-1)/2`` values, row-major) or, with ``self_interaction``, the upper triangle including
    the diagonal (``N(N+1)/2`` values). The caller concatenates the dense vector itself.

    Args:
        num_inputs: ``N`` (in DLRM: 1 bottom-MLP output + ``F`` embeddings).
        self_interaction: include ``<x_i, x_i>``; default ``False`` (DLRM's default).

    Shapes: ``[B, N, D] -> [B, N(N-1)/2]`` (or ``[B, N(N+1)/2]``).
    """

    def __init__(self, num_inputs: int, self_interaction: bool = False) -> None:
        super().__init__()
        self.num_inputs = int(num_inputs)
        self.self_interaction = bool(self_interaction)
        pairs = _pair_indices(self.num_inputs, include_diagonal=self.self_interaction)
        self.register_buffer("rows", pairs[0], persistent=False)
        self.register_buffer("cols", pairs[1], persistent=False)

    @property
    def output_dim(self) -> int:
        return int(self.rows.numel())

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, D] -> [B, output_dim]``."""
        if x.shape[1] != self.num_inputs:
            raise ValueError(f"DotInteraction expects {self.num_inputs} inputs, got {x.shape[1]}")
        return _pairwise_dots(x, self.rows, self.cols)


class NumericEmbedding(nn.Module):
    """Dense features as fields (FuxiCTR's convention): feature ``k`` has a learned vector
    ``e_k`` and contributes ``x_k * e_k`` (a bias-free ``Linear(1, D)`` per feature).

    Args:
        num_dense: ``n_dense``.
        embedding_dim: ``D``.
        init_scale: vectors start uniform in ``[-init_scale, init_scale]`` (±0.05, like tables).

    Shapes: ``[B, n_dense] -> [B, n_dense, D]``.
    """

    def __init__(self, num_dense: int, embedding_dim: int, init_scale: float = DEFAULT_INIT_SCALE) -> None:
        super().__init__()
        self.num_dense = int(num_dense)
        self.embedding_dim = int(embedding_dim)
        self.init_scale = float(init_scale)
        self.weight = nn.Parameter(torch.empty(self.num_dense, self.embedding_dim))  # [n, D]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    def forward(self, dense: Tensor) -> Tensor:
        """``[B, n_dense] -> [B, n_dense, D]``."""
        return dense.unsqueeze(-1) * self.weight
