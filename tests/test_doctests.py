"""Every docstring example in the installed package runs and prints what it shows.

The modules are found with ``pkgutil.walk_packages`` over ``slimembed`` and imported under their
installed ``slimembed.*`` names (pytest's ``--doctest-modules`` would import ``tables/base.py``
as a top-level ``tables.base``, a second copy of the package). Each module's examples run with
``doctest`` against a few common names (``torch``, ``nn``, ``Feature``, ``make_table``) plus the
module's own globals.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
from typing import Dict, List

import pytest
import torch
from torch import nn

import slimembed
from slimembed.tables import Feature, make_table

# Names the examples may use without importing them (as a reader of the docs would have them).
COMMON_NAMES: Dict[str, object] = {"torch": torch, "nn": nn, "Feature": Feature, "make_table": make_table}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


SUBPACKAGES = ("ctr", "tables", "search", "datasets")


def package_modules() -> List[str]:
    """All ``slimembed.*`` module names, sorted. Walked per subpackage: in an editable install
    the subpackages live in the top-level folders, outside ``slimembed.__path__``."""
    names = {"slimembed"}
    for sub in SUBPACKAGES:
        pkg = importlib.import_module(f"slimembed.{sub}")
        names.add(pkg.__name__)
        names.update(i.name for i in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."))
    return sorted(names)


@pytest.mark.parametrize("module_name", package_modules())
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name, globs={})
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    for test in tests:
        # the module's own globals first, then the common names where the module lacks them
        test.globs = {**COMMON_NAMES, **vars(module)}
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{module_name}: {result.failed} failing example(s)\n{out.getvalue()}"
