"""tasks.benchmark: names, class splits and defaults (each benchmark's files are tested under tests/datasets)."""

from __future__ import annotations

import inspect

import pytest

from metajax.tasks import BENCHMARK_SPLITS, benchmark


def test_unknown_benchmark_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError) as err:
        benchmark("imagenet", root=tmp_path)
    message = str(err.value)
    assert message.startswith("name must be one of 'omniglot', 'miniimagenet', 'tiered-imagenet', 'cifar-fs'")
    assert "got 'imagenet'" in message
    with pytest.raises(ValueError, match="split must be one of 'chen'; got 'ravi'"):
        benchmark("cub", split="ravi", root=tmp_path)


def test_every_benchmark_and_the_literature_defaults():
    assert set(BENCHMARK_SPLITS) == {"omniglot", "miniimagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"}
    defaults = {name: p.default for name, p in inspect.signature(benchmark).parameters.items()}
    assert (defaults["ways"], defaults["shots"], defaults["queries"]) == (5, 1, 15)
