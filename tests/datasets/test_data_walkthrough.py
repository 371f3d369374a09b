"""docs/data.md's walk-through runs as written: its python block, its files and its commands."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "data.md"
_STEP = re.compile(r"<!-- walkthrough: (python|shell|file (\S+)) -->\n```\w*\n(.*?)```", re.S)


def steps():
    return [(m.group(1).split()[0], m.group(2), m.group(3)) for m in _STEP.finditer(DOC.read_text())]


def test_the_page_has_every_step():
    kinds = [k for k, _, _ in steps()]
    assert kinds == ["python", "file", "shell", "file", "shell"]


def test_walkthrough_prepares_and_trains(tmp_path, monkeypatch, capsys):
    from slimembed.ctr.cli import main

    monkeypatch.chdir(tmp_path)
    for kind, name, body in steps():
        if kind == "python":
            exec(compile(body, str(DOC), "exec"), {"ROOT": str(ROOT)})
        elif kind == "file":
            (tmp_path / name).write_text(body)
        else:
            for line in body.strip().splitlines():
                argv = shlex.split(line)
                assert argv[0] == "slimembed"
                assert main(argv[1:]) in (0, None), line
    import json

    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["memory"]["table_bytes"] <= rec["memory"]["full_bytes"] / 4
    assert 0.0 < rec["metrics"]["test"]["auc"] < 1.0
    schema = json.loads((tmp_path / "data" / "schema.json").read_text())
    assert [c["name"] for c in schema["categorical"]] == ["city", "device", "hour_of_day", "weekday", "tags"]
