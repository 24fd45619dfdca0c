"""bench.measure.allocator: the regimes change glibc's behaviour as documented and are restored after.

glibc has no call that reads its thresholds back, so each regime is checked by what it does: the minor page
faults a freed-and-reallocated block takes, in a fresh process whose allocator history is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.measure import allocator
from bench.measure.allocator import MEMORY, RESTING, TIMING, MallocInfo, malloc_info, regime_record

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
glibc_only = pytest.mark.skipif(not malloc_info().is_glibc, reason="malloc here is not glibc's")

# Faults per allocation of a glibc block (malloc, every page written, free), allocations 2 to 5, in each
# regime. Plain malloc shows what glibc does; PyTorch's posix_memalign adds heap growth of its own for the
# first calls of a new size pattern (see docs/cpu-timing.md), which the executor's warm-up absorbs.
PROBE = r"""
import ctypes, json
from bench.measure import allocator

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def faults(nbytes):
    counts = []
    for _ in range(5):
        before = allocator.minor_faults()
        block = libc.malloc(nbytes)
        libc.memset(block, 1, nbytes)
        libc.free(block)
        counts.append(allocator.minor_faults() - before)
    return sum(counts[1:]) / 4  # the first may grow the heap

MiB = 2**20
out = {}
with allocator.memory_regime():  # a first regime: leaving it puts the process at rest, heap trimmed
    out["memory_1MiB"] = faults(1 * MiB)
out["resting_64MiB"] = faults(64 * MiB)
out["resting_1MiB"] = faults(1 * MiB)
with allocator.timing_regime() as label:
    out["timing_label"] = label
    out["timing_64MiB"] = faults(64 * MiB)
    with allocator.memory_regime():
        out["nested_memory_1MiB"] = faults(1 * MiB)
    out["timing_again_1MiB"] = faults(1 * MiB)
    out["timing_again_64MiB"] = faults(64 * MiB)
out["active_after"] = allocator.current_regime() is None
print(json.dumps(out))
"""


def run_probe(fresh_python) -> dict:
    return json.loads(fresh_python(PROBE).strip().splitlines()[-1])


@glibc_only
def test_each_regime_does_what_it_says_and_is_restored(fresh_python):
    pages_64mib, pages_1mib = 64 * 2**20 // 4096, 2**20 // 4096
    out = run_probe(fresh_python)
    assert out["timing_label"] == TIMING.label()
    # the memory pass's regime: every 1 MiB block is its own mmap, each page faulted anew
    assert out["memory_1MiB"] >= 0.95 * pages_1mib and out["nested_memory_1MiB"] >= 0.95 * pages_1mib, out
    # at rest: 64 MiB is above the 32 MiB mmap threshold (fresh pages every time), 1 MiB is reused
    assert out["resting_64MiB"] >= 0.95 * pages_64mib, out
    assert out["resting_1MiB"] < 0.05 * pages_1mib, out
    # caching: a freed 64 MiB block is reused without fresh pages; leaving the nested memory regime
    # restores the caching one, not the resting one or glibc's defaults
    assert out["timing_64MiB"] < 0.01 * pages_64mib, out
    assert out["timing_again_1MiB"] < 0.05 * pages_1mib and out["timing_again_64MiB"] < 0.01 * pages_64mib, out
    assert out["active_after"]


@glibc_only
def test_record_names_glibc_and_every_parameter():
    record = regime_record()
    assert json.loads(json.dumps(record)) == record
    assert record["managed"] and record["malloc"]["kind"] == "glibc" and record["malloc"]["glibc_version"]
    assert record["timing"]["mmap_max"] == 0 and record["timing"]["trim_threshold"] == -1
    assert record["memory_pass"]["mmap_threshold"] == 128 * 2**10
    assert record["resting"]["mmap_threshold"] == RESTING.mmap_threshold
    assert set(allocator.ALLOCATOR_ENV_VARS) <= set(record["env"])
    assert TIMING.label() == "glibc caching: mmap never, trim never, malloc_trim on entry and exit"
    assert MEMORY.label() == "glibc mmap-every-block: mmap >= 128 KiB, trim 128 KiB, malloc_trim on entry"


def test_cuda_timing_regime_leaves_the_host_allocator_alone():
    with allocator.timing_regime("cuda") as label:
        assert label == "cuda-caching" and allocator.current_regime() is None


def test_another_malloc_is_not_managed(monkeypatch):
    info = MallocInfo("tcmalloc", "/usr/lib/libtcmalloc_minimal.so.4", "LD_PRELOAD", "2.36")
    monkeypatch.setattr(allocator, "malloc_info", lambda: info)
    monkeypatch.setattr(allocator, "_apply", lambda regime: pytest.fail("mallopt called under tcmalloc"))
    with allocator.timing_regime() as label:
        assert label.startswith("tcmalloc from /usr/lib/libtcmalloc_minimal.so.4 (LD_PRELOAD): not managed")
    record = regime_record()
    assert not record["managed"] and record["timing"] == label and record["resting"] is None


@pytest.mark.skipif(not JEMALLOC.exists(), reason=f"{JEMALLOC} not installed (apt install libjemalloc2)")
def test_preloaded_jemalloc_is_detected_and_recorded(fresh_python):
    script = ("import json; from bench.measure import allocator\n"
              "with allocator.timing_regime() as label: pass\n"
              "print(json.dumps({'label': label, 'record': allocator.regime_record()}))\n")
    out = json.loads(fresh_python(script, env={"LD_PRELOAD": str(JEMALLOC)}).strip().splitlines()[-1])
    assert out["label"].startswith(f"jemalloc from {JEMALLOC} (LD_PRELOAD): not managed")
    assert out["record"]["malloc"]["kind"] == "jemalloc" and out["record"]["env"]["LD_PRELOAD"] == str(JEMALLOC)
