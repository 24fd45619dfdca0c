"""The CPU allocator regimes of a run: one for timed calls, one for the memory pass, one at rest.

PyTorch's CPU tensors come from ``malloc`` (glibc's, unless another allocator is preloaded). With glibc's
defaults a block of 128 KiB or more may get its own ``mmap`` and be unmapped when freed, and free memory at
the top of the heap is returned to the system once it exceeds the trim threshold; both thresholds move with
what the process freed before. A block that was given back is zero-filled by the kernel, page by page
(minor page faults), the next time it is touched. So a CPU time used to contain 0 to 40% of page faults
depending on which configs and memory passes ran before it (issue 11; docs/cpu-timing.md has the numbers).

Regimes, set with ``mallopt`` for the duration of a ``with`` block and restored after:

- ``TIMING`` (warm-up and timed calls): no block is mmapped (``M_MMAP_MAX`` 0) and the heap is never
  trimmed (``M_TRIM_THRESHOLD`` -1), so a freed block stays resident and is reused, as in PyTorch's CUDA
  caching allocator; free pages are given back first (``malloc_trim(0)``), so every config starts from the
  same state whatever ran before, the warm-up touches the pages the call needs, and the timed calls then take
  no page faults. Memory is given back again when the block ends.
- ``MEMORY`` (the peak-memory pass): every block of 128 KiB or more is its own mmap and the heap is trimmed at
  glibc's default 128 KiB, after giving free pages back, so each block of the call adds to the resident set
  (see ``bench.measure.memory``). Giving back includes the top of the calling thread's arena, which
  ``malloc_trim`` leaves resident when that arena is not the main one (see ``_trim_all``).
- ``RESTING`` (outside both): 32 MiB / 64 MiB, where glibc's dynamic thresholds stop growing. The dynamic
  scheme itself cannot be turned back on once ``mallopt`` has set a threshold, and glibc has no call that
  reads the thresholds back, so this module keeps track of what it set.

Where ``malloc`` is not glibc's (jemalloc, tcmalloc or mimalloc preloaded, or another C library) nothing is
changed: that allocator's own caching applies, and the regime's name says which allocator it was.
"""

from __future__ import annotations

import ctypes
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

MiB = 2**20
# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_GLIBC_DEFAULT_MMAP_MAX = 65536
# A block freed to make glibc trim the calling thread's arena (see _trim_all): above glibc's
# FASTBIN_CONSOLIDATION_THRESHOLD (64 KiB), below MEMORY's mmap threshold, so it comes from the arena.
_ARENA_TRIM_NUDGE = 96 * 2**10
PROC_MAPS = Path("/proc/self/maps")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Allocators a user may preload instead of glibc's, by a part of their library's file name.
KNOWN_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
# Environment variables that configure those allocators and glibc's own tunables: recorded with the regime.
ALLOCATOR_ENV_VARS = ("LD_PRELOAD", "MALLOC_CONF", "JE_MALLOC_CONF", "TCMALLOC_RELEASE_RATE",
                      "TCMALLOC_AGGRESSIVE_DECOMMIT", "MIMALLOC_PURGE_DELAY", "GLIBC_TUNABLES")


@dataclass(frozen=True)
class GlibcRegime:
    """glibc ``mallopt`` settings. Thresholds in bytes; ``trim_threshold`` -1 never trims (documented in
    mallopt(3)); ``mmap_max`` 0 never mmaps a block; ``trim_on_entry`` gives free heap pages back to the
    system (``malloc_trim(0)``) when the regime starts, ``trim_on_exit`` when it ends."""

    name: str
    mmap_threshold: int
    trim_threshold: int
    mmap_max: int
    trim_on_entry: bool
    trim_on_exit: bool

    def label(self) -> str:
        """One line for a row's ``alloc_regime``: the name and every parameter."""
        trim = "never" if self.trim_threshold < 0 else _size(self.trim_threshold)
        mmap = "never" if self.mmap_max == 0 else f">= {_size(self.mmap_threshold)}"
        when = " and ".join(w for w, on in (("entry", self.trim_on_entry), ("exit", self.trim_on_exit)) if on)
        return f"glibc {self.name}: mmap {mmap}, trim {trim}" + (f", malloc_trim on {when}" if when else "")


