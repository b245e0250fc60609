"""The application's CPU convolution setting, checked through the HLO that XLA compiles."""

import json
import os
import subprocess
import sys

import jaxlib
import pytest

from metajax.app import xla_conv

# Sets the flag as the entry points do (optionally after starting the backend), then compiles a
# Conv4-64-sized convolution and counts the YNNPACK fusions in XLA's optimised HLO.
PROBE = """
import json, os, sys
import jax, jax.numpy as jnp
from metajax.app import xla_conv
if sys.argv[1] == "late":
    jnp.ones(1).block_until_ready()
setting = xla_conv.use_xla_convolutions()
nhwc = ("NHWC", "HWIO", "NHWC")
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc))
hlo = conv.lower(jnp.ones((80, 14, 14, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
print(json.dumps({"setting": setting, "again": xla_conv.use_xla_convolutions(), "ynn": hlo.count("__ynn_fusion"),
                  "flags": os.environ.get("XLA_FLAGS", "")}))
"""
TESTED = jaxlib.__version__.startswith(xla_conv.TESTED)


def _probe(value: str | None, when: str = "early", flags: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("METAJAX_XLA_CONV", "XLA_FLAGS")}
    env.update({"JAX_PLATFORMS": "cpu"} | ({} if value is None else {"METAJAX_XLA_CONV": value}))
    if flags is not None:
        env["XLA_FLAGS"] = flags
    done = subprocess.run([sys.executable, "-c", PROBE, when], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not TESTED, reason=f"the flag is added on jaxlib {xla_conv.TESTED} only")
def test_default_takes_convolutions_away_from_ynnpack():
    out = _probe(None)
    assert out == {"setting": "xla", "again": "xla", "ynn": 0, "flags": xla_conv.FLAG}


@pytest.mark.skipif(not TESTED, reason=f"YNNPACK convolutions are jaxlib {xla_conv.TESTED}'s choice")
def test_default_value_keeps_jaxlibs_convolutions():
    out = _probe("default")
    assert out["setting"] == out["again"] == "default" and out["flags"] == ""
    assert out["ynn"] > 0  # so the flag is what removed them above


def test_too_late_or_already_chosen_leaves_xla_flags_alone():
    assert _probe(None, when="late") == {
        "setting": "default",
        "again": "default",
        "ynn": _probe("default")["ynn"],
        "flags": "",
    }
    chosen = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
    out = _probe(None, flags=chosen)
    assert out["setting"] == "default" and out["flags"] == chosen


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("METAJAX_XLA_CONV", "sometimes")  # refused before anything is set
    with pytest.raises(ValueError, match=r"METAJAX_XLA_CONV='sometimes': expected 'xla' \(XLA's own CPU convolutions"):
        xla_conv.use_xla_convolutions()
