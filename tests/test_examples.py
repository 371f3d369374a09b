"""The examples run on tiny data, so they never rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quickstart(tmp_path):
    out = run_example("quickstart.py", "--rows", "20000", "--hidden", "16", "--out", str(tmp_path / "d"))
    assert "test AUC" in out and "vs full fp32" in out


def test_torchrec_dlrm():
    out = run_example("torchrec_dlrm.py", "--rows", "10000", "--method", "hash", "--compression", "10", "--steps", "3")
    assert "torchrec DLRM_DCN with slimembed table 'hash'" in out
    assert "(10.00x)" in out


def test_replace_embeddingbag():
    out = run_example("replace_embeddingbag.py", "--items", "5000", "--steps", "3")
    assert "nn.EmbeddingBag:" in out and "QREmbeddingBag:" in out
    ratio = float(out.rsplit("holds the model in ", 1)[1].split("x")[0])
    assert ratio > 5


def reproduce(name: str):
    """A script of examples/reproduce/ as a module, to drive in-process through its main(argv)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", ROOT / "examples" / "reproduce" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_device_parity_smoke(capsys):
    # On a CPU-only machine this compares the CPU with itself: it checks the script runs for
    # every method (the real check is `--device cuda` on a GPU machine).
    assert reproduce("device_parity").main(["--device", "cpu", "--batch-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "parity: 0 failure(s)" in out
    for method in ("full", "hash", "qr", "robe", "tt", "dhe", "unified", "optembed"):
        assert f"| {method} | forward |" in out


def test_calibrate_synthetic(tmp_path, capsys):
    cal = reproduce("calibrate_synthetic")
    out_dir = tmp_path / "cal"
    args = ["--rows", "6000", "--hidden", "8", "--folds", "10", "--threads", "1", "--out", str(out_dir),
            "--knob", "signal_gamma=0.25"]
    assert cal.main(args) == 0
    out = capsys.readouterr().out
    assert "| fold10_min0 |" in out and "| lr |" in out and "full DeepFM vs teacher" in out
    meta = (out_dir / "summary.md").read_text()
    assert "profile v2" in meta and "signal_gamma 0.25" in meta
    # resumable: a second call reuses the records instead of training again
    assert cal.main(args[:-2]) == 0
    again = capsys.readouterr().out
    assert "[calibrate] training" not in again and "| fold10_min0 |" in again
