"""Wall-clock timing of one callable on CPU or GPU: warm-up, repeats, median with p20/p80.

The caller warms up first (``warmup``), then times (``time_callable``): warm-up is where lazy
initialisation, allocator growth and Triton autotuning happen, and none of it belongs in the samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.measure.allocator import minor_faults

# A 95% interval of the median of n samples is about +-1.96 * 1.2533 * sigma / sqrt(n) (the median's
# standard error), and sigma of a normal is about IQR / 1.349; together +-1.82 * IQR / sqrt(n).
_MEDIAN_CI_PER_IQR = 1.96 * 1.2533 / 1.349

_FALLBACK_CPU_CACHE_BYTES = 32 * 2**20
_FALLBACK_GPU_L2_BYTES = 128 * 2**20


@dataclass
class Timing:
    """Summary of the timed calls of one callable. Times in milliseconds, except ``total_s`` (seconds)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    total_s: float
    iqr_ms: float
    samples_ms: list[float] = field(repr=False)
    timer: str = "perf_counter"
    """Exactly which clock produced the samples (the row's ``timer`` column), e.g. ``triton.do_bench+l2flush``."""
    untimed_calls: int = 0
    """Calls the timer made besides the timed ones (its probe and its own warm-up; not ``warmup``'s calls)."""
    wall_s: float | None = None
    """Seconds of everything the timer ran (untimed calls and L2 flushes included); None: only the samples."""
    minor_faults_per_call: float | None = None
    """Minor page faults of the process per timed call (the CPU timer counts them; None elsewhere)."""

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], *, timer: str = "perf_counter", untimed_calls: int = 0,
                     wall_s: float | None = None) -> Timing:
        """Summarise per-call durations given in seconds (see the fields for the keywords)."""
        if len(samples_s) == 0:
            raise ValueError("no timing samples")
        samples_ms = [float(s) * 1e3 for s in samples_s]
        p20, q25, median, q75, p80 = np.percentile(samples_ms, [20, 25, 50, 75, 80])
        return cls(median_ms=float(median), p20_ms=float(p20), p80_ms=float(p80), iqr_ms=float(q75 - q25),
                   min_ms=min(samples_ms),
                   max_ms=max(samples_ms), repeats=len(samples_ms), total_s=float(sum(samples_s)),
                   samples_ms=samples_ms, timer=timer, untimed_calls=untimed_calls, wall_s=wall_s)

    @property
    def spent_s(self) -> float:
        """Seconds the timer kept the workload busy: ``wall_s`` when known, else the sum of the samples."""
        return self.total_s if self.wall_s is None else max(self.wall_s, self.total_s)


@dataclass
class TimingSettings:
    """How long to warm up and how many timed calls to make. The defaults suit a CPU.

    Timed calls go on until there are at least ``min_repeats`` of them, they add up to at least
    ``min_time_s`` seconds, and the median is known to +-``median_precision`` (relative half-width of its
    ~95% interval, estimated from the interquartile range); they stop at ``max_repeats`` calls or
    ``max_time_s`` seconds of timed calls, whichever comes first, even below the minimums (the call that
    crosses ``max_time_s`` is the last). ``median_precision=0`` turns the early stop off. ``flush_l2``
    overwrites a buffer larger than the last-level cache (CPU: twice its size; GPU: Triton's 256 MB, or
    twice the L2 without Triton) before each timed call, outside the timed region, so every call starts
    with cold caches. With Triton's ``do_bench`` the number of calls is its own: it aims at the time the
    settings allow and has no early stop.
    """

    warmup_min_calls: int = 1
    warmup_min_s: float = 0.05
    min_repeats: int = 5
    max_repeats: int = 1000
    min_time_s: float = 0.1
    max_time_s: float = 2.0
    # Off by default on a CPU: its last-level cache is 32 MiB here, and rewriting twice that costs ~3 ms per
    # repeat, more than short calls themselves; CPU timings are warm-cache, as in pytest-benchmark (a
    # preset's [timing] flush_l2 = true turns the flush on). GPU defaults turn it on (for_device).
    flush_l2: bool = False
    median_precision: float = 0.01

    def __post_init__(self) -> None:
        if self.warmup_min_calls < 0 or self.warmup_min_s < 0:
            raise ValueError("warm-up minimums must be >= 0")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise ValueError(f"need 1 <= min_repeats <= max_repeats, "
                             f"got {self.min_repeats}, {self.max_repeats}")
        if not 0 <= self.min_time_s <= self.max_time_s or self.max_time_s <= 0:
            raise ValueError(f"need 0 <= min_time_s <= max_time_s and max_time_s > 0, "
                             f"got {self.min_time_s}, {self.max_time_s}")
        if self.median_precision < 0:
            raise ValueError(f"median_precision must be >= 0, got {self.median_precision}")

    @classmethod
    def for_device(cls, device: str | torch.device) -> TimingSettings:
        """Defaults for the device type: a GPU call is short and steady, so more repeats in less time."""
        if torch.device(device).type == "cuda":
            return cls(warmup_min_calls=1, warmup_min_s=0.025, min_repeats=10, max_repeats=10_000,
                       min_time_s=0.1, max_time_s=1.0, flush_l2=True, median_precision=0.005)
        return cls()


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work: ``torch.cuda.synchronize`` on CUDA, nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        # Timing an asynchronous device without a synchronise would measure launch time only.
        raise ValueError(f"no synchronise for device type {device.type!r}")


