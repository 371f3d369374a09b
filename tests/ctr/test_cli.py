"""The slimembed command: generate -> train from YAML, overrides, and early, clear errors."""

import json

import pytest
import yaml

from slimembed.ctr.cli import main
from slimembed.ctr.experiment import load_config, parse_override


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "data"
    assert main(["generate", "--out", str(d), "--rows", "6000", "--seed", "3", "--scale", "0.001"]) == 0
    return d


def _config(tmp_path, data_dir, **table):
    cfg = {
        "data": {"path": str(data_dir), "batch_size": 512},
        "model": {"name": "deepfm", "hidden_units": [16]},
        "table": {"method": "full", **table},
        "train": {"epochs": 1, "seed": 0},
        "output": str(tmp_path / "result.json"),
    }
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_train_from_yaml_writes_a_record(tmp_path, data_dir, capsys):
    cfg = _config(tmp_path, data_dir)
    assert main(["train", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "test AUC" in out and "teacher AUC" in out
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["metrics"]["test"]["num_samples"] > 0
    assert rec["memory"]["ratio"] == pytest.approx(1.0, rel=1e-3)


def test_override_changes_the_table(tmp_path, data_dir):
    cfg = _config(tmp_path, data_dir)
    assert main(["train", "--config", str(cfg), "--set", "table.method=hash", "--set", "table.compression=10"]) == 0
    rec = json.loads((tmp_path / "result.json").read_text())
    assert 9.0 < rec["memory"]["ratio"] <= 10.5


def test_same_seed_same_result(tmp_path, data_dir):
    cfg = _config(tmp_path, data_dir)
    aucs = []
    for _ in range(2):
        assert main(["train", "--config", str(cfg)]) == 0
        aucs.append(json.loads((tmp_path / "result.json").read_text())["metrics"]["test"]["auc"])
    assert aucs[0] == aucs[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("table.method=nope", "unknown table method 'nope'; available:"),
        ("table.first_order={method: nah}", "table.first_order: unknown table method 'nah'"),
        ("model.name=xdeepfm", "unknown model 'xdeepfm'; available:"),
        ("model.depth=3", "has no options ['depth']"),
        ("train.epoch=3", "unknown TrainConfig keys ['epoch']"),
        ("data.path=/does/not/exist", "not a processed dataset"),
        ("data.bogus=1", "unknown data keys ['bogus']"),
    ],
)
def test_bad_configs_fail_at_once_with_a_clear_message(tmp_path, data_dir, capsys, override, message):
    cfg = _config(tmp_path, data_dir)
    assert main(["train", "--config", str(cfg), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["train", "--config", "/nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parse_override():
    assert parse_override("table.compression=10") == {"table": {"compression": 10}}
    assert parse_override("model.hidden_units=[8, 4]") == {"model": {"hidden_units": [8, 4]}}
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("oops")


def test_prepare_real_criteo_sample_then_train(tmp_path, capsys):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "data" / "criteo_kaggle_head1999.tsv"
    out = tmp_path / "criteo"
    assert main(["prepare", str(sample), "--out", str(out), "--min-count", "2"]) == 0
    cfg = _config(tmp_path, out)
    assert main(["train", "--config", str(cfg)]) == 0
    assert "test AUC" in capsys.readouterr().out


def test_first_order_table_method(tmp_path, data_dir):
    from slimembed.ctr.experiment import build_experiment

    cfg_path = _config(tmp_path, data_dir, compression=4)
    cfg = load_config(cfg_path, ["table.method=mde", "table.first_order={method: hash}"])
    model = build_experiment(cfg)[0]
    assert type(model.embedding).__name__ == "MDETable"
    assert type(model.first_order).__name__ == "HashTable"
    from slimembed.tables import memory_report

    rep = memory_report(model.first_order)
    assert rep.ratio > 3.5  # inherits compression=4


def test_demo_runs_and_resumes(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--rows", "5000", "--methods", "full", "hash"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teacher AUC" in out and "| hash |" in out
    assert main(args) == 0  # finished methods are reused, not retrained
    out = capsys.readouterr().out
    assert "reusing synthetic data" in out and "hash: reusing" in out


def test_demo_regenerates_stale_data_and_records(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    args = ["demo", "--out", str(out_dir), "--rows", "5000", "--methods", "full"]
    assert main(args) == 0
    capsys.readouterr()
    # data made by another generator profile (here: the marker of an older demo) is not reused,
    # and neither are the records trained on it
    marker = out_dir / "data" / "demo_params.json"
    marker.write_text(json.dumps({"rows": 5000, "seed": 0}))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generating 5,000" in out and "full: reusing" not in out and "training DeepFM" in out


def test_generate_profile_and_knobs(tmp_path, capsys):
    d = tmp_path / "g"
    assert main(["generate", "--out", str(d), "--rows", "3000", "--scale", "0.001", "--profile", "v1",
                 "--knob", "interaction_std=0.1", "--knob", "dense_missing=zero", "--small-field-max", "50"]) == 0
    rep = json.loads((d / "report.json").read_text())
    assert rep["knobs"]["profile"] == "v1" and rep["knobs"]["interaction_std"] == 0.1
    assert rep["knobs"]["dense_missing"] == "zero" and rep["knobs"]["signal_gamma"] == 0.3
    assert rep["knobs"]["small_field_max"] == 50
    capsys.readouterr()
    assert main(["generate", "--out", str(tmp_path / "x"), "--rows", "100", "--knob", "gamma=1"]) != 0
    assert "--knob 'gamma=1'" in capsys.readouterr().err


def test_methods_lists_every_method_and_shows_one(capsys):
    from slimembed.ctr.cli import main
    from slimembed.tables import available_methods

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line.startswith("`")}
    assert rows == set(available_methods())
    assert main(["methods", "hash"]) == 0
    one = capsys.readouterr().out
    assert "budget knob: total_rows" in one and "signed=False" in one and "vocabulary-free: yes" in one
    assert main(["methods", "no_such"]) == 2
    assert "unknown table method 'no_such'" in capsys.readouterr().err
    assert main(["methods", "--json", "qr"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["budget_knob"] == "total_rows"


def test_prepare_prints_a_short_summary_or_json_and_reads_both_split_forms(tmp_path, capsys):
    import json
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "data" / "criteo_kaggle_head1999.tsv"
    assert main(["prepare", str(sample), "--out", str(tmp_path / "a"), "--split", "0.8:0.1:0.1"]) == 0
    out = capsys.readouterr().out
    assert "prepare: 1,999 rows (train" in out and "bad rows: 0" in out and "label rate:" in out
    assert len(out.strip().splitlines()) <= 6 and (tmp_path / "a" / "report.json").exists()
    assert main(["prepare", str(sample), "--out", str(tmp_path / "b"), "--split", "8:1:1", "--json"]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads(capsys.readouterr().out)
    assert a["rows"] == b["rows"]  # 0.8:0.1:0.1 is the same split as 8:1:1
    assert main(["prepare", str(sample), "--out", str(tmp_path / "c"), "--split", "8:x"]) == 2
    assert "--split '8:x'" in capsys.readouterr().err
