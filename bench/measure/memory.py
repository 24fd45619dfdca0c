"""Peak memory of one call, memory still available, and telling out-of-memory failures from other errors.

Two peaks, for two questions:

- ``measure_peak_bytes`` (the sweep's ``peak_mem_bytes``): what the call costs the machine. GPU peaks come
  from PyTorch's caching allocator; CPU peaks from the process's resident-set high-water mark (VmHWM), reset
  before the call through /proc/self/clear_refs (``tracemalloc`` would not see tensors). A CPU reading moves
  with the heap's history (freed blocks reused or not, glibc's thresholds).
- ``allocated_peak_bytes`` (the gate's memory check): the most bytes of tensors the call's own allocations
  held at once, counted by PyTorch's allocator (CUDA: its peak statistics; CPU: the allocation and free
  events the profiler records with ``profile_memory``). Exact and repeatable: the same code and shapes give
  the same count in any process after any history, so a +10% growth cannot hide in the noise. It leaves
  out what does not come from PyTorch's allocator (oneDNN's or MKL's own scratch, Python objects).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.measure.allocator import memory_regime, trim

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")

_CLEAR_REFS_RESET_HWM = "5"
# After a reset, VmHWM may exceed VmRSS only by what reading /proc itself allocated.
_RESET_SLACK_BYTES = 4 * 2**20

_OOM_MARKERS = (
    "out of memory",  # CUDA, HIP and MPS allocators
    "can't allocate memory",  # "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    "not enough memory",  # the CPU allocator's message on Windows
    "alloc_failed",  # CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED: a library's workspace
)


class MemoryMeasurementUnavailable(RuntimeError):
    """Peak memory cannot be measured here; the message says why. Never replaced by an estimate."""


def measure_peak_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak memory in bytes used by one call of ``fn`` above what was in use just before it.

    CUDA: the caching allocator's peak of allocated bytes (not reserved) minus those allocated before.
    CPU: the process's resident-set high-water mark minus its resident set before the call; raises
    ``MemoryMeasurementUnavailable`` where /proc/self/clear_refs cannot reset the high-water mark. In a
    fresh process this is the call's live bytes; after other work (timing loops) glibc's heap can hand the
    call freed blocks that fit badly, and the reading grows by that fragmentation (chunked attention at
    N = 16k: 80 MiB fresh, 112 MiB after its timing loop, each repeatable). Compare CPU peaks taken after
    the same history, or measure in a fresh process.
    """
    device = torch.device(device)
    gc.collect()  # garbage from earlier work would otherwise be freed, or not, during fn
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"no peak-memory measurement for device type {device.type!r}")


def allocated_peak_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """The most bytes of tensors allocated by one call of ``fn`` that were alive at once (see the module
    docstring): what was allocated before the call is not counted, so a call that only reads its inputs and
    frees what it makes has the peak of its temporaries, and outputs it keeps alive are counted.

    CUDA: ``max_memory_allocated`` above ``memory_allocated`` before the call, as ``measure_peak_bytes``.
    CPU: the running sum of the profiler's ``[memory]`` events (allocations positive, frees negative; frees of
    blocks allocated before the call are not reported, since the allocator did not see them allocated)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device)
    if device.type != "cpu":
        raise ValueError(f"no allocator-counted peak for device type {device.type!r}")
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # Kineto logs a line at start and at stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C++ logging writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def available_memory_bytes(device: str | torch.device) -> int:
    """Bytes that new allocations can still get.

    CPU: MemAvailable from /proc/meminfo, lowered to the container's headroom when a cgroup v2 memory limit
    is set. CUDA: the device's free memory plus what PyTorch's cache holds reserved but unallocated.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        available = _meminfo_bytes("MemAvailable")
        headroom = _cgroup_headroom_bytes()
        return available if headroom is None else min(available, headroom)
    raise ValueError(f"no available-memory query for device type {device.type!r}")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports running out of memory: CUDA's
    OutOfMemoryError, MemoryError, or an allocator's RuntimeError. Triton's OutOfResources is not: see
    ``is_out_of_resources``."""
    return _in_chain(exc, _is_oom_itself)


def is_out_of_resources(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is Triton's OutOfResources: a kernel's tile needs
    more shared memory or registers than the GPU has. That limit depends on the kernel's block sizes, head dim
    and dtype, not on N, so it is a limit of the variant (``unsupported``), not an out-of-memory."""
    return _in_chain(exc, _is_out_of_resources_itself)


def _in_chain(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if test(current):
            return True
        seen.add(id(current))
        current = current.__cause__  # wrappers (torch.compile, autotuners) keep the original here
    return False


def release_memory(device: str | torch.device) -> None:
    """Return memory freed by earlier work: collect garbage, then empty PyTorch's CUDA cache or give glibc's
    free heap pages back to the system, so the next config starts from what is really in use."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "cpu":
        trim()


def _cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    # Every block of 128 KiB or more its own mmap, free pages given back first: each block of the call adds
    # to the resident set, and a second measurement does not read ~0 from pages an earlier one left resident.
    # Free pages given back include the top of this thread's arena, also when an earlier failed allocation
    # moved the thread off glibc's main arena (bench.measure.allocator._trim_all).
    # The regime ends with the block (bench.measure.allocator), so it never reaches a later timing.
    with memory_regime():
        try:
            PROC_CLEAR_REFS.write_text(_CLEAR_REFS_RESET_HWM)
            status = _proc_status_bytes()
        except OSError as exc:
            raise MemoryMeasurementUnavailable(
                f"cannot reset the resident-set high-water mark through {PROC_CLEAR_REFS}: {exc}") from exc
        base = status["VmRSS"]
        if status["VmHWM"] - base > _RESET_SLACK_BYTES:
            raise MemoryMeasurementUnavailable(
                f"writing {_CLEAR_REFS_RESET_HWM} to {PROC_CLEAR_REFS} did not reset VmHWM "
                f"({status['VmHWM']} bytes against VmRSS {base})")
        fn()
        peak = _proc_status_bytes()["VmHWM"]
    return max(0, peak - base)


def _proc_status_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes (/proc reports kB)."""
    values = {}
    for line in PROC_STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _meminfo_bytes(key: str) -> int:
    for line in PROC_MEMINFO.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    raise KeyError(f"{key} not in {PROC_MEMINFO}")


def _cgroup_headroom_bytes() -> int | None:
    """limit - usage of this container's cgroup v2 memory controller, or None without a limit. A container
    sees its own cgroup at the root (cgroup namespaces), where MemAvailable still describes the host."""
    try:
        limit = (CGROUP_ROOT / "memory.max").read_text().strip()
        current = int((CGROUP_ROOT / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - current)


def total_memory_bytes(device: str | torch.device) -> int | None:
    """The device's memory in bytes: CUDA, the device's total; CPU, MemTotal lowered to the cgroup v2 limit
    when one is set (what a process here can ever hold). None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    if device.type != "cpu":
        return None
    try:
        total = _meminfo_bytes("MemTotal")
    except (OSError, KeyError):
        return None
    try:
        limit = (CGROUP_ROOT / "memory.max").read_text().strip()
    except OSError:
        return total
    return total if limit == "max" else min(total, int(limit))


def _is_oom_itself(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in _OOM_MARKERS)


def _is_out_of_resources_itself(exc: BaseException) -> bool:
    # Triton is looked up, not imported: if it was never imported, it cannot have raised.
    triton_errors = sys.modules.get("triton.runtime.errors")
    out_of_resources = getattr(triton_errors, "OutOfResources", None)
    return out_of_resources is not None and isinstance(exc, out_of_resources)