class SynchronizedCallable:
    """Calls ``fn`` and then synchronises ``device``: a target for pytest-benchmark's pedantic mode, whose
    timer otherwise stops before queued GPU work has run."""

    def __init__(self, fn: Callable[..., object], device: str | torch.device) -> None:
        self.fn = fn
        self.device = torch.device(device)
        # Drains work queued before the first timed round, and rejects a device we cannot synchronise.
        synchronize(self.device)

    def __call__(self, *args: object, **kwargs: object) -> object:
        result = self.fn(*args, **kwargs)
        synchronize(self.device)
        return result


def warmup(fn: Callable[[], object], device: str | torch.device, settings: TimingSettings) -> int:
    """Call ``fn`` (synchronising after each call) until both ``warmup_min_calls`` calls and
    ``warmup_min_s`` seconds are reached. Returns the number of calls made."""
    return len(warmup_durations(fn, device, settings))


def warmup_durations(fn: Callable[[], object], device: str | torch.device, settings: TimingSettings
                     ) -> list[float]:
    """``warmup``, returning the wall seconds of each call (synchronised), in order. The first includes the
    one-time work of a new shape (Triton's JIT, fla's autotune, FlexAttention's compile, lazy init)."""
    durations: list[float] = []
    start = time.perf_counter()
    while len(durations) < settings.warmup_min_calls or time.perf_counter() - start < settings.warmup_min_s:
        before = time.perf_counter()
        fn()
        synchronize(device)
        durations.append(time.perf_counter() - before)
    return durations


def steady_call_seconds(fn: Callable[[], object], device: str | torch.device, durations: Sequence[float]
                        ) -> tuple[float, int]:
    """(seconds of one call after the first, extra calls made): the median of the warm-up's calls after its
    first (``durations`` from ``warmup_durations``) or, when the warm-up made only that first call, one more
    synchronised call. A timer that must fix its number of rounds up front (pytest-benchmark's pedantic mode)
    sizes them from this: the first call's compile would make it ask for a single round."""
    steady = list(durations[1:])
    extra = 0
    if not steady:
        before = time.perf_counter()
        fn()
        synchronize(device)
        steady, extra = [time.perf_counter() - before], 1
    return float(np.median(steady)), extra


def time_callable(fn: Callable[[], object], device: str | torch.device,
                  settings: TimingSettings | None = None) -> Timing:
    """Time ``fn`` on ``device`` (already warmed up) with the device's timer."""
    settings = settings or TimingSettings.for_device(device)
    device = torch.device(device)
    if device.type == "cuda":
        return time_cuda(fn, settings, device)
    if device.type == "cpu":
        return time_cpu(fn, settings)
    raise ValueError(f"no timer for device type {device.type!r}")


