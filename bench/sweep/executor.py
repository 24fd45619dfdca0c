"""Run one config: build the variant, make inputs, warm up, time, measure peak memory, count FLOPs.

Every outcome is a row: ``ok`` with measurements, or the status ``classify_failure`` gives the exception
(``oom``, memory released before returning; ``unsupported`` for a kernel's resource limit; ``error``) with the
exception's text. Nothing here raises for a failing config, so a sweep always goes on. The warm-up and the
timed calls run under the CPU allocator regime of ``bench.measure.allocator`` (the memory pass under its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.measure.allocator import minor_faults, timing_regime
from bench.measure.ceilings import matmul_tflops
from bench.measure.flops import minimum_bytes
from bench.measure.memory import (
    MemoryMeasurementUnavailable,
    is_oom,
    is_out_of_resources,
    measure_peak_bytes,
    release_memory,
)
from bench.measure.profiling import profile_callable
from bench.measure.telemetry import TelemetrySampler
from bench.measure.timing import Timing, TimingSettings, steady_call_seconds, time_callable, warmup_durations
from bench.record import is_high_variance
from bench.variant import Variant

Timer = Callable[[Callable[[], object], float], Timing]
"""(workload, seconds of one call after its first: ``steady_call_seconds``) -> Timing. The default is
bench.measure.timing's ``time_callable``; pytest runs pass one that goes through pytest-benchmark; a timer's
``label`` attribute, if it has one, names its clock in the row's ``timer`` column."""

MAX_REASON = 600


