"""A sweep session: the spec, its run store, the environment and ceilings, the plan and the budget.

Both front ends drive it: ``python -m bench run`` loops over ``pending()`` with a progress bar, and
``pytest bench/ --benchmark`` turns each planned config into a test. Either way each config goes through
``run_one``, which appends its row to the store before returning it.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from bench.measure.ceilings import matmul_tflops, measure_ceilings
from bench.measure.environment import collect_environment
from bench.measure.timing import DO_BENCH_FLUSH_BYTES, TimingSettings, cuda_timer_name
from bench.process import process_settings
from bench.record import Row
from bench.sweep.executor import Executor, Timer
from bench.sweep.planner import Budget, CallModel, Measured, Planned, Prechecks, memory_limit, parse_shard, plan
from bench.sweep.presets import SweepSpec
from bench.sweep.store import DEFAULT_RESULTS_DIR, MemoryStore, RunStore


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus 4 random hex digits."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _now() -> str:
    """When a row is written: UTC, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def timing_settings(spec: SweepSpec) -> TimingSettings:
    """The device's default timing settings with the preset's [timing] table applied."""
    base = TimingSettings.for_device(spec.device)
    unknown = set(spec.timing) - set(base.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown [timing] keys {sorted(unknown)}; allowed: {sorted(base.__dataclass_fields__)}")
    return TimingSettings(**{**base.__dict__, **spec.timing})


def call_model(device: str, settings: TimingSettings, *, timer: str | None = None,
               copy_gbps: float | None = None) -> CallModel:
    """The planner's call model for the timer the CLI runs on ``device`` (or the named ``timer``); an L2
    flush is taken to write DO_BENCH_FLUSH_BYTES at the measured copy rate ``copy_gbps``."""
    if timer is None:
        timer = cuda_timer_name(settings) if device == "cuda" else "perf_counter"
    flush_s = DO_BENCH_FLUSH_BYTES / (copy_gbps * 1e9) if copy_gbps and device == "cuda" else 0.0
    return CallModel(settings, timer, flush_s)


class Sweep:
    """One session of a run. ``run_id=None`` starts a new run; an existing id resumes it.

    Front ends run it as a context (``with Sweep(...) as sweep:``): within it the gc is frozen
    (``bench.process.process_settings``), after planning, when everything the run keeps alive (torch, the
    probes' compilers) exists, and unfrozen on exit. ``run_one`` also works outside it, only slower."""

    def __init__(self, spec: SweepSpec, *, results_dir: str | Path = DEFAULT_RESULTS_DIR,
                 run_id: str | None = None, shard: str | None = None, profile: bool = False,
                 measure_ceilings_now: bool = True, timer: str | None = None,
                 planned: list[Planned] | None = None, store: RunStore | MemoryStore | None = None) -> None:
        """``timer``: the ``timer`` value the front end's timer will report (the planner counts that timer's
        calls); None for the CLI's own (``time_callable``). ``planned``: the plan of ``spec`` and ``shard``
        when the caller made it already (the pytest front end, at collection); None plans here. ``store``: where
        rows go (a torchrun rank other than 0 keeps them in a ``MemoryStore``); None opens the run's ``RunStore``.

        The run's budget clock starts at the first ``run_one``, not here: ceilings, and whatever a front end
        does between making the session and running it (pytest collects and runs other tests), are not
        charged to the sweep's total limit."""
        self.spec = spec
        self.store = store if store is not None else RunStore(results_dir, run_id or new_run_id())
        self.run_id = self.store.run_id
        self.shard = parse_shard(shard)
        self.settings = timing_settings(spec)
        self.rows: list[Row] = []
        """The run's rows, one per key (``bench.sweep.store.first_per_key``): stored ones first, then this
        session's."""
        self.by_key: dict[str, Row] = {}
        """The same rows by key: what resume skips and ``run_one`` returns for a config that has a row."""
        self.measured = Measured()
        """The rows indexed for the planner's budget."""
        for row in self.store.rows():
            self._keep(row)
        self.ceilings = self._ceilings(measure_ceilings_now)
        env = collect_environment(spec.device)
        env.update(ceilings=self.ceilings, preset=spec.as_dict(), shard=shard, run_id=self.run_id,
                   torch_threads=torch.get_num_threads())
        self.environment = env
        self.store.add_environment(env)
        self.device_name = env.get("device_name") or spec.device
        memory = memory_limit(spec.device, spec.limits.memory_fraction, spec.limits.memory_bytes)
        calls = call_model(spec.device, self.settings, timer=timer, copy_gbps=self.ceilings.get("copy_gbps"))
        self.timer_name = calls.timer
        self.budget = Budget(spec.limits, calls=calls, memory_limit=memory,
                             matmul_tflops={dtype: matmul_tflops(self.ceilings, dtype) for dtype in spec.dtype})
        self.executor = Executor(self.settings, ceilings=self.ceilings, seed=spec.seed,
                                 profile_dir=self.store.path / "profiles" if profile else None)
        self.planned = plan(spec, self.shard) if planned is None else planned
        self._process: ExitStack | None = None
        self.started: float | None = None
        """perf_counter() at the first ``run_one``: the start of the budget's clock."""
        self.prechecks = Prechecks()

    def __enter__(self) -> Sweep:
        """Freeze the gc for the session (``process_settings``); ``__exit__`` unfreezes it."""
        self._process = ExitStack()
        self._process.enter_context(process_settings(freeze_gc=True))
        return self

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    def elapsed_s(self) -> float:
        """Seconds since the first config started (0 before it): what the total limit is checked against."""
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def _ceilings(self, measure: bool) -> dict:
        """Ceilings are measured once per run, the matmul for each of the spec's dtypes: a resumed run reuses
        the first session's and measures only dtypes it lacks."""
        stored: dict = {}
        for session in self.store.environment()["sessions"]:
            if session.get("ceilings"):
                stored = session["ceilings"]
                break
        missing = [d for d in self.spec.dtype if stored.get("copy_gbps") is None
                   or matmul_tflops(stored, d) is None]
        if not measure or not missing:
            return stored
        fresh = measure_ceilings(self.spec.device, missing)
        if stored.get("copy_gbps") is None:
            return fresh
        return {**stored, "matmul": {**stored.get("matmul", {}), **fresh["matmul"]}}

    def pending(self) -> list[Planned]:
        """Planned configs without a row yet (all of them in a new run)."""
        return [p for p in self.planned if p.config.key not in self.by_key]

    def run_one(self, planned: Planned, timer: Timer | None = None) -> Row:
        """Decide, run (if it may), store and return the row of one planned config."""
        started = time.perf_counter()
        if self.started is None:
            self.started = started
        config, variant = planned.config, planned.variant
        if config.key in self.by_key:
            return self.by_key[config.key]
        measured: dict = {}
        status, reason = planned.status, planned.reason
        prediction = None
        if status is None:
            reason, prediction = self.budget.check(planned, self.measured, self.elapsed_s())
            status = "over-budget" if reason else None
        if status is None:
            reason = self.prechecks(planned)
            status = "error" if reason else None
        if status is None:
            measured = self.executor.run(config, variant, timer, flops=planned.flops)
            status, reason = measured.pop("status"), measured.pop("reason")
        values = {
            **self._identity(planned), "status": status, "reason": reason,
            "predicted_ms": prediction.seconds_per_call * 1e3 if prediction and prediction.seconds_per_call
            else None,
            "predicted_peak_bytes": prediction.peak_bytes if prediction else None,
            "finished_utc": _now(),
            **measured,
        }
        if "workload_s" in values:
            values["wall_s"] = time.perf_counter() - started
            values["overhead_s"] = max(0.0, values["wall_s"] - values["workload_s"])
        return self._keep(self.store.append(values))

    def add_rows(self, rows: list[Row]) -> None:
        """Take rows another process measured and stored (a torchrun rank): stored here as they are (that
        rank's store checked them), and seen by the planner's budget."""
        for row in rows:
            if row["key"] not in self.by_key:  # first_per_key: a key's first row stands
                self._keep(self.store.append(row))

    def failed_row(self, planned: Planned, reason: str) -> Row:
        """The ``error`` row of a config whose run raised outside the executor (its rank failed), stored."""
        return self._keep(self.store.append({**self._identity(planned), "status": "error", "reason": reason,
                                             "finished_utc": _now()}))

    def _keep(self, row: Row) -> Row:
        """Take a stored row into the session's view of the run."""
        self.rows.append(row)
        self.by_key[row["key"]] = row
        self.measured.add(row)
        return row

    def _identity(self, planned: Planned) -> dict:
        """The columns that say which config a row is and where it ran."""
        config, variant = planned.config, planned.variant
        return {"task": "speed", "run_id": self.run_id, "key": config.key, **config.as_row(),
                "family": variant.family, "pe": variant.pe, "backend": variant.backend,
                "time_complexity": variant.time_complexity, "device_name": self.device_name,
                "threads": torch.get_num_threads()}

    def finish(self) -> Path:
        """Write the run's frame (results.csv) and return its path."""
        return self.store.write_frame()