def time_cpu(fn: Callable[[], object], settings: TimingSettings,
             clock: Callable[[], float] | None = None) -> Timing:
    """Time each call of ``fn`` with ``clock`` (see ``TimingSettings`` for when it stops): wall time by default;
    ``time.process_time`` counts the process's CPU time, which time slices given to other processes do not
    inflate (the CI gate's choice, with one thread). The process's minor page faults inside the timed region
    are counted too (the flush is outside it). The Timing's ``timer`` names the clock."""
    clock = clock or time.perf_counter  # looked up at call time, so a test's fake clock is seen
    # numpy's fill is one thread: a torch fill would leave OpenMP workers spinning into the timed call, which
    # slowed a pure-Python call 1.75x on a 2-core machine.
    flush = np.empty(2 * _cpu_cache_bytes(), dtype=np.uint8) if settings.flush_l2 else None
    faults = 0

    def timed_call() -> float:
        nonlocal faults
        if flush is not None:
            flush.fill(0)
        before = minor_faults()  # a getrusage call: about a microsecond, outside the timed region
        start = clock()
        fn()
        elapsed = clock() - start
        faults += minor_faults() - before
        return elapsed

    timing = _repeat(timed_call, settings)
    return replace(timing, minor_faults_per_call=faults / timing.repeats, timer=clock.__name__)


def time_cuda(fn: Callable[[], object], settings: TimingSettings, device: str | torch.device) -> Timing:
    """Time ``fn`` on a CUDA device with the timer ``cuda_timer_name(settings)`` names:
    ``triton.testing.do_bench`` when Triton imports and ``flush_l2`` is on (it flushes L2 before every call
    and synchronises once at the end), otherwise CUDA events around each call with a synchronise after it
    (and the L2 flush when asked). The returned ``Timing`` says which timer ran, how many untimed calls it
    made and the wall seconds of all of it."""
    device = torch.device(device)
    with torch.cuda.device(device):
        do_bench = _triton_do_bench() if settings.flush_l2 else None
        if do_bench is not None:
            return _time_do_bench(do_bench, fn, settings, device)
        return _time_cuda_events(fn, settings, device)


TIMER_DO_BENCH = "triton.do_bench+l2flush"
TIMER_EVENTS_FLUSH = "cuda-events+l2flush"
TIMER_EVENTS = "cuda-events"

CUDA_PROBE_CALLS = 1
"""The one synchronised call ``_time_do_bench`` times to choose do_bench's ``rep``."""
DO_BENCH_UNTIMED_CALLS = 7
"""Calls ``triton.testing.do_bench(fn, warmup=0, ...)`` makes besides its timed ones (triton/testing.py):
one first call, five for its estimate of one call, and ``max(1, int(warmup / estimate))`` = 1 warm-up call."""
DO_BENCH_FLUSH_BYTES = 256 * 2**20
"""The buffer Triton's NVIDIA driver zeroes before every call (``get_empty_cache_for_benchmark``)."""


def cuda_timer_name(settings: TimingSettings) -> str:
    """The ``timer`` value ``time_cuda`` will report with these settings on this installation."""
    if not settings.flush_l2:
        return TIMER_EVENTS
    return TIMER_DO_BENCH if _triton_do_bench() is not None else TIMER_EVENTS_FLUSH


def do_bench_rep_ms(settings: TimingSettings, one_ms: float) -> float:
    """do_bench's ``rep`` (ms of timed calls; it makes about rep / one_ms of them) for a call of ``one_ms``:
    enough for ``min_repeats`` calls and ``min_time_s``, at most ``max_time_s`` and ``max_repeats`` calls."""
    rep_ms = max(settings.min_time_s * 1e3, settings.min_repeats * one_ms)
    rep_ms = min(rep_ms, settings.max_time_s * 1e3, settings.max_repeats * one_ms)
    return max(rep_ms, 1e-3)


def cuda_l2_flush(device: str | torch.device) -> Callable[[], None]:
    """A callable that overwrites a buffer larger than the L2 cache of ``device`` (queued, not synchronised):
    Triton's own 256 MB buffer and ``clear_cache`` when Triton imports (the flush do_bench makes), otherwise
    twice the L2 reported by the device (128 MiB when unknown) zeroed by torch."""
    device = torch.device(device)
    try:
        from triton.runtime import driver
    except ImportError:
        driver = None
    if driver is not None:
        with torch.cuda.device(device):
            cache = driver.active.get_empty_cache_for_benchmark()
        return lambda: driver.active.clear_cache(cache)  # None, as pedantic's setup must return
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or _FALLBACK_GPU_L2_BYTES
    buffer = torch.empty(2 * l2, dtype=torch.uint8, device=device)

    def flush() -> None:  # returns None: pytest-benchmark takes a setup's return value as call arguments
        buffer.zero_()
    return flush


