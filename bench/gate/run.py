"""Running a gate: every variant of the gate preset timed call by call against the reference, and peak memory
measured per config in a fresh forked process. A gate run is one JSON file, ``<results>/gate-<id>/gate-run.json``.

Timing (one torch thread, CPU time per call, ``bench.measure.cpu_time``). At each N all workloads are built
and warmed up, then ``cycles`` cycles run; in each, every other workload (the variants, and a fixed
"yardstick" computation that is no project code) is called once right after a call of the reference:
``R R A R B R C ... R`` (the first reference call of a cycle is not a sample: see ``_time_interleaved``).
A variant's sample of a cycle is its call time over the mean of the two reference calls either side of it,
so whatever slows the machine for a second (a neighbour's cache traffic, frequency) slows both and cancels.
The reference itself is timed against the yardstick the same way, so a slower reference is seen and named too.

Memory. Each config's peak is the most bytes of tensors its call held at once, counted by PyTorch's
allocator (``bench.measure.memory.allocated_peak_bytes``): exact and the same in every process, where the
resident-set high-water mark the sweep reports moved with the heap's history (a config read 7.0 MiB alone and
8-11 MiB after other variants' timing loops; SPE-sine at 2k anywhere from 75 to 143 MiB), which let a +10%
growth hide in most configs. The pass runs in a child forked before any timing, ``peak_readings`` times (a
reading that differs from the others would show a call whose allocations depend on more than its shapes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.measure.allocator import timing_regime
from bench.measure.cpu_time import LABEL, cpu_seconds
from bench.measure.memory import allocated_peak_bytes
from bench.measure.timing import warmup
from bench.process import process_settings
from bench.registry import get_variant
from bench.sweep.executor import classify_failure, make_inputs, make_workload
from bench.sweep.planner import Prechecks, plan
from bench.sweep.presets import SweepSpec, load_spec
from bench.sweep.session import new_run_id, timing_settings

RUN_FILE = "gate-run.json"
YARDSTICK = "yardstick"
"""The pseudo-variant the reference is timed against: block-diagonal attention in plain torch matmuls
(``yardstick_workload``), which no change to this project's code can make slower."""

Workload = Callable[[], object]
Wrap = Callable[[BenchConfig, Workload, str], Workload]
"""(config, workload, phase) -> the workload measured in ``phase`` ("time" or "memory")."""


@dataclass
class ConfigRun:
    """One config of a gate run. Times in CPU seconds, peaks in bytes above the memory in use before the call.

    times_s: the config's call in each cycle; ref_times_s: for each of those, the mean of the reference calls
    right before and after it (the reference's own entry has every reference call in ``times_s`` and its
    yardstick pairs are the yardstick entry's); peaks_bytes: the memory pass's readings; status: ``ok`` or
    the executor's failure status, with ``reason``."""

    variant: str
    n: int
    d: int
    pass_: str
    dtype: str
    causal: bool
    heads: int
    batch: int
    status: str = "ok"
    reason: str = ""
    times_s: list[float] = field(default_factory=list)
    ref_times_s: list[float] = field(default_factory=list)
    peaks_bytes: list[int] = field(default_factory=list)

    @property
    def config(self) -> BenchConfig:
        return BenchConfig(variant=self.variant, n=self.n, d=self.d, batch=self.batch, heads=self.heads,
                           dtype=self.dtype, causal=self.causal, pass_=self.pass_, device="cpu")

    def fail(self, exc: BaseException) -> None:
        self.status, self.reason = classify_failure(exc)


@dataclass
class GateRun:
    """A whole gate run: what ran (preset, reference, cycles, threads, timer, environment) and each config."""

    preset: dict
    reference: str
    cycles: int
    threads: int
    peak_readings: int
    timer: str = LABEL
    environment: dict = field(default_factory=dict)
    configs: list[ConfigRun] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / RUN_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=1) + "\n")
        partial.replace(path)  # a run killed while writing leaves no half-written file behind
        return path

    @classmethod
    def load(cls, directory: str | Path) -> GateRun:
        path = Path(directory) / RUN_FILE
        if not path.exists():
            raise ValueError(f"{directory} is not a gate run: it has no {RUN_FILE} (gate runs are written by "
                             "`python -m bench gate`)")
        data = json.loads(path.read_text())
        configs = [ConfigRun(**c) for c in data.pop("configs")]
        return cls(**data, configs=configs)


