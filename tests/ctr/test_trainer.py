"""Trainer, metrics and checkpoint tests on a tiny planted CTR problem (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
from typing import Iterator, List

import numpy as np
import pytest
import torch
from torch import nn
from sklearn.metrics import log_loss, roc_auc_score

from slimembed.ctr.metrics import StreamingEvaluator, auc, evaluate, logloss
from slimembed.ctr.optim import EMBEDDING_OPTIMIZERS, table_kwargs_for
from slimembed.ctr.trainer import TrainConfig, Trainer, seed_everything, train_and_evaluate
from slimembed.datasets import Batch
from slimembed.tables import Feature, FullTable

CARDS = [40, 25, 12, 6]
N_DENSE = 3


# ---------------------------------------------------------------------------------- toy problem
def make_data(n: int, seed: int):
    """Planted logistic teacher: per-value effects + dense effects."""
    g = torch.Generator().manual_seed(seed)
    teacher_g = torch.Generator().manual_seed(999)  # same teacher for train and val
    effects = [torch.randn(c, generator=teacher_g) * 1.5 for c in CARDS]
    a = torch.randn(N_DENSE, generator=teacher_g)
    sparse = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], 1)
    dense = torch.randn(n, N_DENSE, generator=g)
    logit = sum(effects[f][sparse[:, f]] for f in range(len(CARDS))) + dense @ a - 0.5
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return dense, sparse, labels


class TinyLoader:
    """Block-free toy loader with the make_loader contract: shuffle by (seed, epoch), set_epoch."""

    def __init__(self, data, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        self.dense, self.sparse, self.labels = data
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield Batch(self.dense[idx], self.sparse[idx], self.labels[idx])


class TinyCTR(nn.Module):
    """First-order + FM-free MLP over a FullTable, with dropout (so RNG state matters)."""

    def __init__(self, sparse: bool = False, dim: int = 4) -> None:
        super().__init__()
        feats = [Feature(f"C{i}", c, dim) for i, c in enumerate(CARDS)]
        self.table = FullTable(feats, sparse=sparse)
        self.first = FullTable([Feature(f.name, f.num_embeddings, 1) for f in feats], sparse=sparse)
        self.mlp = nn.Sequential(nn.Linear(len(CARDS) * dim + N_DENSE, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def embedding_tables(self) -> List[nn.Module]:
        return [self.table, self.first]

    def dense_parameters(self):
        return list(self.mlp.parameters())

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        e = self.table(sparse).flatten(1)
        return self.mlp(torch.cat([e, dense], 1)).squeeze(1) + self.first(sparse).sum((1, 2))


def make_model(opt: str = "adam", seed: int = 0) -> TinyCTR:
    seed_everything(seed)
    return TinyCTR(**table_kwargs_for(opt))


@pytest.fixture(scope="module")
def loaders():
    train = TinyLoader(make_data(2048, 1), 128, shuffle=True, seed=3)
    val = TinyLoader(make_data(1024, 2), 512)
    return train, val


def base_cfg(tmp_path, name: str, **kw) -> TrainConfig:
    d = dict(epochs=2, lr=1e-2, seed=5, early_stop_patience=None, restore_best=False, progress=False,
             log_every=4, checkpoint_dir=str(tmp_path / name))
    d.update(kw)
    return TrainConfig(**d)


def params_and_states(trainer: Trainer):
    params = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return params, trainer.optimizer.state_dict()


def assert_same_optimizer_state(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name]["state"], b[name]["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for pid in sa:
            for k, v in sa[pid].items():
                w = sb[pid][k]
                if torch.is_tensor(v):
                    assert torch.equal(v, w), (name, pid, k)
                else:
                    assert v == w, (name, pid, k)


# ---------------------------------------------------------------------------------- metrics
def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n, decimals in [(2000, 1), (500, 2), (37, 0)]:
        y = rng.integers(0, 2, n)
        s = np.round(rng.normal(size=n) + 0.5 * y, decimals)  # many ties
        assert len(np.unique(s)) < n
        assert auc(torch.tensor(y), torch.tensor(s)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    y = np.array([0, 1, 0, 1, 1])
    assert auc(y, np.zeros(5)) == pytest.approx(0.5)  # all tied
    assert auc(y, np.array([0.0, 1.0, 0.0, 1.0, 1.0])) == 1.0
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))  # one class


def test_logloss_and_streaming_evaluator_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000).astype(np.float32)
    z = rng.normal(size=1000).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    assert logloss(y, z) == pytest.approx(log_loss(y, p), rel=1e-9)
    ev = StreamingEvaluator()
    for i in range(0, 1000, 300):  # uneven batches
        ev.update(torch.tensor(z[i : i + 300]), torch.tensor(y[i : i + 300]))
    out = ev.compute()
    assert out["num_samples"] == 1000
    assert out["auc"] == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    assert out["logloss"] == pytest.approx(log_loss(y, p), rel=1e-6)


def test_evaluate_over_loader_restores_train_mode(loaders):
    _, val = loaders
    model = make_model()
    model.train()
    res = evaluate(model, val)
    assert model.training and res["num_samples"] == 1024 and 0.0 <= res["auc"] <= 1.0


# ---------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("opt", EMBEDDING_OPTIMIZERS)
def test_two_epochs_equal_one_epoch_plus_resume(tmp_path, loaders, opt):
    train, val = loaders
    cfg = base_cfg(tmp_path, "straight", embedding_optimizer=opt)
    straight = Trainer(make_model(opt), train, val, cfg)
    straight.fit()
    p_a, o_a = params_and_states(straight)

    first = Trainer(make_model(opt), train, val, cfg.replace(epochs=1, checkpoint_dir=str(tmp_path / "r")))
    first.fit()
    p_mid, _ = params_and_states(first)
    torch.manual_seed(12345)  # disturb every RNG: the checkpoint must restore them
    np.random.seed(7)
    resumed = Trainer(make_model(opt, seed=77), train, val,
                      cfg.replace(checkpoint_dir=str(tmp_path / "r"), resume=True))
    resumed.fit()
    p_b, o_b = params_and_states(resumed)

    assert resumed.state.step == straight.state.step == 2 * len(train)
    assert any(not torch.equal(p_mid[k], p_a[k]) for k in p_a)  # the 2nd epoch did train
    for k in p_a:
        assert torch.equal(p_a[k], p_b[k]), k
    assert_same_optimizer_state(o_a, o_b)
    assert [h["val_auc"] for h in straight.history] == [h["val_auc"] for h in resumed.history]


def test_mid_epoch_resume_with_eval_every(tmp_path, loaders):
    train, val = loaders
    cfg = base_cfg(tmp_path, "s", embedding_optimizer="rowwise_adagrad", eval_every=5)
    straight = Trainer(make_model("rowwise_adagrad"), train, val, cfg)
    straight.fit()
    stop_at = len(train) + 7  # inside the second epoch
    part = Trainer(make_model("rowwise_adagrad"), train, val,
                   cfg.replace(max_steps=stop_at, checkpoint_dir=str(tmp_path / "m")))
    part.fit()
    assert part.state.step == stop_at and part.state.batch_in_epoch == 7 and part.state.epoch == 1
    torch.manual_seed(1)
    resumed = Trainer(make_model("rowwise_adagrad", seed=3), train, val,
                      cfg.replace(checkpoint_dir=str(tmp_path / "m"), resume=True))
    resumed.fit()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_checkpoint_is_written_atomically(tmp_path, loaders):
    train, val = loaders
    cfg = base_cfg(tmp_path, "ck", epochs=1)
    Trainer(make_model(), train, val, cfg).fit()
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["last.pt"]  # no temp file left behind
    ck = torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert ck["train_state"]["epoch"] == 1 and ck["loader_epoch"] == 1
    assert {"model", "optimizer", "rng", "best_state", "config"} <= set(ck)


# ---------------------------------------------------------------------------------- early stopping
class ScriptedTrainer(Trainer):
    """Validation AUC follows a script; snapshots the weights seen at each evaluation."""

    def __init__(self, *a, aucs=(), **kw):
        super().__init__(*a, **kw)
        self.aucs = list(aucs)
        self.snapshots: List[dict] = []

    def evaluate(self, loader=None, max_batches=None):
        self.snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return {"auc": self.aucs[len(self.snapshots) - 1], "logloss": 0.5, "num_samples": 1}


def test_early_stopping_stops_after_patience_and_restores_best(tmp_path, loaders):
    train, val = loaders
    cfg = base_cfg(tmp_path, "es", epochs=10, early_stop_patience=2, restore_best=True)
    t = ScriptedTrainer(make_model(), train, val, cfg, aucs=[0.60, 0.70, 0.65, 0.69, 0.99, 0.99])
    history = t.fit()
    assert len(history) == 4 and t.state.stopped_early and t.state.epoch == 4
    assert t.state.best_auc == 0.70 and t.state.best_epoch == 2
    final = t.model.state_dict()
    assert all(torch.equal(final[k], t.snapshots[1][k]) for k in final)  # best = 2nd evaluation
    assert any(not torch.equal(final[k], t.snapshots[3][k]) for k in final)
    # A resumed trainer sees the stop and keeps the best weights too.
    again = Trainer(make_model(seed=9), train, val, cfg.replace(resume=True))
    again.fit()
    assert again.state.step == t.state.step
    assert all(torch.equal(again.model.state_dict()[k], t.snapshots[1][k]) for k in final)


def test_no_early_stop_without_patience(tmp_path, loaders):
    train, val = loaders
    cfg = base_cfg(tmp_path, "np", epochs=3, early_stop_patience=None)
    t = ScriptedTrainer(make_model(), train, val, cfg, aucs=[0.7, 0.6, 0.5])
    t.fit()
    assert len(t.history) == 3 and not t.state.stopped_early


# ---------------------------------------------------------------------------------- record, seeds
def test_train_and_evaluate_writes_json_record(tmp_path, loaders):
    train, val = loaders
    out = tmp_path / "res.json"
    cfg = base_cfg(tmp_path, "rec", epochs=2, embedding_optimizer="sparse_adam", early_stop_patience=1)
    rec = train_and_evaluate(make_model("sparse_adam"), train, val, val, config=cfg, output_path=out)
    on_disk = json.loads(out.read_text())
    for key in ["config", "model", "metrics", "best", "memory", "wall_time_s", "train_time_s",
                "samples_per_s", "train_samples", "steps", "epochs_completed", "stopped_early",
                "history", "versions"]:
        assert key in on_disk, key
    assert on_disk["config"]["embedding_optimizer"] == "sparse_adam"
    for key in ["param_bytes", "buffer_bytes", "optimizer_bytes", "total_bytes", "table_bytes",
                "full_bytes", "ratio"]:
        assert key in on_disk["memory"], key
    n_params = sum(p.numel() for p in make_model().parameters())
    assert on_disk["memory"]["optimizer_bytes"] >= 2 * 4 * n_params  # Adam moments, both optimizers
    assert 0.5 < on_disk["metrics"]["test"]["auc"] <= 1.0
    assert on_disk["samples_per_s"] > 0 and on_disk["train_samples"] == 2 * 2048
    assert len(on_disk["history"]) == 2 and "val_auc" in on_disk["history"][0]
    assert rec["metrics"]["test"]["auc"] == on_disk["metrics"]["test"]["auc"]
    assert on_disk["metrics"]["val"]["auc"] == pytest.approx(on_disk["best"]["val_auc"])


def test_seeds_make_two_runs_identical(tmp_path, loaders):
    train, val = loaders

    def run(name: str, seed: int):
        cfg = base_cfg(tmp_path, name, epochs=1, seed=seed, checkpoint_dir=None)
        model = make_model("rowwise_adagrad", seed=0)  # same init every time
        torch.rand(7)  # the trainer must seed dropout itself, whatever the RNG state
        Trainer(model, train, val, cfg.replace(embedding_optimizer="rowwise_adagrad")).fit()
        return model.state_dict()

    a, b, c = run("a", 11), run("b", 11), run("c", 12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed does matter (dropout)


def test_learns_planted_problem(tmp_path, loaders):
    train, val = loaders
    t = Trainer(make_model("adam"), train, val, base_cfg(tmp_path, "l", epochs=3, checkpoint_dir=None))
    hist = t.fit()
    assert hist[-1]["val_auc"] > 0.75
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_config_round_trip_and_validation():
    cfg = TrainConfig(epochs=3, embedding_optimizer="rowwise_adagrad")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="embedding_optimizer"):
        TrainConfig(embedding_optimizer="sgd")


def test_with_library_deepfm_and_table_factory(tmp_path, loaders):
    """The real DeepFM with tables built by table_factory_for(config.embedding_optimizer)."""
    try:
        from slimembed.ctr.models import make_model as make_ctr_model
    except Exception as e:  # pragma: no cover - models package not importable
        pytest.skip(f"slimembed.ctr.models unavailable: {e}")
    from slimembed.ctr.optim import table_factory_for

    train, val = loaders
    cfg = base_cfg(tmp_path, "deepfm", epochs=1, embedding_optimizer="rowwise_adagrad", checkpoint_dir=None)
    seed_everything(0)
    feats = [Feature(f"C{i}", c, 8) for i, c in enumerate(CARDS)]
    model = make_ctr_model("deepfm", feats, N_DENSE, table_factory=table_factory_for(cfg.embedding_optimizer),
                           hidden_units=[16])
    assert all(t.sparse for t in model.embedding_tables())
    rec = train_and_evaluate(model, train, val, config=cfg)
    assert rec["metrics"]["val"]["auc"] > 0.6
