"""``python -m bench selfcheck``: every check that needs the machine's own device, in one command.

On a GPU it runs, in one go: the whole test suite (its CUDA tests included), the equivalence table of every GPU
backend against its oracle (forward and gradients, with max errors), a short sweep through both front ends whose
timings must agree with an independent timer within 10% (``triton.testing.do_bench`` on a GPU,
``torch.utils.benchmark.Timer`` on a CPU), the peak-memory check and the NVML telemetry check. On a CPU it runs
the same checks; those that need a GPU say ``unavailable`` with the reason (FlexAttention's CPU equivalence,
which compiles per shape, is ``skipped`` there). Each check is printed (and flushed) when its group finishes and
the table so far is rewritten to a file, so a run stopped by a time limit keeps what it found; it ends with the
whole table and exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench.process import process_settings

REPO = Path(__file__).resolve().parents[1]
AGREEMENT = 0.10
"""Largest relative difference allowed between a front end's timing and the independent timer's
(``CHECK_STATISTIC``)."""
MEMORY_TOLERANCE = 0.05
CHECK_STATUSES = ("pass", "fail", "unavailable", "skipped")


@dataclass
class Check:
    """One line of the self-check table."""

    group: str
    name: str
    status: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in CHECK_STATUSES:
            raise ValueError(f"check status must be one of {CHECK_STATUSES}, got {self.status!r}")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _no_gpu_reason() -> str:
    return f"no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False)"


# ---- 1. the test suite ------------------------------------------------------------------------------------


GPU_MARKER = "needs_gpu"
"""The pytest marker of tests that need a CUDA GPU (pyproject.toml; tests/conftest.py skips them without one)."""


def needs_gpu_ids(paths: tuple[str, ...]) -> set[str]:
    """Node ids of the tests under ``paths`` marked GPU_MARKER (``pytest --collect-only -m needs_gpu``)."""
    command = [sys.executable, "-m", "pytest", *paths, "--collect-only", "-q", "-m", GPU_MARKER,
               "-p", "no:cacheprovider"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 5):  # 5: nothing collected, i.e. no marked test
        raise RuntimeError(f"collecting the {GPU_MARKER} tests failed (exit {proc.returncode}): "
                           f"{proc.stdout[-500:]}{proc.stderr[-500:]}")
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


def junit_node_id(case: ET.Element) -> str:
    """A JUnit testcase's pytest node id: classname ``tests.test_x`` (or ``tests.test_x.TestClass``) and name
    ``test_y[param]`` -> ``tests/test_x.py::test_y[param]`` (``::TestClass::test_y`` for a class)."""
    parts = (case.get("classname") or "").split(".")
    module = next((i for i in range(len(parts), 0, -1) if (REPO / Path(*parts[:i])).with_suffix(".py").is_file()),
                  len(parts))
    path = "/".join(parts[:module]) + ".py"
    return "::".join([path, *parts[module:], case.get("name") or ""])


def summarise_junit(root: ET.Element, gpu_ids: set[str]) -> tuple[int, list[str], int, int]:
    """(passed, failed names, skipped for lack of a GPU, skipped otherwise) of a JUnit report. A skip counts as
    for lack of a GPU only when the test is marked GPU_MARKER (``gpu_ids``), never by its message: tests
    that skip *because* CUDA is present mention CUDA too."""
    passed, failed, gpu_skipped, other_skipped = 0, [], 0, 0
    for case in root.iter("testcase"):
        node = junit_node_id(case)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(node)
        elif case.find("skipped") is not None:
            if node in gpu_ids:
                gpu_skipped += 1
            else:
                other_skipped += 1
        else:
            passed += 1
    return passed, failed, gpu_skipped, other_skipped


def check_tests(paths: tuple[str, ...] = ("tests",)) -> list[Check]:
    """Run the unit tests in a subprocess and summarise them: failures by name, the tests marked GPU_MARKER
    that skipped (no GPU here) counted apart."""
    gpu_ids = needs_gpu_ids(paths)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if not junit.exists():
            return [Check("tests", "pytest", "fail", f"pytest exited {proc.returncode} without a report: "
                          f"{proc.stdout[-500:]}{proc.stderr[-500:]}")]
        passed, failed, gpu_skipped, other_skipped = summarise_junit(ET.parse(junit).getroot(), gpu_ids)
    out = [Check("tests", "test suite", "fail" if failed else "pass",
                 f"{passed} passed, {len(failed)} failed, {other_skipped} skipped for other reasons, "
                 f"in {seconds:.0f} s" + (f"; failed: {', '.join(failed[:10])}" if failed else ""))]
    if gpu_skipped:
        out.append(Check("tests", "CUDA-only tests", "unavailable",
                         f"{gpu_skipped} tests marked {GPU_MARKER} skipped: {_no_gpu_reason()}"))
    elif torch.cuda.is_available():
        out.append(Check("tests", "CUDA-only tests", "fail" if failed else "pass",
                         f"{len(gpu_ids)} tests marked {GPU_MARKER} ran with the suite above"))
    return out


# ---- 2. equivalence of every GPU backend with its oracle -----------------------------------------------------


def check_equivalence(device: str) -> list[Check]:
    """Forward and gradient errors of every FlashAttention-family and fla backend against its oracle."""
    from bench.equivalence import equivalence_rows, kernel_variants

    checks, names = [], None
    if device == "cpu":
        from bench.registry import backend_of

        # A backend that compiles per dtype and shape (FlexAttention: ~20 s each on 2 cores) says so in its
        # record (cpu_selfcheck=False); python -m bench.equivalence and LRPE_TEST_FLEX=1 tests cover it.
        variants = kernel_variants()
        names = [v.name for v in variants if backend_of(v).cpu_selfcheck]
        checks += [Check("equivalence", v.name, "skipped", "compiles per dtype and shape (~20 s each on 2 "
                         "cores): python -m bench.equivalence runs it")
                   for v in variants if not backend_of(v).cpu_selfcheck]
    for row in equivalence_rows(device, names=names):
        status = {"pass": "pass", "fail": "fail", "error": "fail"}.get(row.status, "unavailable")
        checks.append(Check("equivalence", f"{row.name} {row.dtype} {row.shape}", status, row.describe()))
    return checks


# ---- 3. both front ends against an independent timer ---------------------------------------------------------

FRONT_END_ATTEMPTS = 5
"""A front end passes when one attempt agrees with the independent timer: a systematic accounting error (a
missed synchronisation, setup inside the timed region) fails every attempt, a neighbour's load only some. On
this shared 2-core machine whole seconds run ~40% slow (the independent timer's fastest block read 9.1 ms
and 13.5 ms minutes apart), and about one attempt in three met such a stretch (2026-11-23)."""
CPU_CHECK_THREADS = 1
"""Torch threads for the CPU front-end check, as for the gate (docs/gates.md): with two threads on a shared
2-core machine back-to-back medians of one call moved by 5.3 vs 7.6 ms (selfcheck, 2026-11-23), with one by
about 2%; the check is of the timers' accounting, not of the thread count."""


