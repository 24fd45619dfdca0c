"""Plan a sweep: statuses known before running (unavailable, unsupported, error), FLOPs, and the budget
(over-budget).

The budget check predicts a config's per-call time and peak memory from the largest smaller config of the
same series already measured in this run, scaled by the variant's complexity class (time ~ batch N^a,
memory ~ batch N^b, a and b 2 for quadratic and 1 for linear), and never below what the FLOP formula at the
measured matmul ceiling of the config's dtype allows (time) or one float32 N x N matrix per head (memory of
quadratic variants). A config's cost is its calls (``CallModel``: warm-up, the timer's own untimed calls,
timed calls, memory pass) at the predicted per-call time, plus a fixed cost per config for backends that
compile per shape (its record's ``compile_seconds``, ``bench.backend.Backend``); the Triton JIT and autotune a
backend does once per series or run (its ``shared_compile``, estimates) count against the run's total limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from bench.config import BenchConfig
from bench.measure.memory import available_memory_bytes
from bench.measure.timing import (
    CUDA_PROBE_CALLS,
    DO_BENCH_UNTIMED_CALLS,
    TIMER_DO_BENCH,
    TimingSettings,
    do_bench_rep_ms,
)
from bench.registry import backend_of, get_variant
from bench.sweep.presets import Limits, SweepSpec
from bench.variant import Variant

EXPONENT = {"quadratic": 2, "linear": 1}

DO_BENCH_ESTIMATE_CALLS = 5
"""do_bench's estimate calls, each after an L2 flush (triton/testing.py)."""
PYTEST_TIMER_PREFIX = "pytest-benchmark:"
"""``timer`` values of the pytest front end, whose rounds are sized from a call after the first."""
MEMORY_PASS_CALLS = 1
"""Calls of the peak-memory pass (bench.measure.memory.measure_peak_bytes)."""
Task = TypeVar("Task")
STOPPING_STATUSES = ("oom", "over-budget")
"""Statuses after which every longer length of a series is over-budget (``first_stop``)."""


