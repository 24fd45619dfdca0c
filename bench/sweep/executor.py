"""Run one config: build the variant, make inputs, warm up, time, measure peak memory, count FLOPs.

Every outcome is a row: ``ok`` with measurements, ``oom`` (memory released before returning) or ``error``
with the exception's text. Nothing here raises for a failing config, so a sweep always goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.measure.flops import attention_flops, minimum_bytes
from bench.measure.memory import MemoryMeasurementUnavailable, is_oom, measure_peak_bytes, release_memory
from bench.measure.profiling import profile_callable
from bench.measure.telemetry import TelemetrySampler
from bench.measure.timing import Timing, TimingSettings, time_callable, warmup
from bench.record import is_high_variance
from bench.variant import Variant

Timer = Callable[[Callable[[], object], float], Timing]
"""(workload, seconds of one call measured during warm-up) -> Timing. The default is bench.measure.timing's
``time_callable``; pytest runs pass one that goes through pytest-benchmark; a timer's ``label`` attribute,
if it has one, names its clock in the row's ``timer`` column."""

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


def make_workload(core: torch.nn.Module, q, k, v, pass_: str) -> Callable[[], None]:
    """One call of the measured work. fwd runs under no_grad (no activations kept); fwd+bwd runs the forward
    and a backward from a fixed dense random gradient of the output, clearing gradients first so they are
    not accumulated. (A gradient from ``out.sum()`` is a stride-0 tensor, which sends CPU matmuls down a
    path about 10x slower than any real training step would take.)"""
    if pass_ == "fwd":
        def forward() -> None:
            with torch.no_grad():
                core(q, k, v)
        return forward

    leaves = [q, k, v, *(p for p in core.parameters() if p.requires_grad)]
    grad_out = torch.randn_like(v)

    def forward_backward() -> None:
        for leaf in leaves:
            leaf.grad = None
        core(q, k, v).backward(grad_out)
    return forward_backward


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

    def run(self, config: BenchConfig, variant: Variant, timer: Timer | None = None) -> dict:
        """Measure ``config``; returns the measurement columns of its row (status, reason, times, memory...).

        ``workload_s`` is the time spent inside calls of the workload (warm-up, timed repeats, memory pass,
        profile): the rest of a config's wall time is the harness's overhead."""
        workload_s = 0.0
        row: dict = {"status": "ok", "reason": None}
        core = q = k = v = fn = None
        try:
            core = variant.build(config, seed=self.seed)
            q, k, v = make_inputs(config, self.seed)
            fn = make_workload(core, q, k, v, config.pass_)

            mark = time.perf_counter()
            calls = warmup(fn, config.device, self.settings)
            warm_s = time.perf_counter() - mark
            workload_s += warm_s
            row["warmup_calls"] = calls

            sampler = TelemetrySampler() if (self.telemetry and config.device == "cuda") else None
            if sampler is not None:
                sampler.__enter__()
            try:
                if timer is None:
                    timing = time_callable(fn, config.device, self.settings)
                    row["timer"] = "do_bench/cuda" if config.device == "cuda" else "perf_counter"
                else:
                    timing = timer(fn, warm_s / max(calls, 1))
                    row["timer"] = getattr(timer, "label", "pytest-benchmark")
            finally:
                if sampler is not None:
                    sampler.__exit__(None, None, None)
                    row.update({f"gpu_{name}": value for name, value in sampler.summary().items()})
            workload_s += timing.total_s
            row.update(time_median_ms=timing.median_ms, time_p20_ms=timing.p20_ms, time_p80_ms=timing.p80_ms,
                       time_min_ms=timing.min_ms, time_iqr_ms=timing.iqr_ms, repeats=timing.repeats,
                       high_variance=is_high_variance(timing.median_ms, timing.iqr_ms))

            mark = time.perf_counter()
            try:
                row["peak_mem_bytes"] = measure_peak_bytes(fn, config.device)
            except MemoryMeasurementUnavailable as exc:
                row["peak_mem_bytes"] = None
                row["reason"] = f"peak memory not measured: {exc}"
            workload_s += time.perf_counter() - mark

            if self.profile_dir is not None:
                mark = time.perf_counter()
                paths = profile_callable(fn, config.device, self.profile_dir, config.key)
                row["profile_trace"] = str(paths["trace_path"])
                row["profile_table"] = str(paths["table_path"])
                workload_s += time.perf_counter() - mark
            row.update(self._throughput(config, variant, timing))
        except Exception as exc:  # MemoryError included: is_oom sorts out-of-memory from other failures
            row = {"status": "oom" if is_oom(exc) else "error", "reason": describe(exc)}
        if row["status"] != "ok":
            # Only after a failure do gc and the allocator's cache matter: the traceback (dropped at the end
            # of the except clause) may have left the failed call's tensors in reference cycles. On success
            # the tensors die with these names.
            del core, q, k, v, fn
            release_memory(config.device)
        row["workload_s"] = workload_s
        return row

    def _throughput(self, config: BenchConfig, variant: Variant, timing: Timing) -> dict:
        shape = variant.flop_shape(config)
        flops = attention_flops(shape, time_complexity=variant.time_complexity, causal=config.causal,
                                pass_=config.pass_, chunk_size=variant.chunk_size)
        nbytes = minimum_bytes(shape, pass_=config.pass_, bytes_per_element=config.torch_dtype.itemsize)
        seconds = timing.median_ms / 1e3
        tflops = flops / seconds / 1e12
        gbps = nbytes / seconds / 1e9
        out = {"flops": flops, "tflops": tflops, "min_bytes": nbytes, "gbps": gbps,
               "tokens_per_s": config.batch * config.n / seconds}
        if self.ceilings.get("matmul_tflops"):
            out["frac_matmul_ceiling"] = tflops / self.ceilings["matmul_tflops"]
        if self.ceilings.get("copy_gbps"):
            out["frac_copy_ceiling"] = gbps / self.ceilings["copy_gbps"]
        return out