def yardstick_workload(config: BenchConfig, seed: int) -> Workload:
    """Block-diagonal attention scores and outputs over 64-token blocks of seeded q, k, v (B H N D):
    two batched matmuls, the same memory traffic pattern as a chunked linear attention, in plain torch."""
    q, k, v = make_inputs(config, seed)
    block = min(64, config.n)
    shape = (-1, block, config.d)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def call() -> None:
        with torch.no_grad():
            torch.bmm(torch.bmm(q, k.transpose(1, 2)), v)
    return call


def _build(config: BenchConfig, seed: int) -> Workload:
    if config.variant == YARDSTICK:
        return yardstick_workload(config, seed)
    core = get_variant(config.variant).build(config, seed=seed)
    q, k, v = make_inputs(config, seed)
    return make_workload(core, q, k, v, config.pass_)


def identity(config: BenchConfig, fn: Workload, phase: str) -> Workload:
    return fn


def run_gate(spec: SweepSpec | str, directory: str | Path, *, reference: str, cycles: int, threads: int = 1,
             peak_readings: int = 2, wrap: Wrap = identity, log: Callable[[str], None] | None = None) -> GateRun:
    """Measure a gate run of ``spec`` (a SweepSpec or a preset name or path) and save it in ``directory``.

    ``wrap`` maps (config, workload, phase) to the workload that is measured: the identity, except where a
    sensitivity check adds a known amount of work (``bench.gate.sensitivity``)."""
    spec = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    if spec.device != "cpu":
        raise ValueError(f"the gate times by CPU time with one thread; it runs CPU presets only, "
                         f"got device {spec.device!r} in preset {spec.name!r}")
    if reference not in spec.variants:
        raise ValueError(f"the reference {reference} is not among the preset's variants {list(spec.variants)}")
    if cycles < 3 or threads < 1 or peak_readings < 1:
        raise ValueError(f"cycles must be >= 3, threads and peak_readings >= 1; got cycles={cycles}, "
                         f"threads={threads}, peak_readings={peak_readings}")
    from bench.measure.environment import collect_environment

    started, cpu_started = time.perf_counter(), time.process_time()
    with process_settings(threads=threads):
        run = GateRun(preset=spec.as_dict(), reference=reference, cycles=cycles, threads=threads,
                      peak_readings=peak_readings)
        env = collect_environment("cpu")
        run.environment = {k: env.get(k) for k in ("device", "device_name", "cpu_model", "usable_cores",
                                                   "platform", "git_commit")}
        run.environment["torch"] = env.get("versions", {}).get("torch")
        groups = _configs_by_n(spec, reference)
        # What is alive now (torch, the registry) lives for the whole run: frozen, it leaves every later gc
        # pass, and each peak reading's gc.collect() then takes milliseconds instead of ~90 ms.
        with process_settings(freeze_gc=True):
            # Memory first: the children are forked from a process that has not run a workload yet.
            for configs in groups:
                for entry in configs:
                    if entry.variant != YARDSTICK and entry.status == "ok":
                        _measure_peaks(entry, spec.seed, peak_readings, wrap)
            settings = timing_settings(spec)
            for configs in groups:
                mark = time.process_time()
                _time_interleaved(configs, spec.seed, cycles, settings, wrap)
                if log is not None:
                    log(f"gate: N = {configs[0].n}: {len(configs)} workloads x {cycles} cycles in "
                        f"{time.process_time() - mark:.1f} s CPU")
                run.configs.extend(configs)
        run.wall_s = time.perf_counter() - started
        run.cpu_s = time.process_time() - cpu_started
    run.save(Path(directory))
    return run


def run_gate_isolated(spec: SweepSpec | str, directory: str | Path, **kwargs) -> GateRun:
    """``run_gate`` in a forked child of this process, so that each of several runs made by one process
    (``--update --runs K``, the sensitivity runs, tests) forks its memory passes from the same state: after a
    run's timing loops the heap is another (naive softmax at 1k read 34 MiB in the first run of a process and
    35-52 MiB in the next seven). Raises RuntimeError when the child failed, with its exception's text."""
    directory = Path(directory)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        message = ""
        try:
            run_gate(spec, directory, **kwargs)
        except BaseException as exc:  # reported to the parent, which raises it; the child must exit
            message = f"{type(exc).__name__}: {exc}"
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(message)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    _, code = os.waitpid(pid, 0)
    if message or code != 0:
        raise RuntimeError(f"the gate run in {directory} failed: {message or f'child exit status {code}'}")
    return GateRun.load(directory)


def new_gate_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / f"gate-{new_run_id()}"


