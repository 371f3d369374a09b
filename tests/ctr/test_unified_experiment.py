"""The Unified Embedding grid (examples/reproduce/unified.py): arms with knobs, resumable runs, summaries."""

import importlib.util
import json
from pathlib import Path

import pytest

REPRODUCE = Path(__file__).resolve().parents[2] / "examples" / "reproduce"
_spec = importlib.util.spec_from_file_location("reproduce_unified", REPRODUCE / "unified.py")
ue = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ue)


def test_parse_arm():
    assert ue.parse_arm("hash") == ("hash", {})
    assert ue.parse_arm("unified[chunks=4, output=pad]") == ("unified", {"chunks": 4, "output": "pad"})
    for bad in ("unified[chunks=4", "unified[chunks]"):
        with pytest.raises(ValueError, match="arm"):
            ue.parse_arm(bad)
    # file names stay plain, and differ per arm
    assert ue.run_name("deepfm", "unified[chunks=4]", 10.0, 0) == "deepfm/unified-chunks4_10x_s0"
    assert ue.run_name("deepfm", "unified", None, 1) == "deepfm/unified_full_s1"


def test_tiny_grid_with_an_arm_resumes(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "ue"), "--rows", "3000", "--scale", "0.0005", "--models", "deepfm",
            "--methods", "hash", "unified[chunks=2]", "--compressions", "10", "--seeds", "0", "--dim", "4",
            "--batch-size", "500", "--threads", "1"]
    assert ue.main(argv) == 0
    out = capsys.readouterr().out
    assert "| deepfm | 10x | hash |" in out and "| deepfm | 10x | unified[chunks=2] |" in out
    rec = json.loads((tmp_path / "ue" / "runs" / "deepfm" / "unified-chunks2_10x_s0.json").read_text())
    assert rec["extra"]["experiment"]["table"] == {"method": "unified", "chunks": 2, "compression": 10.0}
    assert rec["config"]["device"] == "cpu"
    # a rerun trains nothing
    assert ue.main(argv) == 0
    assert "2 finished runs skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="arm"):
        ue.main(["--out", str(tmp_path / "ue"), "--methods", "unified[chunks", "--summary-only"])


def test_data_directory_names_the_profile(tmp_path):
    # v1 keeps the directory name grids made before profiles existed, so they resume on their data
    v1 = ue.ensure_data(tmp_path, 1000, 0.0005, 0, "v1")
    v2 = ue.ensure_data(tmp_path, 1000, 0.0005, 0, "v2")
    assert v1.name == "data_1000_scale0.0005_seed0" and v2.name == "data_1000_scale0.0005_seed0_v2"
    for path, profile in ((v1, "v1"), (v2, "v2")):
        assert json.loads((path / "report.json").read_text())["knobs"]["profile"] == profile


def test_grid_directory_refuses_data_of_another_profile(tmp_path):
    argv = ["--out", str(tmp_path / "ue"), "--rows", "2000", "--scale", "0.0005", "--models", "deepfm",
            "--methods", "hash", "--compressions", "10", "--seeds", "0", "--dim", "4",
            "--batch-size", "500", "--threads", "1"]
    assert ue.main(argv + ["--profile", "v1"]) == 0
    # the same command after the default profile changed must not mix v2 runs into the v1 grid
    with pytest.raises(ValueError, match="profile: 'v1' -> 'v2'"):
        ue.main(argv + ["--profile", "v2"])
