"""Every docstring example in the package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import metajax

MODULES = sorted(m.name for m in pkgutil.walk_packages(metajax.__path__, "metajax."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:  # an optional extra, e.g. torch for metajax.bench_torch
        if (err.name or "").split(".")[0] == "metajax":
            raise
        pytest.skip(f"{name} needs the optional package {err.name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