def _selfcheck_preset(device: str, directory: Path) -> Path:
    """A tiny sweep: the fastest and the exact-softmax family at one N, through both front ends."""
    if device == "cuda":
        variants, dtype, passes = ['"flash@sdpa-flash"', '"linear@torch-chunked"'], "bfloat16", '"fwd", "fwd+bwd"'
    else:
        variants, dtype, passes = ['"linear@torch-chunked"'], "float32", '"fwd"'
    n = 4096
    path = directory / "selfcheck.toml"
    path.write_text(
        f'description = "selfcheck"\ndevice = "{device}"\nvariants = [{", ".join(variants)}]\nn = [{n}]\n'
        f'd = [64]\nheads = 4\nbatch = 1\ndtype = ["{dtype}"]\ncausal = [true]\npass = [{passes}]\n\n'
        f"[limits]\nconfig_seconds = 60\ntotal_seconds = 300\n")
    return path


CHECK_STATISTIC = {"cpu": ("time_min_ms", "min"), "cuda": ("time_median_ms", "median")}
"""What the front-end check compares, per device: on a shared CPU another tenant's work only ever adds time,
and a median taken while it runs moved 50% between adjacent measurements (CI, 2026-11-23: pytest's median
14.9 ms between two 9.6-9.9 ms independent medians), so the CPU check compares the fastest call, which an
accounting error (setup inside the timed region, a call counted twice) moves as much as the median. The
GPU's medians are stable: the check compares them."""


def _independent_ms(config, variant, seed: int) -> tuple[float, str]:
    """The ``CHECK_STATISTIC`` of the same workload by a timer the suite does not use for its rows."""
    from bench.sweep.executor import make_inputs, make_workload

    core = variant.build(config, seed=seed)
    q, k, v = make_inputs(config, seed)
    fn = make_workload(core, q, k, v, config.pass_)
    if config.device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=100, rep=500, return_mode="median")), "triton.testing.do_bench median"
    from torch.utils.benchmark import Timer

    from bench.measure.allocator import timing_regime

    # The same allocator regime as the rows: the check is of the timers, not of glibc's page faults.
    with timing_regime(config.device):
        fn()
        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=1.0)
    # The fastest block's mean per call: at ~10 ms a call, blocks of a few calls.
    return min(measurement.times) * 1e3, "torch.utils.benchmark.Timer.blocked_autorange, fastest block"


