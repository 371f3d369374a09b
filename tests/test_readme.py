"""The README front page: short, its quickstart runs, its method table lists every method."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_front_page_is_short():
    assert len(README.splitlines()) <= 150


def test_quickstart_runs():
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    assert tuple(env["out"].shape) == (2, 16) and tuple(env["emb"].shape) == (2, 2, 16)


def test_method_table_lists_every_method():
    from slimembed.tables import available_methods

    table = README.split("## Methods", 1)[1].split("\n## ", 1)[0]
    first_cells = "\n".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))
    listed = set(re.findall(r"`([a-z0-9_-]+)`", first_cells))
    if "`-e`" in first_cells:  # `optembed`, `-e`, `-d`
        listed |= {"optembed-e", "optembed-d"}
    assert set(available_methods()) <= listed, sorted(set(available_methods()) - listed)


def test_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
