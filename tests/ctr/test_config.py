"""Bad configs through the CLI's one error boundary: exit status 2, one or two lines, no traceback,
and the words that name the culprit (key path and value). All in-process through ``main(argv)``."""

from pathlib import Path

import pytest
import torch
import yaml

from slimembed.ctr.cli import main
from slimembed.ctr.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg") / "data"
    assert main(["generate", "--out", str(d), "--rows", "3000", "--seed", "1", "--scale", "0.0005"]) == 0
    return d


def _write(path: Path, cfg) -> str:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return str(path)


def _train_argv(tmp_path, data_dir, sets):
    cfg = {"data": {"path": str(data_dir), "batch_size": 256}, "model": {"name": "deepfm", "hidden_units": [8]},
           "table": {"method": "hash", "compression": 4}, "train": {"epochs": 1, "seed": 0},
           "output": str(tmp_path / "r.json")}
    argv = ["train", "--config", _write(tmp_path / "exp.yaml", cfg)]
    for s in sets:
        argv += ["--set", s]
    return argv


def _sweep_argv(tmp_path, data_dir, sets):
    cfg = {"experiment": {"data": {"path": str(data_dir)}, "model": {"name": "lr"}, "train": {"epochs": 1}},
           "methods": ["hash"], "study": {"workdir": str(tmp_path / "sw")}}
    argv = ["sweep", "--config", _write(tmp_path / "sweep.yaml", cfg), "--n-trials", "1"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _benchmark_argv(tmp_path, data_dir, sets):
    cfg = {"experiment": {"data": {"path": str(data_dir)}}, "generate": None, "methods": ["hash"],
           "budgets": [10], "seeds": [0], "out": str(tmp_path / "bm")}
    argv = ["benchmark", "--config", _write(tmp_path / "bm.yaml", cfg), "--dry-run"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _optembed_argv(tmp_path, data_dir, sets):
    cfg = {"data": {"path": str(data_dir)}, "model": {"name": "lr"}, "optembed": {"generations": 1},
           "output": str(tmp_path / "oe")}
    argv = ["optembed", "--config", _write(tmp_path / "oe.yaml", cfg)]
    for s in sets:
        argv += ["--set", s]
    return argv


BUILDERS = {"train": _train_argv, "sweep": _sweep_argv, "benchmark": _benchmark_argv, "optembed": _optembed_argv}

CASES = [
    # (command, --set overrides, words the message must hold)
    ("train", ["train.epochs=1.5"], ["train.epochs", "1.5", "integer"]),
    ("train", ["data.batch_size=100.5"], ["data.batch_size", "100.5", "integer"]),
    ("train", ["data.batch_size=abc"], ["data.batch_size", "'abc'"]),
    ("train", ["train.epochs=0"], ["train.epochs", "0", "greater than or equal to 1"]),
    ("train", ["train.lr=-1"], ["train.lr", "-1", "greater than 0"]),
    ("train", ["train.lr=fast"], ["train.lr", "'fast'"]),
    ("train", ["train.seed=1.5"], ["train.seed", "1.5"]),
    ("train", ["train.resume=maybe"], ["train.resume", "'maybe'", "boolean"]),
    ("train", ["train.embedding_optimizer=sgd"], ["embedding_optimizer", "sgd", "adam"]),
    ("train", ["train.epoch=3"], ["train.epoch", "valid keys", "epochs"]),
    ("train", ["table.bogus=1"], ["table.bogus", "valid keys", "collisionless_max"]),
    ("train", ["table.method=qr", "table.rank=3"], ["table.rank", "'qr'", "operation"]),
    ("train", ["table.compression=abc"], ["table.compression", "'abc'"]),
    ("train", ["table.compression=-5"], ["table.compression", "-5"]),
    ("train", ["table.budget_bytes=1000"], ["budget_bytes or compression"]),
    ("train", ["table.method=nope"], ["table", "'nope'", "unknown table method"]),
    ("train", ["table.first_order={method: hash, bogus: 1}"], ["table.first_order.bogus", "valid keys"]),
    ("train", ["table.seed=x"], ["table.seed", "'x'"]),
    ("train", ["model.hidden_units=abc"], ["model.hidden_units", "'abc'"]),
    ("train", ["model.embedding_dim=0"], ["model.embedding_dim", "0"]),
    ("train", ["model.name=nope"], ["model.name", "'nope'", "deepfm"]),
    ("train", ["model.depth=3"], ["model.depth", "has no options", "hidden_units"]),
    ("train", ["data.fold=0"], ["data.fold", "0"]),
    ("train", ["data.shuffle=[1]"], ["data.shuffle", "[1]"]),
    ("train", ["data.bogus=1"], ["data.bogus", "valid keys", "batch_size"]),
    ("train", ["foo.bar=1"], ["'foo'", "allowed", "train"]),
    ("train", ["output=[1, 2]"], ["output", "[1, 2]"]),
    ("train", ["distributed.sharding=nope"], ["distributed.sharding", "'nope'"]),
    ("train", ["distributed.bogus=1"], ["distributed.bogus", "valid keys", "sharding"]),
    ("train", ["data.path=/no/such/dataset"], ["data.path", "/no/such/dataset", "schema.json"]),
    ("train", ["oops"], ["'oops'", "section.key=value"]),
    ("train", ["table.compression=[1"], ["invalid YAML", "table.compression=[1"]),
    ("sweep", ["study.mode=both"], ["study.mode", "'both'", "'multi' or 'budget'"]),
    ("sweep", ["study.total_trials=2.5"], ["study.total_trials", "2.5"]),
    ("sweep", ["study.bogus=1"], ["study.bogus", "valid keys", "sampler"]),
    ("sweep", ["methods=[nope]"], ["methods", "'nope'"]),
    ("sweep", ["experiment.train.epochs=1.5"], ["experiment.train.epochs", "1.5"]),
    ("sweep", ["spaces={}"], ["'spaces'", "sweep config sections"]),
    ("benchmark", ["budgets=[0.5]"], ["budgets", "0.5", "> 1"]),
    ("benchmark", ["seeds=[0.5]"], ["seeds.0", "0.5"]),
    ("benchmark", ["experiment.train.lr=abc"], ["experiment.train.lr", "'abc'"]),
    ("benchmark", ["grid=1"], ["'grid'", "benchmark config sections"]),
    ("optembed", ["optembed.generations=2.5"], ["optembed.generations", "2.5"]),
    ("optembed", ["optembed.variant=nope"], ["variant", "nope"]),
    ("optembed", ["optembed.bogus=1"], ["optembed.bogus", "valid keys", "generations"]),
    ("optembed", ["train.epochs=0"], ["train.epochs", "0"]),
]


def _check_user_error(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert 1 <= len(err.strip().splitlines()) <= 2, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("command, sets, words", CASES, ids=[f"{c}:{';'.join(s)}" for c, s, _ in CASES])
def test_bad_config_exits_2_naming_the_culprit(tmp_path, data_dir, capsys, command, sets, words):
    _check_user_error(capsys, BUILDERS[command](tmp_path, data_dir, sets), words)


@pytest.mark.parametrize("text, words", [
    ("data: [1, 2\n", ["invalid YAML", "line 2"]),
    ("- a\n- b\n", ["must hold a mapping", "list"]),
    ("data:\n  path: x\n   batch_size: 3\n", ["invalid YAML", "line 3"]),
])
def test_malformed_yaml_files(tmp_path, capsys, text, words):
    _check_user_error(capsys, ["train", "--config", _write(tmp_path / "bad.yaml", text)], words + ["bad.yaml"])


def test_missing_and_directory_config_files(tmp_path, capsys):
    _check_user_error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")], ["nope.yaml", "does not exist"])
    _check_user_error(capsys, ["sweep", "--config", str(tmp_path)], [str(tmp_path), "is a directory"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA build runs device: cuda")
def test_cuda_on_a_cpu_build_says_so(tmp_path, data_dir, capsys):
    _check_user_error(capsys, _train_argv(tmp_path, data_dir, ["train.device=cuda"]),
                      ["train.device", "'cuda'", "no usable CUDA"])


@pytest.mark.parametrize("spec, words", [
    ({"dense": ["a"]}, ["label is required"]),
    ({"label": "y", "lable": "x"}, ["lable", "valid keys", "multi_valued"]),
    ({"label": "y", "dense": 5}, ["dense", "5"]),
    ({"label": "y", "header": "perhaps"}, ["header", "'perhaps'"]),
    ({"label": "y", "derived": {"h": ["hour", "nope"]}}, ["unknown derivation", "nope"]),
])
def test_bad_table_schema_fails_before_reading_data(tmp_path, capsys, spec, words):
    data = tmp_path / "in.csv"
    data.write_text("y,a\n1,2\n")
    schema = _write(tmp_path / "schema.yaml", spec)
    _check_user_error(capsys, ["prepare", str(data), "--out", str(tmp_path / "out"), "--format", "table",
                               "--schema", schema], words)
    assert not (tmp_path / "out").exists()


def test_missing_table_schema_and_input(tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text("y,a\n1,2\n")
    _check_user_error(capsys, ["prepare", str(data), "--out", str(tmp_path / "o"), "--format", "table",
                               "--schema", str(tmp_path / "s.yaml")], ["s.yaml", "does not exist"])
    _check_user_error(capsys, ["prepare", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "o")],
                      ["none.tsv", "does not exist"])


def test_debug_shows_the_traceback(tmp_path, data_dir, capsys):
    argv = _train_argv(tmp_path, data_dir, ["train.epochs=1.5"])
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "train.epochs = 1.5" in err
    assert main(["--debug"] + argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(tmp_path, data_dir, monkeypatch):
    import slimembed.ctr.experiment as experiment

    def broken(cfg, extra=None):
        raise KeyError("a bug, not the user's doing")

    monkeypatch.setattr(experiment, "run_experiment", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(_train_argv(tmp_path, data_dir, []))


def test_scientific_notation_and_typed_values():
    cfg = load_config({"data": {"batch_size": "512"}, "table": {"method": "hash", "compression": "1e9"},
                       "train": {"epochs": 2.0}}, "experiment", check_paths=False)
    assert cfg["table"]["compression"] == 1e9 and cfg["data"]["batch_size"] == 512 and cfg["train"]["epochs"] == 2
    cfg = load_config({"table": {"method": "hash"}}, "experiment", ["table.compression=1e9"], check_paths=False)
    assert cfg["table"]["compression"] == 1e9
    with pytest.raises(ConfigError, match=r"table.compression = 0"):
        load_config({"table": {"method": "hash", "compression": 0}}, "experiment", check_paths=False)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in
                                        [*ROOT.glob("docs/**/*.yaml"), *ROOT.glob("ctr/configs/**/*.yaml"),
                                         *ROOT.glob("examples/**/*.yaml")]))
def test_every_committed_yaml_loads(path):
    """Each committed config validates as its kind (paths to data that may not exist here aside)."""
    raw = yaml.safe_load((ROOT / path).read_text())
    if "study" in raw or "space" in raw:
        kind = "sweep"
    elif "budgets" in raw or "generate" in raw:
        kind = "benchmark"
    elif "optembed" in raw:
        kind = "optembed"
    elif "label" in raw:
        kind = "table_schema"
    else:
        kind = "experiment"
    if kind == "experiment":
        cfg = load_config(ROOT / path, kind, check_paths=False)
    elif kind == "optembed":
        pytest.skip("an OptEmbed config checks its data path")
    else:
        cfg = load_config(ROOT / path, kind)
    assert isinstance(cfg, dict) and cfg