def _independent_all(planned, seed: int) -> dict[str, float]:
    from bench.registry import get_variant

    return {p.config.key: _independent_ms(p.config, get_variant(p.config.variant), seed)[0] for p in planned}


def _run_pytest_front_end(preset: Path, directory: Path, run_id: str) -> str | None:
    """``pytest bench/ --benchmark`` on the preset in a subprocess (with this process's torch threads); the
    reason when it failed, else None."""
    command = [sys.executable, "-m", "pytest", "bench/test_sweep.py", "--benchmark", "--preset", str(preset),
               "--results-dir", str(directory), "--run-id", run_id, "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    return None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stdout[-400:]}"


def _front_end_attempt(preset: Path, directory: Path, attempt: int) -> tuple[list, dict, dict]:
    """One attempt: the independent timer brackets each front end (before and after it), so a front end is
    compared with what the machine did around it rather than a minute earlier.

    Returns (planned configs, {front: {key: row}} or {front: reason}, {front: {key: independent ms}})."""
    from bench.sweep.presets import load_spec
    from bench.sweep.session import Sweep
    from bench.sweep.store import RunStore, first_per_key

    sweep = Sweep(load_spec(str(preset)), results_dir=directory, run_id=f"cli-{attempt}")
    seed = sweep.spec.seed
    before = _independent_all(sweep.planned, seed)
    with sweep:  # the process settings `python -m bench run` runs under
        for planned in sweep.pending():
            sweep.run_one(planned)
    between = _independent_all(sweep.planned, seed)
    failure = _run_pytest_front_end(preset, directory, f"pytest-{attempt}")
    after = _independent_all(sweep.planned, seed)
    fronts = {"python -m bench run": first_per_key(RunStore(directory, f"cli-{attempt}").rows()),
              "pytest bench/ --benchmark": failure or first_per_key(RunStore(directory, f"pytest-{attempt}").rows())}
    brackets = {"python -m bench run": {k: (before[k], between[k]) for k in before},
                "pytest bench/ --benchmark": {k: (between[k], after[k]) for k in before}}
    return sweep.planned, fronts, brackets


def check_front_ends(device: str) -> list[Check]:
    """A short sweep through ``python -m bench run``'s path and through ``pytest bench/ --benchmark``; each
    ``CHECK_STATISTIC`` must be within AGREEMENT of an independent timer's of the same workload, taken just before
    and just after it (their mean), in one of FRONT_END_ATTEMPTS attempts. CPU: CPU_CHECK_THREADS threads."""
    how = "triton.testing.do_bench median" if device == "cuda" else "torch.utils.benchmark.Timer, fastest block"
    verdicts: dict[str, Check] = {}
    with process_settings(threads=CPU_CHECK_THREADS if device == "cpu" else None), \
            tempfile.TemporaryDirectory() as tmp:
        for attempt in range(1, FRONT_END_ATTEMPTS + 1):
            planned, fronts, brackets = _front_end_attempt(_selfcheck_preset(device, Path(tmp)), Path(tmp),
                                                           attempt)
            for front, rows in fronts.items():
                for p in planned:
                    name = f"{front}: {p.config.key}"
                    if verdicts.get(name) and verdicts[name].status == "pass":
                        continue
                    verdict = _front_end_verdict(name, rows, p.config.key, brackets[front], how, attempt)
                    if name in verdicts:  # keep what the failed attempts saw
                        verdict.detail += f"; before: {verdicts[name].detail}"
                    verdicts[name] = verdict
            if all(c.status == "pass" for c in verdicts.values()):
                break
    return list(verdicts.values())


def _front_end_verdict(name: str, rows: dict | str, key: str, brackets: dict, how: str, attempt: int) -> Check:
    if isinstance(rows, str):
        return Check("front ends", name, "fail", rows)
    row = rows.get(key)
    if row is None or row["status"] != "ok":
        return Check("front ends", name, "fail", f"no ok row: {row and row['status']}: {row and row['reason']}")
    before, after = brackets[key]
    independent = (before + after) / 2
    column, word = CHECK_STATISTIC[row.get("device") or "cpu"]
    ratio = row[column] / independent
    status = "pass" if abs(ratio - 1) <= AGREEMENT else "fail"
    return Check("front ends", name, status,
                 f"{word} {row[column]:.3f} ms ({row['timer']}) vs {independent:.3f} ms ({how}, mean of "
                 f"{before:.3f} before and {after:.3f} after): ratio {ratio:.3f}, allowed 1 +- {AGREEMENT:.2f} "
                 f"(attempt {attempt} of at most {FRONT_END_ATTEMPTS}; torch threads: {torch.get_num_threads()})")


# ---- 4. memory and telemetry ---------------------------------------------------------------------------------


def check_memory(device: str) -> list[Check]:
    """A call that holds exactly 64 MiB at its peak must measure 64 MiB within MEMORY_TOLERANCE."""
    from bench.measure.memory import MemoryMeasurementUnavailable, measure_peak_bytes

    nbytes = 64 * 2**20

    def allocate() -> None:
        block = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # ones: the pages are touched
        del block

    try:
        measure_peak_bytes(allocate, device)  # first call: lazy initialisation stays out of the reading
        peak = measure_peak_bytes(allocate, device)
    except MemoryMeasurementUnavailable as exc:
        return [Check("memory", f"peak of a 64 MiB allocation on {device}", "unavailable", str(exc))]
    error = abs(peak - nbytes) / nbytes
    status = "pass" if error <= MEMORY_TOLERANCE else "fail"
    return [Check("memory", f"peak of a 64 MiB allocation on {device}", status,
                  f"measured {peak / 2**20:.2f} MiB ({error:.1%} off, allowed {MEMORY_TOLERANCE:.0%})")]


def check_telemetry(device: str) -> list[Check]:
    """NVML samples clocks and power while the GPU works."""
    if device != "cuda":
        return [Check("telemetry", "NVML sampling", "unavailable", _no_gpu_reason())]
    from bench.measure.telemetry import TelemetrySampler

    a = torch.randn(4096, 4096, device=device)
    with TelemetrySampler(interval_s=0.02) as sampler:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            a @ a
        torch.cuda.synchronize()
    if sampler.unavailable_reason:
        return [Check("telemetry", "NVML sampling", "unavailable", sampler.unavailable_reason)]
    summary = sampler.summary()
    ok = summary.get("samples", 0) >= 3 and summary.get("sm_clock_mhz_max", 0) > 0
    return [Check("telemetry", "NVML sampling", "pass" if ok else "fail",
                  ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if k.endswith(("max", "samples"))))]


