"""Test-wide settings (strict rank promotion as equinox's tests; an optional compilation cache) and where data is."""

from __future__ import annotations

import os
from pathlib import Path

# A persistent compilation cache shared by the test workers and the processes they start
# compiles each small program once (the CLI's tiny runs, the contract suite's learners): opt in
# with JAX_COMPILATION_CACHE_DIR=DIR (on a 2-core machine the suite took 15 minutes with it, 19
# without in a run that also held the bench extra's tests). It is off by default: a CI worker once
# died of a segmentation fault inside JAX's serialisation of an executable for the cache (jax
# 0.10.2, CPU), which no test needs.
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if CACHE:
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tests check values, not speed: without LLVM's optimisation passes XLA's CPU backend compiles
# about 40 % faster (user CPU, cold cache: 103 -> 64 s for the second-order max-pool Conv4 MAML
# gradient test, 108 -> 61 s for the Transformer training test, 99 -> 64 s for a CLI Omniglot
# run) and computes the same values; the programs run slower, which the suite's small
# configurations do not feel. An XLA_FLAGS that sets the level already is left as it is.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# The in-process CLI tests would set the host allocator to keep freed memory (metajax.app.host_memory),
# made for one workload's steps; a test worker runs hundreds of workloads, so it keeps glibc's
# defaults. tests/app/test_host_memory.py checks both settings in fresh processes.
os.environ.setdefault("METAJAX_MALLOC", "default")
# The same for the CPU convolutions (metajax.app.xla_conv): the flag is read when the backend
# starts, so without this a worker's kernels would depend on whether its first JAX test happened
# to go through the CLI. tests/app/test_xla_conv.py checks both settings in fresh processes.
os.environ.setdefault("METAJAX_XLA_CONV", "default")

import jax  # noqa: E402  (reads the variables above)
import pytest  # noqa: E402

if CACHE:  # also when a plugin imported JAX before this file
    jax.config.update("jax_compilation_cache_dir", CACHE)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
    )
    jax.config.update(
        "jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])
    )
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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's compiled programs, so a test worker's memory does not grow with the suite.

    Without it each of the two workers grew to 6.3 GB of RSS by the end of the suite, keeping the
    programs of every module it had run (3.5 GB with it, and the suite no slower); no test needs a
    program compiled by another module.
    """
    yield
    jax.clear_caches()
