"""Test-wide settings (strict rank promotion, as equinox's tests do) and where real data is."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def _candidates() -> list[Path]:
    env = os.environ.get("METAJAX_DATA")
    return ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """A folder holding the Omniglot zips and Vinyals splits (``$METAJAX_DATA``, then ``<repo>/../shared/data``)."""
    for root in _candidates():
        if (root / "omniglot" / "images_background.zip").is_file() or (root / "images_background.zip").is_file():
            return root
    pytest.skip(f"Omniglot data not found in {[str(p) for p in _candidates()]}; set METAJAX_DATA to run these tests.")


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the session, so the PNGs are decoded once."""
    return tmp_path_factory.mktemp("metajax-cache")
