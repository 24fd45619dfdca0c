"""bench.measure.memory: CPU peaks of known allocations, repeated measurements, OOM classification."""

from __future__ import annotations

import os

import pytest
import torch

from bench.measure import memory
from bench.measure.memory import (
    MemoryMeasurementUnavailable,
    available_memory_bytes,
    is_oom,
    is_out_of_resources,
    measure_peak_bytes,
)

MiB = 2**20
needs_cuda = pytest.mark.needs_gpu  # skipped without CUDA by tests/conftest.py
needs_clear_refs = pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                                      reason="/proc/self/clear_refs is not writable here")


def allocate(nbytes: int):
    """A call that allocates and touches ``nbytes`` (torch.ones writes every page), then frees them."""
    def fn() -> None:
        block = torch.ones(nbytes // 4, dtype=torch.float32)
        del block
    return fn


@needs_clear_refs
def test_cpu_peak_of_a_known_allocation():
    peak = measure_peak_bytes(allocate(256 * MiB), "cpu")
    assert abs(peak - 256 * MiB) < 0.05 * 256 * MiB, peak / MiB


@needs_clear_refs
@pytest.mark.parametrize("size_mib", [256, 8])
def test_second_measurement_in_the_same_process_is_still_correct(size_mib):
    # 8 MiB is below glibc's dynamic mmap threshold once it has grown: without the threshold handling the
    # freed block stays resident on the heap and the second reading is ~0.
    fn = allocate(size_mib * MiB)
    readings = [measure_peak_bytes(fn, "cpu") for _ in range(3)]
    for peak in readings:
        assert abs(peak - size_mib * MiB) < 0.05 * size_mib * MiB + MiB, [r / MiB for r in readings]


@needs_clear_refs
def test_peak_is_correct_after_heap_reuse_outside_measurements():
    for _ in range(20):  # what timing loops do: blocks freed and reused from glibc's heap
        allocate(16 * MiB)()
    peak = measure_peak_bytes(allocate(16 * MiB), "cpu")
    assert abs(peak - 16 * MiB) < 0.05 * 16 * MiB + MiB, peak / MiB


@needs_clear_refs
def test_peak_is_correct_after_a_failed_allocation_moved_the_thread_to_another_arena(fresh_python):
    # A fresh process, so that the failed allocation is the only history. Once a malloc fails while other
    # threads exist, glibc moves the calling thread to another arena for good (arena_get_retry); that
    # arena's top stays resident after blocks freed into it, and malloc_trim(0) does not trim it: the next
    # 16 MiB tensor was carved from it without a page fault and the peak read 0 (after
    # tests/test_extrapolation_run.py's out-of-memory config).
    script = (
        "import ctypes, threading, torch\n"
        "from bench.measure.memory import measure_peak_bytes\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "thread = threading.Thread(target=lambda: None); thread.start(); thread.join()\n"
        "assert libc.malloc(2**62) is None\n"  # fails in the main arena: glibc retries in another
        "for mib in (16, 8, 24):\n"  # three histories: where the arena's top lies varies from run to run
        "    def fn():\n"
        "        block = torch.ones(mib * 2**18); del block\n"
        "    for _ in range(20):\n"
        "        fn()\n"
        "    print(mib, measure_peak_bytes(fn, 'cpu'), measure_peak_bytes(fn, 'cpu'))\n"
    )
    stdout = fresh_python(script)
    lines = [[int(v) for v in line.split()] for line in stdout.splitlines()[-3:]]
    readings = {mib: [peak / MiB for peak in peaks] for mib, *peaks in lines}
    assert sorted(readings) == [8, 16, 24], stdout
    for mib, peaks in readings.items():
        for peak in peaks:
            assert abs(peak - mib) < 0.05 * mib + 1, readings


@needs_clear_refs
def test_nothing_allocated_reads_near_zero():
    assert measure_peak_bytes(lambda: None, "cpu") < 4 * MiB


@needs_clear_refs
def test_measurement_leaves_glibc_reusing_freed_blocks(fresh_python):
    # A fresh process, so that the heap's history is known. A measurement that left glibc's mmap threshold
    # at 128 KiB would make every later 8 MiB block a fresh mmap: 20 blocks x 2048 page faults. Restored,
    # freed blocks are reused (measured ~14k faults here, as with glibc's defaults; 41k without restoring).
    script = (
        "import resource, torch\n"
        "from bench.measure.memory import measure_peak_bytes\n"
        "measure_peak_bytes(lambda: torch.ones(2**20), 'cpu')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    block = torch.ones(2**21); del block\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = int(fresh_python(script).split()[-1])
    assert faults < 0.6 * 20 * 2048, faults


def test_unwritable_clear_refs_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with pytest.raises(MemoryMeasurementUnavailable, match="clear_refs"):
        measure_peak_bytes(lambda: None, "cpu")


@needs_clear_refs
def test_clear_refs_that_does_not_reset_is_detected(monkeypatch, tmp_path):
    measure_peak_bytes(lambda: None, "cpu")  # a real reset first, then a known high-water mark above it
    allocate(64 * MiB)()
    fake = tmp_path / "clear_refs"
    fake.write_text("")
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", fake)  # accepts the write, resets nothing
    with pytest.raises(MemoryMeasurementUnavailable, match="did not reset"):
        measure_peak_bytes(lambda: None, "cpu")


def test_available_memory_cpu_reads_meminfo_and_the_cgroup_limit(monkeypatch, tmp_path):
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < available_memory_bytes("cpu") <= total
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       4194304 kB\nMemAvailable:   2097152 kB\n")
    monkeypatch.setattr(memory, "PROC_MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "no-cgroup")
    assert available_memory_bytes("cpu") == 2048 * MiB
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    (tmp_path / "memory.max").write_text(f"{1024 * MiB}\n")
    (tmp_path / "memory.current").write_text(f"{256 * MiB}\n")
    assert available_memory_bytes("cpu") == 768 * MiB  # the container's headroom, not the host's
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory_bytes("cpu") == 2048 * MiB
    with pytest.raises(ValueError):
        available_memory_bytes("meta")


def test_is_oom_classification():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1099511627776 bytes."))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom(ValueError("q and k must have the same head dimension"))
    assert not is_oom(ValueError("out of memory"))  # only allocators' RuntimeErrors are read
    assert not is_oom(RuntimeError("shapes cannot be multiplied"))


def test_is_oom_follows_the_cause_and_knows_triton():
    try:
        try:
            raise MemoryError
        except MemoryError as inner:
            raise RuntimeError("backend compiler failed") from inner
    except RuntimeError as wrapped:
        assert is_oom(wrapped)


def test_triton_out_of_resources_is_not_oom():
    # A kernel's tile that does not fit in shared memory or registers: a limit independent of N (issue 7).
    errors = pytest.importorskip("triton.runtime.errors")
    limit = errors.OutOfResources(262144, 232448, "shared memory")
    assert is_out_of_resources(limit) and not is_oom(limit)
    try:
        try:
            raise limit
        except errors.OutOfResources as inner:
            raise RuntimeError("autotuner: every config failed") from inner
    except RuntimeError as wrapped:
        assert is_out_of_resources(wrapped) and not is_oom(wrapped)
    assert not is_out_of_resources(MemoryError()) and not is_out_of_resources(ValueError("shared memory"))


def test_oom_from_a_real_allocation_is_recognised():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(info.value)


@needs_cuda
def test_cuda_peak_of_a_known_allocation():
    def fn() -> None:
        block = torch.ones(64 * MiB, device="cuda")  # 256 MiB
        del block
    resident = torch.zeros(16 * MiB, device="cuda")  # in use before the call: not counted
    assert abs(measure_peak_bytes(fn, "cuda") - 256 * MiB) < 0.01 * 256 * MiB
    del resident


def test_allocated_peak_counts_the_call_s_own_tensors_exactly_after_any_history() -> None:
    """The gate's peak: the largest sum of live tensors the call allocated, to the byte, the same after heap
    churn that moves the resident-set reading; inputs allocated before the call are not counted."""
    from bench.measure.memory import allocated_peak_bytes

    x = torch.randn(256, 256)  # 256 KiB, allocated before: not counted

    def call() -> torch.Tensor:
        a = x @ x  # 256 KiB
        b = torch.empty(100_000)  # 400,000 bytes, both alive: the peak
        del a, b
        return torch.empty(10)

    first = allocated_peak_bytes(call, "cpu")
    assert first == 256 * 256 * 4 + 400_000
    churn = [torch.ones(n) for n in (3_000_000, 77, 500_000)]  # written, then freed out of order
    del churn[1], churn[0]
    assert allocated_peak_bytes(call, "cpu") == first
    assert allocated_peak_bytes(lambda: x.neg_(), "cpu") == 0  # in place: nothing new


def test_allocated_peak_raises_for_an_unknown_device() -> None:
    from bench.measure.memory import allocated_peak_bytes

    with pytest.raises(ValueError, match="no allocator-counted peak for device type 'meta'"):
        allocated_peak_bytes(lambda: None, "meta")