def make_inputs(config: BenchConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of shape (batch, heads, n, d) from a seeded standard normal, on the config's device and dtype;
    they require grad for the fwd+bwd pass."""
    generator = torch.Generator(device=config.device).manual_seed(seed)
    shape = (config.batch, config.heads, config.n, config.d)
    tensors = [torch.randn(shape, generator=generator, device=config.device, dtype=config.torch_dtype)
               for _ in range(3)]
    if config.pass_ == "fwd+bwd":
        for t in tensors:
            t.requires_grad_(True)
    return tensors[0], tensors[1], tensors[2]


class Workload:
    """One call of the measured work. fwd runs under no_grad (no activations kept); fwd+bwd clears the
    gradients, then runs the forward and a backward from a fixed dense random gradient of the output, as a
    training step with ``zero_grad(set_to_none=True)`` does: each call allocates fresh gradients and they
    stay alive after it. (A gradient from ``out.sum()`` is a stride-0 tensor, which sends CPU matmuls down a
    path about 10x slower than any real training step would take.)"""

    def __init__(self, core: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 pass_: str) -> None:
        if pass_ not in ("fwd", "fwd+bwd"):
            raise ValueError(f"pass must be 'fwd' or 'fwd+bwd', got {pass_!r}")
        self.core, self.q, self.k, self.v, self.pass_ = core, q, k, v, pass_
        self.leaves = [q, k, v, *(p for p in core.parameters() if p.requires_grad)] if pass_ == "fwd+bwd" else []
        self.grad_out = torch.randn_like(v) if pass_ == "fwd+bwd" else None

    def clear_grads(self) -> None:
        """Drop the gradients a previous call left. The memory pass calls it before reading its baseline, so
        the peak above the baseline includes the gradients the measured call allocates."""
        for leaf in self.leaves:
            leaf.grad = None

    def __call__(self) -> None:
        if self.pass_ == "fwd":
            with torch.no_grad():
                self.core(self.q, self.k, self.v)
            return
        self.clear_grads()
        self.core(self.q, self.k, self.v).backward(self.grad_out)


def make_workload(core: torch.nn.Module, q, k, v, pass_: str) -> Workload:
    """The measured work of one config (see ``Workload``)."""
    return Workload(core, q, k, v, pass_)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(status, reason) of a config whose build or calls raised ``exc``: out of memory -> ``oom``; Triton's
    OutOfResources (a kernel's tile needs more shared memory or registers than the GPU has, whatever N is)
    -> ``unsupported``; anything else -> ``error``. The reason is the exception's text."""
    if is_out_of_resources(exc):
        return "unsupported", describe(exc)
    if is_oom(exc):
        return "oom", describe(exc)
    return "error", describe(exc)


def describe(exc: BaseException) -> str:
    """The exception as one short line for the row's reason."""
    text = " ".join(str(exc).split())
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message if len(message) <= MAX_REASON else message[: MAX_REASON - 3] + "..."


class Executor:
    """Runs configs on one device with fixed timing settings and the ceilings measured at the run's start."""

    def __init__(self, settings: TimingSettings, *, ceilings: dict | None = None, seed: int = 0,
                 profile_dir: Path | None = None, telemetry: bool = True) -> None:
        self.settings = settings
        self.ceilings = ceilings or {}
        self.seed = seed
        self.profile_dir = profile_dir
        self.telemetry = telemetry

    def run(self, config: BenchConfig, variant: Variant, timer: Timer | None = None, *,
            flops: float | None = None) -> dict:
        """Measure ``config``; returns the measurement columns of its row (status, reason, times, memory...).

        ``workload_s`` is the time spent inside calls of the workload (warm-up, timed repeats, memory pass,
        profile): the rest of a config's wall time is the harness's overhead."""
        workload_s = 0.0
        row: dict = {"status": "ok", "reason": None}
        core = q = k = v = fn = None
        allocator = ExitStack()
        try:
            core = variant.build(config, seed=self.seed)
            q, k, v = make_inputs(config, self.seed)
            fn = make_workload(core, q, k, v, config.pass_)

            # Warm-up and timed calls under one allocator regime, whatever earlier configs left behind: the
            # warm-up touches the pages the call needs and the timed calls reuse them. Closed after the timing
            # (the memory pass has its own regime) or, on a failure, by the finally clause.
            row["alloc_regime"] = allocator.enter_context(timing_regime(config.device))
            mark = time.perf_counter()
            durations = warmup_durations(fn, config.device, self.settings)
            calls = len(durations)
            if timer is not None:
                # The warm-up's first call compiles (Triton JIT, fla's autotune, FlexAttention): a timer
                # that sizes its rounds from one call's time gets a call made after it.
                seconds_per_call, extra = steady_call_seconds(fn, config.device, durations)
                calls += extra
            workload_s += time.perf_counter() - mark
            row["warmup_calls"] = calls

            sampler = TelemetrySampler() if (self.telemetry and config.device == "cuda") else None
            if sampler is not None:
                sampler.__enter__()
            faults_before = minor_faults()
            try:
                if timer is None:
                    timing = time_callable(fn, config.device, self.settings)
                else:
                    timing = timer(fn, seconds_per_call)
                row["timer"] = timing.timer
            finally:
                if sampler is not None:
                    sampler.__exit__(None, None, None)
                    row.update({f"gpu_{name}": value for name, value in sampler.summary().items()})
            faults = minor_faults() - faults_before
            allocator.close()
            workload_s += timing.spent_s  # the timer's untimed calls and flushes included
            row.update(time_median_ms=timing.median_ms, time_p20_ms=timing.p20_ms, time_p80_ms=timing.p80_ms,
                       time_min_ms=timing.min_ms, time_iqr_ms=timing.iqr_ms, repeats=timing.repeats,
                       high_variance=is_high_variance(timing.median_ms, timing.iqr_ms))
            if config.device == "cpu":
                # A timer that does not count faults itself (pytest-benchmark) gets the count around all of
                # its calls, its own bookkeeping included.
                row["minor_faults_per_call"] = (timing.minor_faults_per_call
                                                if timing.minor_faults_per_call is not None
                                                else faults / timing.repeats)

            mark = time.perf_counter()
            try:
                # The baseline is read without the previous call's gradients: a training step holds them.
                fn.clear_grads()
                row["peak_mem_bytes"] = measure_peak_bytes(fn, config.device)
            except MemoryMeasurementUnavailable as exc:
                row["peak_mem_bytes"] = None
                row["reason"] = f"peak memory not measured: {exc}"
            workload_s += time.perf_counter() - mark

            if self.profile_dir is not None:
                mark = time.perf_counter()
                with timing_regime(config.device):
                    paths = profile_callable(fn, config.device, self.profile_dir, config.key)
                row["profile_trace"] = str(paths["trace_path"])
                row["profile_table"] = str(paths["table_path"])
                workload_s += time.perf_counter() - mark
            row.update(self._throughput(config, variant, timing, flops))
        except Exception as exc:  # MemoryError included: classify_failure sorts out the statuses
            status, reason = classify_failure(exc)
            row = {"status": status, "reason": reason}
        finally:
            allocator.close()
        if row["status"] != "ok":
            # Only after a failure do gc and the allocator's cache matter: the traceback (dropped at the end
            # of the except clause) may have left the failed call's tensors in reference cycles. On success
            # the tensors die with these names.
            del core, q, k, v, fn
            release_memory(config.device)
        row["workload_s"] = workload_s
        return row

    def _throughput(self, config: BenchConfig, variant: Variant, timing: Timing, flops: float | None) -> dict:
        shape = variant.flop_shape(config)
        if flops is None:  # a sweep passes the planner's count; a direct call counts here
            flops = variant.flops(config)
        nbytes = minimum_bytes(shape, pass_=config.pass_, bytes_per_element=config.torch_dtype.itemsize)
        seconds = timing.median_ms / 1e3
        tflops = flops / seconds / 1e12
        gbps = nbytes / seconds / 1e9
        out = {"flops": flops, "tflops": tflops, "min_bytes": nbytes, "gbps": gbps,
               "tokens_per_s": config.batch * config.n / seconds}
        if ceiling := matmul_tflops(self.ceilings, config.dtype):  # this dtype's own ceiling
            out["frac_matmul_ceiling"] = tflops / ceiling
        if self.ceilings.get("copy_gbps"):
            out["frac_copy_ceiling"] = gbps / self.ceilings["copy_gbps"]
        return out

