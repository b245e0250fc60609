"""The application's host allocator setting, checked through glibc's own accounting (mallinfo2)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from metajax.app import host_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and mallinfo2")

# Sets the allocator as the entry points do, then asks glibc how many bytes a fresh 64 MiB block took from mmap.
PROBE = """
import ctypes, json
from metajax.app import host_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
setting = host_memory.retain_freed_memory()
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(block))
print(json.dumps({"setting": setting, "again": host_memory.retain_freed_memory(), "mapped_mib": mapped / 2**20}))
"""


def _probe(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "METAJAX_MALLOC"}
    if value is not None:
        env["METAJAX_MALLOC"] = value
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)


def test_retain_serves_large_blocks_from_the_heap():
    out = json.loads(_probe(None).stdout)
    assert out == {"setting": "retain", "again": "retain", "mapped_mib": 0.0}


def test_default_keeps_glibc_mapping_large_blocks():
    out = json.loads(_probe("default").stdout)
    assert out["setting"] == out["again"] == "default"
    assert out["mapped_mib"] >= 64


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("METAJAX_MALLOC", "sometimes")  # refused before anything is set
    with pytest.raises(ValueError, match=r"METAJAX_MALLOC='sometimes': expected 'retain' \(keep freed host memory"):
        host_memory.retain_freed_memory()
