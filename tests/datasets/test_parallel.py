"""Multi-process preprocessing and TSV generation give the same bytes as one process."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from slimembed.datasets import DataFormatError, generate, prepare_criteo
from slimembed.datasets import parallel
from slimembed.datasets.textio import count_lines, iter_line_chunks, line_aligned_cuts

N = 1999


def _files(root: Path) -> dict:
    """Every output file's bytes except report.json (it holds timings)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def _same_output(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, differ


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of ~40 KB, so the 1,999-row sample is cut into about 12 byte ranges."""
    monkeypatch.setattr(parallel, "PART_BYTES", 40_000)


@pytest.mark.parametrize("kw", [
    {"min_count": 2},
    {"vocabulary_free": True},
    {"dense": "bucket", "min_count": 1},
    {"max_rows": 1234, "min_count": 1},
])
def test_workers_same_bytes(tmp_path, sample_path, small_parts, kw):
    one = prepare_criteo(sample_path, tmp_path / "w1", workers=1, chunk_rows=300, **kw)
    two = prepare_criteo(sample_path, tmp_path / "w2", workers=2, chunk_rows=300, **kw)
    _same_output(tmp_path / "w1", tmp_path / "w2")
    assert two.rows == one.rows and two.rows_read == one.rows_read
    assert two.oov_rate == one.oov_rate and two.vocabulary_sizes == one.vocabulary_sizes
    assert two.label_rate == one.label_rate
    assert one.options["workers"] == 1 and two.options["workers"] == 2
    assert not (tmp_path / "w2" / ".parts").exists()


def test_workers_several_files_by_file_and_gzip(tmp_path, sample_path, small_parts):
    lines = sample_path.read_text().splitlines(keepends=True)
    a, b, c = tmp_path / "day_0", tmp_path / "day_1.gz", tmp_path / "day_2"
    a.write_text("".join(lines[:900]))
    b.write_bytes(gzip.compress("".join(lines[900:1500]).encode()))
    c.write_text("".join(lines[1500:]).rstrip("\n"))  # no final newline
    one = prepare_criteo([a, b, c], tmp_path / "w1", split="by_file", min_count=1, workers=1)
    two = prepare_criteo([a, b, c], tmp_path / "w2", split="by_file", min_count=1, workers=3)
    _same_output(tmp_path / "w1", tmp_path / "w2")
    assert two.rows["train"] == 1500 and two.rows_read == N


def _bad_file(tmp_path, sample_path):
    lines = sample_path.read_text().splitlines()
    f = lines[16].split("\t")
    f[5] = "abc"
    lines[16] = "\t".join(f)
    lines[4] = "\t".join(lines[4].split("\t")[:-1])
    f = lines[1799].split("\t")
    f[0] = "2"
    lines[1799] = "\t".join(f)
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_workers_bad_rows(tmp_path, sample_path, small_parts):
    p = _bad_file(tmp_path, sample_path)
    one = prepare_criteo(p, tmp_path / "w1", on_bad_row="skip", workers=1, min_count=2)
    two = prepare_criteo(p, tmp_path / "w2", on_bad_row="skip", workers=2, min_count=2)
    _same_output(tmp_path / "w1", tmp_path / "w2")
    assert two.bad_rows == one.bad_rows == {"wrong_column_count": 1, "dense_not_integer": 1,
                                             "bad_label": 1}
    # the same messages; their order follows chunking (by reason within a chunk) in both paths
    assert sorted(two.bad_row_examples) == sorted(one.bad_row_examples)
    assert two.rows_read == N and sum(two.rows.values()) == N - 3
    # error mode: the first bad row of the input, as with one process
    with pytest.raises(DataFormatError) as e1:
        prepare_criteo(p, tmp_path / "e1", workers=1)
    with pytest.raises(DataFormatError) as e2:
        prepare_criteo(p, tmp_path / "e2", workers=2)
    assert str(e1.value) == str(e2.value) and "line 5" in str(e2.value)


def test_workers_argument_checked(tmp_path, sample_path):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        prepare_criteo(sample_path, tmp_path / "x", workers=0)
    assert parallel.resolve_workers(None) >= 1


def test_line_aligned_cuts_and_counts(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"a\nbb\nccc\n\ndddd\nlast")  # 6 lines, the last without a newline
    for pieces in (1, 2, 3, 7, 50):
        cuts = line_aligned_cuts(p, pieces)
        data = p.read_bytes()
        assert cuts[0] == 0 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
        assert all(data[c - 1:c] == b"\n" for c in cuts[1:-1])
        assert sum(count_lines(p, (a, b)) for a, b in zip(cuts[:-1], cuts[1:])) == 6
        got, first = [], 1
        for a, b in zip(cuts[:-1], cuts[1:]):
            chunks = list(iter_line_chunks(p, 2, byte_range=(a, b), first_line=first))
            assert [c.first_line for c in chunks] == list(range(first, first + 2 * len(chunks), 2))
            got += [c.data for c in chunks]
            first += count_lines(p, (a, b))
        assert b"".join(got) == data + b"\n"
    assert count_lines(p) == 6


def test_generate_tsv_workers_same_bytes(tmp_path):
    kw = dict(rows=150_000, scale=0.002, seed=3, format="tsv")
    r1 = generate(tmp_path / "g1", workers=1, **kw)
    r2 = generate(tmp_path / "g2", workers=2, **kw)
    assert (tmp_path / "g1" / "train.txt").read_bytes() == (tmp_path / "g2" / "train.txt").read_bytes()
    assert r1.teacher_auc == r2.teacher_auc and r1.rows_per_split == r2.rows_per_split
    r3 = generate(tmp_path / "g3", workers=2, num_files=2, **kw)
    assert ((tmp_path / "g3" / "day_0").read_bytes() + (tmp_path / "g3" / "day_1").read_bytes()
            == (tmp_path / "g1" / "train.txt").read_bytes())
    assert r3.files == [str(tmp_path / "g3" / "day_0"), str(tmp_path / "g3" / "day_1")]


def test_cli_workers(tmp_path, sample_path, small_parts, capsys):
    from slimembed.ctr.cli import main

    assert main(["prepare", str(sample_path), "--out", str(tmp_path / "c1"), "--workers", "1"]) == 0
    assert main(["prepare", str(sample_path), "--out", str(tmp_path / "c2"), "--workers", "2"]) == 0
    _same_output(tmp_path / "c1", tmp_path / "c2")
    assert main(["prepare", str(sample_path), "--out", str(tmp_path / "c3"), "--format", "avazu",
                 "--workers", "2"]) == 2
    assert "--workers applies to --format criteo only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers applies to format='tsv' only"):
        generate(tmp_path / "g", rows=100, workers=2)