TIMING = GlibcRegime("caching", mmap_threshold=32 * MiB, trim_threshold=-1, mmap_max=0, trim_on_entry=True,
                     trim_on_exit=True)
MEMORY = GlibcRegime("mmap-every-block", mmap_threshold=128 * 2**10, trim_threshold=128 * 2**10,
                     mmap_max=_GLIBC_DEFAULT_MMAP_MAX, trim_on_entry=True, trim_on_exit=False)
RESTING = GlibcRegime("resting", mmap_threshold=32 * MiB, trim_threshold=64 * MiB,
                      mmap_max=_GLIBC_DEFAULT_MMAP_MAX, trim_on_entry=False, trim_on_exit=False)

# What this module has set, innermost last; empty: RESTING applies (or glibc's untouched defaults).
_active: list[GlibcRegime] = []


@dataclass(frozen=True)
class MallocInfo:
    """Which ``malloc`` this process calls. kind: glibc, jemalloc, tcmalloc, mimalloc or other; library: the
    file it comes from (None when unknown); how: 'glibc' (its own), 'LD_PRELOAD' or 'linked'."""

    kind: str
    library: str | None
    how: str
    glibc_version: str | None

    @property
    def is_glibc(self) -> bool:
        return self.kind == "glibc"


def malloc_info() -> MallocInfo:
    """Which allocator serves ``malloc`` here: the global ``malloc`` symbol is compared with glibc's own and,
    when they differ, named by the mapped file that holds it (/proc/self/maps)."""
    return _malloc_info(os.environ.get("LD_PRELOAD", ""))


@contextmanager
def timing_regime(device: str | torch.device = "cpu") -> Iterator[str]:
    """Applies ``TIMING`` around the block (CPU with glibc) and yields the label for the row's
    ``alloc_regime``. CUDA tensors come from PyTorch's caching allocator: nothing is changed, 'cuda-caching'."""
    if torch.device(device).type == "cuda":
        yield "cuda-caching"
        return
    with glibc_regime(TIMING) as label:
        yield label


@contextmanager
def memory_regime() -> Iterator[str]:
    """Applies ``MEMORY`` around the block (glibc only) and yields its label."""
    with glibc_regime(MEMORY) as label:
        yield label


@contextmanager
def glibc_regime(regime: GlibcRegime) -> Iterator[str]:
    """Sets ``regime`` for the block and restores what was set before it (``RESTING`` outside any regime).
    Yields the label; where malloc is not glibc's, changes nothing and yields what serves malloc instead. A
    setting glibc rejects is named in the label, never hidden."""
    info = malloc_info()
    if not info.is_glibc:
        yield unmanaged_label(info)
        return
    rejected = _apply(regime)
    if regime.trim_on_entry:
        _trim_all()
    _active.append(regime)
    try:
        yield regime.label() + (f" (glibc rejected {', '.join(rejected)})" if rejected else "")
    finally:
        _active.pop()
        if regime.trim_on_exit:
            _trim_all()
        _apply(_active[-1] if _active else RESTING)


def current_regime() -> GlibcRegime | None:
    """The regime this module has set and not yet restored (None: none is active)."""
    return _active[-1] if _active else None


def unmanaged_label(info: MallocInfo) -> str:
    """The ``alloc_regime`` of a process whose malloc this module does not manage."""
    where = f" from {info.library}" if info.library else ""
    how = f" ({info.how})" if info.how not in ("glibc", "linked") else ""
    return f"{info.kind}{where}{how}: not managed, its own caching applies"