def _configs_by_n(spec: SweepSpec, reference: str) -> list[list[ConfigRun]]:
    """Per N (ascending), the reference first, then the yardstick (for each (D, dtype, causal, pass) the
    reference has), then the other variants in the preset's order.

    The configs are the pipeline's plan (``bench.sweep.planner.plan``: unavailable and unsupported decided by
    each variant's record), and a user kernel's configs pass its oracle check first (``Prechecks``, as in a
    sweep), so that a wrong kernel is an error the gate fails on, never a budgeted time. A config that may not
    run keeps its status and reason: it is neither timed nor measured, and fails the gate's status check."""
    by_n: dict[int, list[ConfigRun]] = {}
    prechecks = Prechecks()
    for planned in plan(spec):
        config, status, reason = planned.config, planned.status, planned.reason
        if status is None:
            reason = prechecks(planned)
            status = "error" if reason else "ok"
        entry = ConfigRun(variant=config.variant, n=config.n, d=config.d, pass_=config.pass_,
                          dtype=config.dtype, causal=config.causal, heads=config.heads, batch=config.batch,
                          status=status, reason=reason or "")
        by_n.setdefault(config.n, []).append(entry)
    out = []
    for n in sorted(by_n):
        entries = by_n[n]
        refs = [e for e in entries if e.variant == reference]
        yards = [ConfigRun(**{**asdict(e), "variant": YARDSTICK, "status": "ok", "reason": ""}) for e in refs]
        out.append(refs + yards + [e for e in entries if e.variant != reference])
    return out


def _measure_peaks(entry: ConfigRun, seed: int, readings: int, wrap: Wrap) -> None:
    """Fork; in the child build the config, call it once, read its peak ``readings`` times and send them back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read_end)
        try:
            fn = wrap(entry.config, _build(entry.config, seed), "memory")
            fn()
            result = {"peaks_bytes": [allocated_peak_bytes(fn, "cpu") for _ in range(readings)]}
        except BaseException as exc:  # every failure goes to the parent as a status; the child must exit
            status, reason = classify_failure(exc)
            result = {"status": status, "reason": reason}
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(json.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, code = os.waitpid(pid, 0)
    if not text:
        entry.status, entry.reason = "error", f"the memory pass's child process ended with status {code}"
        return
    result = json.loads(text)
    entry.peaks_bytes = result.get("peaks_bytes", [])
    if "status" in result:
        entry.status, entry.reason = result["status"], f"memory pass: {result['reason']}"


def _time_interleaved(configs: list[ConfigRun], seed: int, cycles: int, settings, wrap: Wrap) -> None:
    """Fill ``times_s``/``ref_times_s`` of one N's configs (the reference first): R R A R B ... R per cycle."""
    reference, others = configs[0], configs[1:]
    fns: dict[int, Workload] = {}
    with timing_regime("cpu"):
        for index, entry in enumerate(configs):
            if entry.status != "ok":
                continue
            try:
                fn = wrap(entry.config, _build(entry.config, seed), "time")
                warmup(fn, "cpu", settings)
                fns[index] = fn
            except Exception as exc:  # a variant that cannot run is a status, the others still run
                entry.fail(exc)
        if 0 not in fns:
            for entry in others:
                if entry.status == "ok":
                    entry.status, entry.reason = "error", f"the reference did not run: {reference.reason}"
            return
        live = [i for i in range(1, len(configs)) if i in fns]
        ref_times: list[float] = []
        for _ in range(cycles):
            # Each cycle opens with two reference calls and only the second is a sample, so the first workload
            # (the yardstick) is paired with a reference call that follows a reference call, not the previous
            # cycle's last variant, whose cache traffic (an N x N tensor, say) slowed that call and moved the
            # reference's own ratio (measured: x1.124 against a x1.12 band, tests/test_gate.py).
            cpu_seconds(fns[0])
            ref_times.append(cpu_seconds(fns[0]))
            for index in live:
                entry = configs[index]
                if entry.status != "ok":
                    continue
                try:
                    seconds = cpu_seconds(fns[index])
                except Exception as exc:
                    entry.fail(exc)
                    continue
                ref_times.append(cpu_seconds(fns[0]))
                entry.times_s.append(seconds)
                entry.ref_times_s.append((ref_times[-2] + ref_times[-1]) / 2)
        reference.times_s = ref_times
    for index in live:
        if configs[index].status != "ok":
            configs[index].times_s, configs[index].ref_times_s = [], []
