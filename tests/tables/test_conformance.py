"""The conformance matrix: every trainable table method against the table protocol.

One row per method (``ROWS``: small constructor arguments); every check runs on every row. A new
method joins by adding one row (``test_every_method_has_a_row`` fails until it does); the
``toy`` method at the bottom shows that a method needs nothing beyond its own class and a row.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from slimembed.tables import (
    EmbeddingBag, EmbeddingTable, Feature, available_methods, get_table_class, make_table,
    make_table_from_config, memory_report,
)
from slimembed.tables import registry

FEATURES = [Feature("a", 500, 8), Feature("b", 300, 8)]  # above the 200-row "stay full" thresholds

#: method -> small constructor arguments (the table's own names)
ROWS: Dict[str, Dict[str, Any]] = {
    "full": {},
    "hash": {"rows": 40},
    "double_hash": {"rows": 40},
    "qr": {"collisions": 8},
    "compositional": {"num_partitions": 2},
    "robe": {"size": 200},
    "tt": {"rank": 2},
    "dhe": {"hidden": 8, "num_hashes": 16, "num_layers": 2},
    "mde": {"alpha": 0.3},
    "unified": {"rows": 40},
    "multiplexed": {"rows": 40},
    "optembed": {},
    "optembed-e": {},
    "optembed-d": {},
    "int8": {},
    "int16": {},
    "alpt": {},
    "deeplight": {},
    "adaptive": {"top_percent": 0.1, "shared_rows": 8, "num_hot": 3},
    "dpq": {"num_parts": 4, "num_choices": 16},
    "mgqe": {"num_parts": 2, "num_hot": 3},
    "cafe": {"num_buckets": 16, "cold_rows": 32, "threshold": 2},
}


#: method -> extra keyword arguments of the budget check (a budget solves the row's knobs from
#: these: training counts for the frequency-aware methods, fewer codebook entries for mgqe so
#: that 4x fits these small features)
COUNTS = {"a": torch.arange(499) % 37, "b": torch.arange(299) % 11}
BUDGET_KWARGS: Dict[str, Dict[str, Any]] = {
    "adaptive": {"counts": COUNTS},
    "mgqe": {"counts": COUNTS, "num_choices": 32, "low_choices": 8},
}
#: method -> compression of the budget check where 4x is out of the method's reach at D = 8
#: (alpt stores a 4-byte step per row: int8 gives 4D / (D + 4) = 2.67x at most)
BUDGET_COMPRESSION: Dict[str, int] = {"alpt": 2}


def budgeted_bytes(t: EmbeddingTable) -> int:
    """The bytes a budget bounds: ``memory_report``, or the class's own count where it has one
    (``budgeted_bytes()``: e.g. the inference footprint of int8/alpt/deeplight/dpq/mgqe)."""
    own = getattr(t, "budgeted_bytes", None)
    return int(own()) if callable(own) else memory_report(t).total_bytes


def build(method: str, kwargs: Dict[str, Any], features: List[Feature] = FEATURES) -> EmbeddingTable:
    torch.manual_seed(0)
    return make_table(method, features, **kwargs).eval()


def kjt_of(ids: Tensor, names: List[str]) -> KeyedJaggedTensor:
    """One id per bag: ``ids [B, F]`` as a key-major KJT."""
    b, f = ids.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=names, values=ids.t().reshape(-1), lengths=torch.ones(b * f, dtype=torch.long))


def check_dense_and_kjt_agree(method: str, kwargs: Dict[str, Any]) -> None:
    t = build(method, kwargs)
    ids = torch.tensor([[0, 1], [499, 299], [17, 17]])
    dense = t(ids)
    assert dense.shape == (3, 2, 8)
    kt = t(kjt_of(ids, t.feature_names))
    assert torch.allclose(kt.values(), dense.reshape(3, -1), atol=1e-6)


def check_drop_in_parity(method: str, kwargs: Dict[str, Any]) -> None:
    torch.manual_seed(0)
    bag = EmbeddingBag(500, 8, mode="sum", method=method, **kwargs).eval()
    inp = torch.tensor([3, 7, 499, 0, 12])
    offsets = torch.tensor([0, 2, 2])  # bag 1 is empty
    out = bag(inp, offsets)
    rows = bag.table(inp.unsqueeze(1)).squeeze(1)  # the one-feature table run by hand
    ref = torch.stack([rows[0:2].sum(0), torch.zeros(8), rows[2:].sum(0)])
    assert torch.allclose(out, ref, atol=1e-6)
    if method == "full":
        plain = nn.EmbeddingBag(500, 8, mode="sum", _weight=bag.weight.detach().clone())
        assert torch.equal(out, plain(inp, offsets))


def check_budget(method: str, kwargs: Dict[str, Any]) -> None:
    cls = get_table_class(method)
    kw = {k: v for k, v in kwargs.items() if k not in cls.solved_knobs}
    kw.update(BUDGET_KWARGS.get(method, {}))
    full = sum(f.num_embeddings * f.embedding_dim * 4 for f in FEATURES)
    ratio = BUDGET_COMPRESSION.get(method, 4)
    budget = full // ratio
    if cls.budget_knob is None:
        with pytest.raises(ValueError, match="cannot compress|not sized by a budget"):
            make_table(method, FEATURES, compression=ratio, **kw)
        return
    t = make_table(method, FEATURES, compression=ratio, **kw)
    sol = t.budget_solution
    assert budgeted_bytes(t) == sol["bytes"] <= budget
    # within one knob step: one step more would exceed the budget (mde searches every step
    # exhaustively and reports no single next step)
    assert sol["next_bytes"] is None and method == "mde" or sol["next_bytes"] > budget
    for k in cls.solved_knobs if cls.refuse_solved_knobs else ():
        with pytest.raises(TypeError, match=k):
            cls.for_budget(FEATURES, budget, **{k: kwargs.get(k, 1)}, **kw)


def check_config_and_state_round_trip(method: str, kwargs: Dict[str, Any]) -> None:
    t = build(method, kwargs)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = t.config()
    t2 = make_table_from_config(cfg).eval()
    assert t2.config() == cfg
    t2.load_state_dict(t.state_dict())
    ids = torch.tensor([[1, 2], [400, 250]])
    assert torch.equal(t(ids), t2(ids))


def check_bad_ids_name_the_feature(method: str, kwargs: Dict[str, Any]) -> None:
    t = build(method, kwargs)
    bad = torch.tensor([[0, 300]]) if t.needs_range else torch.tensor([[0, -1]])
    with pytest.raises(ValueError, match="'b'"):
        t(bad)


def check_empty_batches(method: str, kwargs: Dict[str, Any]) -> None:
    t = build(method, kwargs)
    assert t(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2, 8)
    empty = KeyedJaggedTensor.from_lengths_sync(
        keys=t.feature_names, values=torch.zeros(0, dtype=torch.long), lengths=torch.zeros(6, dtype=torch.long))
    assert torch.equal(t(empty).values(), torch.zeros(3, 16))
    no_bags = KeyedJaggedTensor.from_lengths_sync(
        keys=t.feature_names, values=torch.zeros(0, dtype=torch.long), lengths=torch.zeros(0, dtype=torch.long))
    assert t(no_bags).values().shape == (0, 16)
    bag = EmbeddingBag(500, 8, mode="mean", method=method, **kwargs).eval()
    out = bag(torch.zeros(0, dtype=torch.long), torch.tensor([0, 0, 0]))
    assert torch.equal(out, torch.zeros(3, 8))


def check_meta_build(method: str, kwargs: Dict[str, Any]) -> None:
    with torch.device("meta"):
        t = make_table(method, FEATURES, **kwargs)
    assert all(p.is_meta for p in t.parameters())
    assert memory_report(t).total_bytes == memory_report(build(method, kwargs)).total_bytes


CHECKS = [check_dense_and_kjt_agree, check_drop_in_parity, check_budget, check_config_and_state_round_trip,
          check_bad_ids_name_the_feature, check_empty_batches, check_meta_build]


def test_every_method_has_a_row() -> None:
    missing = sorted(set(available_methods()) - set(ROWS))
    assert not missing, f"trainable methods without a conformance row (add them to ROWS): {missing}"
    assert set(ROWS) <= set(available_methods())


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("method", sorted(ROWS))
def test_conformance(method: str, check) -> None:
    check(method, ROWS[method])


def test_export_kinds_are_not_trainable_methods() -> None:
    every = available_methods(include_export=True)
    assert {"quantized", "optembed-compact"} <= set(every) - set(available_methods())
    assert all(get_table_class(m).trainable for m in available_methods())


# ---------------------------------------------------------------------------------------------
# Adding a method: one class (in tables/, here in the test) + one row. Nothing else is edited.
# ---------------------------------------------------------------------------------------------
class ToyTable(EmbeddingTable):
    """``id mod rows`` into one ``[rows, D]`` parameter per table (a minimal hashing method)."""

    method = "toy"
    needs_range = False
    budget_knob = "rows"
    solved_knobs = ("rows",)
    search_space = {"init_scale": [0.01, 0.05]}
    supports_sparse = False
    not_shardable_reason = "a toy"

    def __init__(self, features, rows: int = 16, init_scale: float = 0.05) -> None:
        super().__init__(features)
        self.rows, self.init_scale = int(rows), float(init_scale)
        self.weight = nn.Parameter(torch.empty(self.rows, self.features[0].embedding_dim))
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "rows": self.rows, "init_scale": self.init_scale}

    @classmethod
    def knob_range(cls, features, budget_bytes: int, **kwargs: Any) -> Tuple[int, int]:
        return 1, max(1, budget_bytes // (4 * features[0].embedding_dim))

    def embed(self, ids: Tensor, fields: Tensor) -> Tensor:
        return self.weight[torch.remainder(ids + 7 * fields, self.rows)]


@pytest.fixture
def toy_registered():
    registry.register("toy")(ToyTable)
    try:
        yield
    finally:
        del registry._REGISTRY["toy"]


def test_a_new_method_is_one_class_and_one_row(toy_registered) -> None:
    with pytest.raises(AssertionError, match="toy"):  # registered without a row: the matrix says so
        test_every_method_has_a_row()
    ROWS["toy"] = {"rows": 32}
    try:
        test_every_method_has_a_row()
        for check in CHECKS:
            check("toy", ROWS["toy"])
        from slimembed.search.space import allowed_knobs, not_swept_reason, resolve_space

        assert not_swept_reason("toy") is None
        assert allowed_knobs("toy")[1] == ["rows"]
        assert resolve_space(["toy"]).methods["toy"].to_dict()["init_scale"] == [0.01, 0.05]
    finally:
        del ROWS["toy"]