class CudaEventStamp:
    """One reading of ``cuda_event_clock``: a CUDA event recorded on the current stream and not waited for.

    ``end - start`` (two stamps) waits for ``end`` and returns the GPU seconds between the two events, a float:
    pytest-benchmark computes each round's duration exactly so (``fixture.py``, ``_make_runner``), after the
    call, so nothing between the readings waits for the GPU."""

    __slots__ = ("event",)

    def __init__(self, event: torch.cuda.Event) -> None:
        self.event = event

    def __sub__(self, start: object) -> float:
        if not isinstance(start, CudaEventStamp):
            return NotImplemented
        self.event.synchronize()
        return start.event.elapsed_time(self.event) / 1e3


def cuda_event_clock() -> CudaEventStamp:
    """pytest-benchmark's clock on CUDA (``pytest.mark.benchmark(timer=...)``; its default clock does not wait
    for the GPU): records a CUDA event on the current stream and returns it unwaited (``CudaEventStamp``).

    Around pedantic's target this queues what ``triton.testing.do_bench`` queues: the L2 flush (pedantic's
    ``setup``, before the first reading), the start event, the call, the end event, with no host
    synchronisation between them; the subtraction pytest-benchmark makes afterwards waits for the end event.
    So the GPU is kept busy by the flush while the host launches the call, and a sample is the GPU time from
    the start event to the end event (docs/gpu-timing.md, "What is inside a sample")."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return CudaEventStamp(event)


def _repeat(timed_call: Callable[[], float], settings: TimingSettings) -> Timing:
    samples: list[float] = []
    total = 0.0
    while not _enough(samples, total, settings):
        seconds = timed_call()
        samples.append(seconds)
        total += seconds
    return Timing.from_samples(samples)


def _enough(samples: list[float], total_s: float, settings: TimingSettings) -> bool:
    n = len(samples)
    if n >= settings.max_repeats or total_s >= settings.max_time_s:
        return True
    if n < settings.min_repeats or total_s < settings.min_time_s or settings.median_precision == 0:
        return False
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return _MEDIAN_CI_PER_IQR * (q75 - q25) / math.sqrt(n) <= settings.median_precision * median


def _cpu_cache_bytes() -> int:
    """Size of the largest CPU cache the kernel reports (the last level), in bytes."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=_FALLBACK_CPU_CACHE_BYTES)


def _triton_do_bench() -> Callable[..., object] | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench


def _time_do_bench(do_bench: Callable[..., object], fn: Callable[[], object], settings: TimingSettings,
                   device: torch.device) -> Timing:
    # do_bench picks its number of calls as rep / (its own estimate of one call), so rep is chosen here
    # from one synchronised call (the probe) to land between the settings' minimums and maximums.
    started = time.perf_counter()
    one_ms = _cuda_event_ms(fn, device)
    # warmup=0: the caller has warmed up; do_bench still makes DO_BENCH_UNTIMED_CALLS untimed calls.
    samples_ms = do_bench(fn, warmup=0, rep=do_bench_rep_ms(settings, one_ms), return_mode="all")
    wall_s = time.perf_counter() - started
    return Timing.from_samples([ms / 1e3 for ms in samples_ms], timer=TIMER_DO_BENCH,
                               untimed_calls=CUDA_PROBE_CALLS + DO_BENCH_UNTIMED_CALLS, wall_s=wall_s)


def _cuda_event_ms(fn: Callable[[], object], device: torch.device,
                   flush: Callable[[], None] | None = None) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if flush is not None:
        flush()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end)


def _time_cuda_events(fn: Callable[[], object], settings: TimingSettings, device: torch.device) -> Timing:
    started = time.perf_counter()
    flush = cuda_l2_flush(device) if settings.flush_l2 else None
    timing = _repeat(lambda: _cuda_event_ms(fn, device, flush) / 1e3, settings)
    timing.timer = TIMER_EVENTS_FLUSH if flush is not None else TIMER_EVENTS
    timing.wall_s = time.perf_counter() - started
    return timing
