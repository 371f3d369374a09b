"""Safe writes: datasets are staged and swapped in; records and checkpoints are atomic.

A failed ``prepare``/``generate`` leaves the previous dataset byte-identical and no temporary
directory; ``atomic_write_json``/``atomic_torch_save`` refuse non-regular targets and name the
path on write failures (``docs/architecture.md`` §5, §4).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimembed.ctr.trainer import atomic_torch_save, atomic_write_json
from slimembed.datasets import DataFormatError, generate, prepare_criteo, synthetic
from slimembed.datasets import parallel

SAMPLE = Path(__file__).resolve().parent / "data" / "criteo_kaggle_head1999.tsv"


def _files(root: Path) -> dict:
    """Every file's bytes (report.json included: a failed run must not touch it either)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(d: Path) -> list:
    return sorted(p.name for p in d.parent.iterdir())


def _bad_late_row(tmp_path: Path, line: int = 1500) -> Path:
    """The sample with one wrong-column-count row well after the first chunk."""
    lines = SAMPLE.read_text().splitlines()
    lines[line] = "\t".join(lines[line].split("\t")[:-1])
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_prepare_keeps_previous_dataset(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(parallel, "PART_BYTES", 40_000)
    d = tmp_path / "ds"
    prepare_criteo(SAMPLE, d, min_count=2, chunk_rows=300)
    before = _files(d)
    assert "schema.json" in before and "train/sparse.npy" in before
    bad = _bad_late_row(tmp_path)
    with pytest.raises(DataFormatError, match="line 1501"):
        prepare_criteo(bad, d, min_count=1, chunk_rows=300, on_bad_row="error", workers=workers)
    assert _files(d) == before
    assert _siblings(d) == ["bad.txt", "ds"]  # no ds.tmp-*/ds.old-* left behind


def test_interrupted_prepare_keeps_previous_dataset(tmp_path, monkeypatch):
    from slimembed.datasets import writer

    d = tmp_path / "ds"
    prepare_criteo(SAMPLE, d, min_count=2, chunk_rows=300)
    before = _files(d)
    calls = []
    real_add = writer.ProcessedWriter.add

    def add(self, chunk, split):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_add(self, chunk, split)

    monkeypatch.setattr(writer.ProcessedWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo(SAMPLE, d, min_count=1, chunk_rows=300)
    assert len(calls) == 3
    assert _files(d) == before and _siblings(d) == ["ds"]


def test_successful_reprepare_replaces_and_keeps_foreign_files(tmp_path):
    d = tmp_path / "ds"
    prepare_criteo(SAMPLE, d, min_count=2, chunk_rows=300, vocabulary_free=False)
    assert (d / "vocab").is_dir()
    (d / "notes.txt").write_text("mine")  # not a dataset file: kept across the swap
    first = _files(d)
    rep = prepare_criteo(SAMPLE, d, chunk_rows=300, vocabulary_free=True, max_rows=1000)
    after = _files(d)
    assert after != first
    assert not (d / "vocab").exists()  # the old dataset's vocabulary went with it
    assert (d / "notes.txt").read_text() == "mine"
    assert rep.out_dir == str(d) and sum(rep.rows.values()) == 1000
    assert '"vocabulary_free": true' in (d / "schema.json").read_text()
    assert _siblings(d) == ["ds"]
    # the same bytes as a prepare into a fresh directory
    fresh = tmp_path / "fresh"
    prepare_criteo(SAMPLE, fresh, chunk_rows=300, vocabulary_free=True, max_rows=1000)
    def strip(fs: dict) -> dict:
        return {k: v for k, v in fs.items() if k not in ("report.json", "notes.txt")}

    assert strip(_files(fresh)) == strip(after)


def test_prepare_input_inside_output_dir_survives(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    inp = d / "train.txt"
    inp.write_bytes(SAMPLE.read_bytes())
    prepare_criteo(inp, d, min_count=2, chunk_rows=700)
    assert inp.read_bytes() == SAMPLE.read_bytes() and (d / "schema.json").exists()


def _fail_on_chunk(monkeypatch, n: int, exc: BaseException) -> list:
    calls: list = []
    real = synthetic.random_split

    def split(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(synthetic, "random_split", split)
    return calls


@pytest.mark.parametrize("fmt,exc", [("processed", RuntimeError("disk gone")),
                                     ("tsv", KeyboardInterrupt())])
def test_failed_generate_keeps_previous_dataset(tmp_path, monkeypatch, fmt, exc):
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 1000)
    kw = dict(rows=4000, scale=0.002, seed=1, format=fmt)
    d = tmp_path / "g"
    generate(d, **kw)
    before = _files(d)
    assert ("schema.json" if fmt == "processed" else "train.txt") in before
    calls = _fail_on_chunk(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        generate(d, **{**kw, "seed": 2})
    assert len(calls) == 3
    assert _files(d) == before and _siblings(d) == ["g"]
    # a successful run replaces it
    monkeypatch.undo()
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 1000)
    rep = generate(d, **{**kw, "seed": 2})
    assert _files(d) != before and _siblings(d) == ["g"]
    if fmt == "tsv":
        assert rep.files == [str(d / "train.txt")]


def test_generate_refuses_file_as_output(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(f)):
        generate(f, rows=100, scale=0.002)
    assert f.read_text() == "x"


# -- records and checkpoints ---------------------------------------------------------------------

def test_atomic_write_json_replaces_regular_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    atomic_write_json({"a": 1}, p)
    assert p.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_atomic_write_json_refuses_directory(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    (d / "keep").write_text("k")
    with pytest.raises(ValueError, match=f"{d}.*directory"):
        atomic_write_json({"a": 1}, d)
    assert d.is_dir() and (d / "keep").read_text() == "k"
    assert sorted(os.listdir(tmp_path)) == ["rec"]


def test_atomic_writes_refuse_fifo(tmp_path):
    f = tmp_path / "pipe"
    os.mkfifo(f)
    with pytest.raises(ValueError, match=f"{f}.*FIFO"):
        atomic_write_json({"a": 1}, f)
    with pytest.raises(ValueError, match=f"{f}.*FIFO"):
        atomic_torch_save({"a": 1}, f)
    import stat

    assert stat.S_ISFIFO(os.stat(f).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_write_into_read_only_dir_names_path(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    old = d / "result.json"
    old.write_text("old")
    d.chmod(0o500)
    try:
        with pytest.raises(OSError) as e:
            atomic_write_json({"a": 1}, old)
        assert e.value.filename == str(old) and "Permission denied" in str(e.value)
        assert str(old) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(OSError) as e2:
            atomic_torch_save({"a": 1}, d / "last.pt")
        assert e2.value.filename == str(d / "last.pt")
        assert old.read_text() == "old" and sorted(os.listdir(d)) == ["result.json"]
    finally:
        d.chmod(0o700)


def test_failed_serialisation_leaves_old_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json({"a": object()}, p)
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_disk_full_names_path_and_cause(tmp_path, monkeypatch):
    import errno

    from slimembed.ctr import safe_io

    p = tmp_path / "last.pt"
    p.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_io.os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_torch_save({"a": 1}, p)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert "No space left on device" in str(e.value) and str(p) in str(e.value)
    assert p.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_train_refuses_an_unwritable_output_before_training(tmp_path, capsys):
    """`slimembed train` checks the record's path first: a directory there fails in one line
    naming it, and nothing is trained."""
    from slimembed.ctr.cli import main
    from slimembed.datasets import generate

    generate(str(tmp_path / "d"), rows=500, scale=0.001)
    out = tmp_path / "taken"
    out.mkdir()
    rc = main(["train", "--set", f"data.path={tmp_path / 'd'}", "--set", f"output={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and str(out) in err and "not a regular file" in err and "Traceback" not in err