# ---- the command ---------------------------------------------------------------------------------------------

GROUPS: dict[str, Callable[[str], list[Check]]] = {
    "tests": lambda device: check_tests(),
    "equivalence": check_equivalence,
    "front-ends": check_front_ends,
    "memory": check_memory,
    "telemetry": check_telemetry,
}


def run_selfcheck(groups: list[str] | None = None,
                  on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run the named groups (all by default); an exception inside a group is that group's failure.
    ``on_check`` is called with each check as soon as its group has finished (``run`` prints it then)."""
    device = _device()
    chosen = groups or list(GROUPS)
    unknown = sorted(set(chosen) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown selfcheck groups {unknown}; allowed: {list(GROUPS)}")
    checks: list[Check] = []
    for group in chosen:
        print(f"selfcheck: {group} ...", file=sys.stderr, flush=True)
        try:
            found = GROUPS[group](device)
        except Exception as exc:  # a broken check is a failed check, shown with its exception
            found = [Check(group, group, "fail", f"{type(exc).__name__}: {exc}")]
        for check in found:
            checks.append(check)
            if on_check is not None:
                on_check(check)
    return checks


def table(checks: list[Check]) -> str:
    frame = pd.DataFrame([c.__dict__ for c in checks])
    with pd.option_context("display.max_colwidth", 160, "display.width", 250):
        return frame.to_string(index=False)


def check_line(check: Check) -> str:
    """One check as the line printed the moment it is known: status, group, name, detail."""
    return f"{check.status:<11} {check.group:<11} {check.name}: {check.detail}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=None, help=f"comma list of groups: {','.join(GROUPS)} (default: all)")
    parser.add_argument("--table-file", dest="table_file", default=None,
                        help="the table so far is rewritten here after each check (default: "
                        "results/selfcheck-<UTC time>.txt), so a run stopped by a time limit keeps it")


def run(args: argparse.Namespace) -> int:
    """Run the checks, printing (and flushing) each as it is known and rewriting the table file after each;
    print the table at the end; 1 when any check failed."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    path = Path(args.table_file or REPO / "results" / f"selfcheck-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    so_far: list[Check] = []

    def record(check: Check) -> None:
        so_far.append(check)
        print(check_line(check), flush=True)
        path.write_text(table(so_far) + "\n")

    checks = run_selfcheck(args.only.split(",") if args.only else None, on_check=record)
    print("\n" + table(checks))
    counts = pd.Series([c.status for c in checks]).value_counts().to_dict()
    device = _device()
    print("\n" + ", ".join(f"{counts.get(s, 0)} {s}" for s in CHECK_STATUSES)
          + f"  (device: {device}{'' if device == 'cuda' else '; the GPU half is unavailable here'})")
    print(f"table: {path}", flush=True)
    return 1 if counts.get("fail") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench selfcheck", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