def regime_record() -> dict:
    """What environment.json stores: the allocator, each regime with its parameters, the allocator-related
    environment variables and the transparent-huge-page mode (plain JSON)."""
    info = malloc_info()
    return {
        "malloc": asdict(info),
        "managed": info.is_glibc,
        "timing": asdict(TIMING) | {"label": TIMING.label()} if info.is_glibc else unmanaged_label(info),
        "memory_pass": asdict(MEMORY) | {"label": MEMORY.label()} if info.is_glibc else unmanaged_label(info),
        "resting": asdict(RESTING) if info.is_glibc else None,
        "env": {name: os.environ.get(name) for name in ALLOCATOR_ENV_VARS},
        "transparent_hugepage": _thp_mode(),
    }


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads), from getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def trim() -> None:
    """Give free heap pages back to the system (glibc's ``malloc_trim(0)``, then the calling thread's arena's
    top, see ``_trim_all``); nothing elsewhere."""
    if malloc_info().is_glibc:
        _trim_all()


def _trim_all() -> None:
    """``malloc_trim(0)``, then a free that makes glibc trim the top of the calling thread's arena.

    ``malloc_trim`` gives back free pages inside every arena's bins but trims only the main arena's top chunk
    (glibc's ``mtrim``: ``systrim`` for ``main_arena`` alone); a per-thread arena's top is shrunk only by
    ``free`` (``heap_trim``, when the freed chunk is 64 KiB or more and the top exceeds the trim threshold).
    The main thread normally allocates from the main arena, but once one of its allocations fails (an
    out-of-memory config, while other threads exist) glibc's ``arena_get_retry`` moves it to another arena
    for good. That arena's top stays resident after blocks that were freed into it, and a later call's blocks
    are carved from it with no page fault, even under ``MEMORY``: the resident-set peak read 0 for a 16 MiB
    tensor. Allocating and freeing a block of ``_ARENA_TRIM_NUDGE`` bytes (below ``MEMORY``'s mmap
    threshold, above glibc's 64 KiB consolidation threshold) runs ``heap_trim`` on the calling thread's
    arena with the threshold now in force: under ``MEMORY`` the top goes back to the system; where the
    threshold is "never" (``TIMING``) or 64 MiB (``RESTING``) nothing changes."""
    libc = _libc()
    libc.malloc_trim(0)
    block = libc.malloc(_ARENA_TRIM_NUDGE)
    if block:
        libc.free(block)


def _apply(regime: GlibcRegime) -> list[str]:
    """Set every parameter of ``regime``; returns the names of those glibc refused."""
    libc = _libc()
    rejected = []
    for name, param, value in (("M_MMAP_MAX", _M_MMAP_MAX, regime.mmap_max),
                               ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, regime.mmap_threshold),
                               ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, regime.trim_threshold)):
        if libc.mallopt(param, value) != 1:
            rejected.append(f"{name}={value}")
    return rejected


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc's own library (not the global symbol scope, where a preloaded allocator comes first)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim", "malloc",
                                               "free")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


@cache
def _malloc_info(ld_preload: str) -> MallocInfo:
    libc = _libc()
    glibc_version = libc.gnu_get_libc_version().decode() if libc is not None else None
    global_malloc = _address(ctypes.CDLL(None).malloc)
    if libc is not None and global_malloc == _address(libc.malloc):
        return MallocInfo("glibc", None, "glibc", glibc_version)
    library = _mapped_file(global_malloc)
    name = Path(library).name if library else ""
    kind = next((k for k in KNOWN_ALLOCATORS if k in name), "other")
    preloaded = library is not None and any(Path(p).name == name for p in ld_preload.replace(":", " ").split())
    return MallocInfo(kind, library, "LD_PRELOAD" if preloaded else "linked", glibc_version)


def _address(fn: ctypes._CFuncPtr) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (/proc/self/maps), or None."""
    try:
        lines = PROC_MAPS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        start, _, end = fields[0].partition("-")
        if int(start, 16) <= address < int(end, 16):
            return fields[5].strip() if len(fields) == 6 else None
    return None


def _thp_mode() -> str | None:
    """The selected transparent-huge-page mode (always, madvise or never), or None where unknown."""
    try:
        text = THP_ENABLED.read_text()
    except OSError:
        return None
    return next((word.strip("[]") for word in text.split() if word.startswith("[")), None)


def _size(nbytes: int) -> str:
    return f"{nbytes // MiB} MiB" if nbytes >= MiB else f"{nbytes // 2**10} KiB"