@dataclass(frozen=True)
class Planned:
    """A config with what is known before running it: status None means "run it"; ``flops`` of one call by
    ``bench.measure.flops`` (computed once, here, and stored in the row by the executor)."""

    config: BenchConfig
    variant: Variant
    status: str | None = None
    reason: str | None = None
    flops: float | None = None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): the second of four shards (1-based). None -> None."""
    if text is None:
        return None
    try:
        index_text, count_text = str(text).split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"shard must look like i/n with integers, e.g. 1/4, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard i/n needs n >= 1 and 1 <= i <= n, got {text!r}")
    return index, count


def memory_limit(device: str | torch.device, fraction: float, fixed: int | None = None, share: int = 1) -> int:
    """Bytes one config may take at its peak, the memory budget of sweeps and extrapolation runs alike:
    ``fixed`` when given (a preset's or the command line's), else ``fraction`` of the memory available on
    ``device`` now, split ``share`` ways between the configs that run at once (an extrapolation's workers)."""
    if fixed:
        return fixed
    return int(fraction * available_memory_bytes(device) / share)


def take_shard(tasks: Sequence[Task], shard: tuple[int, int] | None) -> list[Task]:
    """The tasks of ``shard`` (i, n): every n-th of ``tasks`` in their order, starting at the i-th (1-based);
    all of them for None. The one rule that splits work between processes, applied to each pipeline's unit:

    - a sweep's task is one config (``plan``, over the plan's order, interleaved by N, so every shard gets
      every family at every N), and a torchrun rank takes its share of the configs pending at one N the same
      way (rank r is shard r + 1 of the world size, ``bench.sweep.distributed``): configs are measured
      independently of each other;
    - an extrapolation's task is one (variant, seed) training and its evaluation at every length and
      protocol (``bench.extrapolation.run.tasks``): the evaluations need the trained model, so splitting
      them from their training would train it again on every shard that evaluates it.
    """
    if shard is None:
        return list(tasks)
    index, count = shard
    return list(tasks[index - 1 :: count])


def plan(spec: SweepSpec, shard: tuple[int, int] | None = None, *, probe: bool = True) -> list[Planned]:
    """Every config of ``spec`` (every n-th of them for a shard) in the spec's order, with unavailable and
    unsupported decided. ``probe=False`` (a dry run for another machine) skips this machine's availability
    probes and the backends' own support checks, keeping only the registry's device, dtype and causal lists."""
    planned = []
    for config in take_shard(spec.configs(), shard):
        variant = get_variant(config.variant)
        # unavailable, unsupported, or error when a probe raised; for another machine only what is declared
        verdict = variant.verdict(config) if probe else variant.declared_verdict(config)
        planned.append(Planned(config, variant, verdict.status, verdict.reason, variant.flops(config)))
    return planned


class Prechecks:
    """The oracle checks of variants declared with ``precheck`` (user kernels): before any config of such a
    variant is timed, ``bench.equivalence.oracle_check`` runs once per (variant, device, dtype, D, causal,
    pass). Calling it with a planned config gives None (no check needed, or it matched) or the reason its
    configs are errors. The sweep (``Sweep.run_one``) and the gate (``bench.gate.run``) both ask it."""

    def __init__(self) -> None:
        self.results: dict[tuple, str | None] = {}

    def __call__(self, planned: Planned) -> str | None:
        if not planned.variant.precheck:
            return None
        config = planned.config
        key = (config.variant, config.device, config.dtype, config.d, config.causal, config.pass_)
        if key not in self.results:
            from bench.equivalence import oracle_check  # it imports the executor, which imports this module

            self.results[key] = oracle_check(planned.variant, config)
        return self.results[key]


def series_key(config: BenchConfig) -> tuple:
    """Configs that differ only in N (and the batch tied to it) form a series."""
    return (config.variant, config.device, config.dtype, config.pass_, config.causal, config.d, config.heads)


def first_stop(smaller: Iterable[Mapping], length: str) -> Mapping | None:
    """The rule both budgets (the sweep's ``Budget`` and the extrapolation's, ``bench.extrapolation.job``) apply
    before any prediction: once a length of a series ran out of memory or was over budget, every longer length
    of it is over-budget too, since it needs more. Returns the shortest such row of ``smaller`` (rows of the
    series at shorter lengths, the length in column ``length``), None when there is none."""
    stops = [r for r in smaller if r.get("status") in STOPPING_STATUSES]
    return min(stops, key=lambda r: r[length]) if stops else None


def repeats_for(settings: TimingSettings, seconds_per_call: float) -> int:
    """Timed calls of a timer that stops on the settings' limits (perf_counter, CUDA events, pytest rounds)
    for calls of ``seconds_per_call``: at least ``min_repeats`` and ``min_time_s``, at most ``max_repeats``
    and the call that crosses ``max_time_s``. The early stop on a known median is not predicted."""
    t = max(seconds_per_call, 1e-9)
    wanted = max(settings.min_repeats, math.ceil(settings.min_time_s / t))
    return max(1, min(wanted, settings.max_repeats, math.ceil(settings.max_time_s / t)))


@dataclass(frozen=True)
class CallModel:
    """How many calls one config makes, given its per-call time: the warm-up (``warmup``: at least
    ``warmup_min_calls`` and ``warmup_min_s``), the timer's untimed calls (do_bench: the probe plus its own 7),
    the timed calls, and the memory pass. ``timer`` is the ``timer`` value the executor will report;
    ``flush_s`` the seconds of one L2 flush (do_bench flushes before its 5 estimate calls and every timed
    call, and sizes its timed calls by the call plus the flush)."""

    settings: TimingSettings
    timer: str
    flush_s: float = 0.0

    def calls(self, seconds_per_call: float) -> dict[str, int]:
        t = max(seconds_per_call, 1e-9)
        warm = max(self.settings.warmup_min_calls, math.ceil(self.settings.warmup_min_s / t))
        if self.timer.startswith(PYTEST_TIMER_PREFIX) and warm < 2:
            warm += 1  # the call after the first that sizes pedantic's rounds (steady_call_seconds)
        if self.timer == TIMER_DO_BENCH:
            untimed = CUDA_PROBE_CALLS + DO_BENCH_UNTIMED_CALLS
            timed = max(1, int(do_bench_rep_ms(self.settings, t * 1e3) / ((t + self.flush_s) * 1e3)))
        else:
            untimed, timed = 0, repeats_for(self.settings, t)
        return {"warmup": warm, "untimed": untimed, "timed": timed, "memory": MEMORY_PASS_CALLS}

    def total_calls(self, seconds_per_call: float) -> int:
        return sum(self.calls(seconds_per_call).values())

    def seconds(self, seconds_per_call: float) -> float:
        """Predicted seconds of all the calls of one config, the flushes included."""
        calls = self.calls(seconds_per_call)
        flushes = calls["timed"] + (DO_BENCH_ESTIMATE_CALLS if self.timer == TIMER_DO_BENCH else 0)
        flushed = self.flush_s if self.timer.endswith("l2flush") else 0.0
        return seconds_per_call * sum(calls.values()) + flushed * flushes


class Measured:
    """The rows of a run that the budget reads, indexed once as they arrive (``add``): speed rows by series
    (``series_key``), and the groups with an ``ok`` row that shared compiles are counted by. A check reads only
    its own series, where it used to rebuild a config from every stored row (quadratic in the run's size).
    Rows of other tasks (extrapolation rows share the store) are not the planner's and are left out."""

    def __init__(self, rows: Iterable[Mapping] = ()) -> None:
        self._series: dict[tuple, list[Mapping]] = {}
        self._compiled_runs: set[tuple] = set()
        for row in rows:
            self.add(row)

    def add(self, row: Mapping) -> None:
        """Index one stored row."""
        if (row.get("task") or "speed") != "speed":
            return
        key = _row_series_key(row)
        self._series.setdefault(key, []).append(row)
        if row.get("status") == "ok":
            # a row's backend column, or its variant's for rows without one; the same fact
            backend = row.get("backend") or get_variant(row["variant"]).backend
            self._compiled_runs.add((backend, row["device"], row["pass"]))

    def series(self, config: BenchConfig) -> list[Mapping]:
        """The rows of ``config``'s series (every N), in the order they were added."""
        return self._series.get(series_key(config), [])

    def compiled(self, scope: str, planned: Planned) -> bool:
        """Whether an ``ok`` row already paid ``planned``'s shared compile of ``scope``: 'series' (an ok row of
        its series) or 'run' (an ok row of its backend on its device and pass)."""
        config = planned.config
        if scope == "series":
            return any(r.get("status") == "ok" for r in self.series(config))
        if scope == "run":
            return (planned.variant.backend, config.device, config.pass_) in self._compiled_runs
        raise ValueError(f"shared compile scope must be 'series' or 'run', got {scope!r}")


@dataclass(frozen=True)
class Prediction:
    seconds_per_call: float | None
    peak_bytes: float | None
    basis: str


class Budget:
    """Decides ``over-budget`` before a config runs.

    calls: the per-config call model. memory_limit: bytes one config may take at its peak. matmul_tflops:
    the measured matmul ceiling by dtype name (missing dtypes: no FLOP floor).
    """

    def __init__(self, limits: Limits, *, calls: CallModel, memory_limit: int,
                 matmul_tflops: Mapping[str, float] | None) -> None:
        self.limits = limits
        self.calls = calls
        self.memory_limit = memory_limit
        self.matmul_tflops = dict(matmul_tflops or {})

    def config_seconds(self, planned: Planned, seconds_per_call: float) -> float:
        """Predicted seconds of one config: its calls plus the backend's per-shape compile time, if it compiles
        per shape (``Backend.compile_seconds``); compile work shared with other configs is
        ``shared_compile_seconds``."""
        config = planned.config
        fixed = backend_of(planned.variant).compile_seconds.get((config.device, config.pass_), 0.0)
        return self.calls.seconds(seconds_per_call) + fixed

    def shared_compile_seconds(self, planned: Planned, measured: Measured) -> tuple[float, list[str]]:
        """(seconds, what) of the ``Backend.shared_compile`` work ``planned`` pays: the entries of its backend whose
        group (its series, or the whole run for the same pass) has no ``ok`` row in ``measured`` yet. A resumed
        run's earlier rows count as compiled, though a new process compiles again (a known under-count)."""
        config = planned.config
        entries = backend_of(planned.variant).shared_compile.get((config.device, config.pass_), ())
        seconds, what = 0.0, []
        for entry in entries:
            if not measured.compiled(entry.scope, planned):
                seconds += entry.seconds
                what.append(f"{entry.what} {entry.seconds:g} s (estimate)")
        return seconds, what

    def predict(self, planned: Planned, measured: Measured) -> Prediction:
        """Per-call seconds and peak bytes of ``planned`` from ``measured`` rows of smaller N (same series)."""
        config, variant = planned.config, planned.variant
        smaller = [r for r in measured.series(config) if r.get("status") == "ok" and r["n"] < config.n]
        time_exp = EXPONENT[variant.time_complexity]
        mem_exp = EXPONENT[variant.memory_complexity]
        flops = planned.flops if planned.flops is not None else variant.flops(config)
        tflops = self.matmul_tflops.get(config.dtype)
        floor_s = flops / (tflops * 1e12) if tflops else None
        floor_bytes = (4.0 * config.batch * config.heads * config.n**2
                       if variant.memory_complexity == "quadratic" else None)
        if not smaller:
            return Prediction(floor_s, floor_bytes, "FLOP formula at the measured matmul ceiling"
                              if floor_s else "no measurement yet")
        base = max(smaller, key=lambda r: r["n"])
        scale_t = (config.batch / base["batch"]) * (config.n / base["n"]) ** time_exp
        scale_m = (config.batch / base["batch"]) * (config.n / base["n"]) ** mem_exp
        seconds = base["time_median_ms"] / 1e3 * scale_t
        peak = base["peak_mem_bytes"] * scale_m if base.get("peak_mem_bytes") is not None else None
        if floor_s is not None:
            seconds = max(seconds, floor_s)
        if peak is not None and floor_bytes is not None:
            peak = max(peak, floor_bytes)
        basis = (f"from N={base['n']} measured at {base['time_median_ms']:.3g} ms, time ~ N^{time_exp}, "
                 f"memory ~ N^{mem_exp}")
        return Prediction(seconds, peak, basis)

    def check(self, planned: Planned, measured: Measured, elapsed_s: float) -> tuple[str | None, Prediction]:
        """(reason, prediction): reason is None when the config fits the limits."""
        pred = self.predict(planned, measured)
        return self.decide(planned, pred, measured, elapsed_s), pred

    def decide(self, planned: Planned, pred: Prediction, measured: Measured, elapsed_s: float) -> str | None:
        """Why ``planned`` with prediction ``pred`` must not run after ``elapsed_s`` seconds, or None."""
        first = first_stop((r for r in measured.series(planned.config) if r["n"] < planned.config.n), "n")
        if first is not None:
            return f"N={first['n']} of this series was {first['status']}; a larger N needs more"
        if pred.peak_bytes is not None and pred.peak_bytes > self.memory_limit:
            return (f"predicted peak memory {pred.peak_bytes / 2**30:.2f} GiB ({pred.basis}) exceeds the "
                    f"limit of {self.memory_limit / 2**30:.2f} GiB")
        if pred.seconds_per_call is not None:
            config_s = self.config_seconds(planned, pred.seconds_per_call)
            calls = self.calls.total_calls(pred.seconds_per_call)
            if config_s > self.limits.config_seconds:
                return (f"predicted {config_s:.1f} s for this config ({calls} calls of "
                        f"{pred.seconds_per_call * 1e3:.3g} ms; {pred.basis}) exceeds the per-config limit "
                        f"of {self.limits.config_seconds:g} s")
            compile_s, compiles = self.shared_compile_seconds(planned, measured)
            if elapsed_s + config_s + compile_s > self.limits.total_seconds:
                extra = f" plus {' and '.join(compiles)}" if compiles else ""
                return (f"predicted {config_s:.1f} s for this config{extra} would end the run after "
                        f"{elapsed_s + config_s + compile_s:.0f} s, past its total limit of "
                        f"{self.limits.total_seconds:g} s")
        elif elapsed_s > self.limits.total_seconds:
            return f"the run has used {elapsed_s:.0f} s of its total limit of {self.limits.total_seconds:g} s"
        return None


def _row_series_key(row: Mapping) -> tuple:
    """``series_key`` of the config a stored speed row measured, read from its columns."""
    return (row["variant"], row["device"], row["dtype"], row["pass"], bool(row["causal"]), row["d"], row["heads"])
