"""Parametrise bench/test_*.py over the planned sweep; order the workloads; write the run's frame and summary.

``pytest bench/ --benchmark`` runs the speed sweep first, then the extrapolation workload
(``pytest_collection_modifyitems``; pytest would otherwise collect bench/test_extrapolation.py first). Each
workload is set up when its first test runs, not at collection: the sweep's ceilings, store and budget clock
belong to the sweep, so ``--collect-only`` or ``-k extrap`` measure nothing and write no sweep report.
"""

from __future__ import annotations

import pytest

from bench.cli import SWEEP_OPTIONS, overrides_from

SWEEP_KEY = pytest.StashKey()
"""The session's Sweep, once its first test has run."""
PLAN_KEY = pytest.StashKey()
"""(spec, planned configs) of the sweep, made at collection (no measurement)."""
SKIP_REASON = "benchmark modules run only with --benchmark (pytest bench/ --benchmark)"
GATE_REASON = "--gate runs the regression gate (bench/test_gate.py) only"
EXTRAPOLATION_MODULE = "test_extrapolation.py"
"""bench/'s extrapolation tests, which run after every other test (the README's order: the speed sweep, then
extrapolation)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the bench/ workloads beyond the sweep overrides of the root conftest.py (this conftest is
    loaded at start-up whenever bench/ or a file in it is named on the command line)."""
    group = parser.getgroup("lrpe-bench")
    group.addoption("--require-ok", dest="require_ok", action="store_true", default=False,
                    help="fail every sweep config that ends in a status other than ok (over-budget, oom, "
                    "unsupported, unavailable), instead of skipping it: CI's check that the sweep measured "
                    "everything it planned")
    group.addoption("--steps", dest="steps", default=None, type=int,
                    help="extrapolation: training steps per variant (default: the preset's)")
    group.addoption("--eval-lens", dest="eval_lens", default=None,
                    help="extrapolation: eval lengths, e.g. 128,256 (default: --n, else the preset's)")


def _plan(config: pytest.Config):
    """(spec, planned configs) of the sweep: the preset with the command line's overrides, planned with this
    machine's availability probes; nothing measured, nothing written."""
    if PLAN_KEY not in config.stash:
        from bench.sweep.planner import parse_shard, plan
        from bench.sweep.presets import load_spec

        names = [("pass_" if name == "pass" else name) for name in SWEEP_OPTIONS]  # argparse dest of --pass
        options = {name: config.getoption(name) for name in names}
        spec = load_spec(config.getoption("preset"), device=config.getoption("device"),
                         overrides=overrides_from(options))
        config.stash[PLAN_KEY] = (spec, plan(spec, parse_shard(config.getoption("shard"))))
    return config.stash[PLAN_KEY]


def _sweep(config: pytest.Config):
    """The session's Sweep, made when the first sweep test runs (its ceilings are measured then)."""
    if SWEEP_KEY not in config.stash:
        from bench.sweep.session import Sweep
        from bench.sweep.store import DEFAULT_RESULTS_DIR

        spec, planned = _plan(config)
        config.stash[SWEEP_KEY] = Sweep(spec, results_dir=config.getoption("results_dir") or DEFAULT_RESULTS_DIR,
                                        run_id=config.getoption("run_id"), shard=config.getoption("shard"),
                                        profile=config.getoption("profile"), timer=_timer_name(config, spec),
                                        planned=planned)
    return config.stash[SWEEP_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "planned" not in metafunc.fixturenames:
        return
    if not metafunc.config.getoption("benchmark"):
        metafunc.parametrize("planned", [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON),
                                                      id="needs-benchmark-flag")])
        return
    if metafunc.config.getoption("gate"):
        metafunc.parametrize("planned", [pytest.param(None, marks=pytest.mark.skip(reason=GATE_REASON),
                                                      id="gate-only")])
        return
    _, planned = _plan(metafunc.config)
    metafunc.parametrize("planned", [pytest.param(p, marks=_timer_marks(p.config.device)) for p in planned],
                         ids=[p.config.key.replace("|", "-") for p in planned])


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Run the extrapolation workload last (a stable move: every other test keeps its order), so the speed
    sweep, wherever pytest collected it, runs before it."""
    def is_extrapolation(item) -> bool:
        return item.path.name == EXTRAPOLATION_MODULE and item.path.parent.name == "bench"

    items[:] = [i for i in items if not is_extrapolation(i)] + [i for i in items if is_extrapolation(i)]


def _timer_name(config: pytest.Config, spec) -> str:
    """The ``timer`` value bench/test_sweep.py will report for ``spec`` (the planner counts its calls)."""
    if spec.device != "cuda":
        return f"pytest-benchmark:{config.getoption('benchmark_timer')}"
    from bench.sweep.session import timing_settings

    return "pytest-benchmark:cuda_event_clock" + ("+l2flush" if timing_settings(spec).flush_l2 else "")


def _timer_marks(device: str) -> list:
    """On CUDA, pytest-benchmark's clock becomes the CUDA event clock (its own does not wait for the GPU);
    see bench/test_sweep.py and docs/gpu-timing.md."""
    if device != "cuda":
        return []
    from bench.measure.timing import cuda_event_clock

    return [pytest.mark.benchmark(timer=cuda_event_clock)]


@pytest.fixture(scope="session")
def bench_sweep(request: pytest.FixtureRequest):
    """The session's Sweep, run as a context (its process settings) until the test session ends."""
    with _sweep(request.config) as sweep:
        yield sweep


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if SWEEP_KEY not in config.stash:  # no sweep test ran (--collect-only, -k extrap, a setup that failed)
        return
    sweep = config.stash[SWEEP_KEY]
    terminalreporter.write_sep("=", "attention sweep")
    if not sweep.store.rows():
        terminalreporter.write_line(f"no sweep config ran: no report ({sweep.store.path} holds no rows)")
        return
    from reports.render import REPORT_FILE, write_report
    from reports.summary import summary_text

    frame_path = sweep.finish()
    terminalreporter.write_line(summary_text(sweep.store.frame()))
    terminalreporter.write_line(f"results: {sweep.store.path}  ({frame_path.name}, rows.jsonl, environment.json)")
    report = write_report([sweep.store.path], sweep.store.path / REPORT_FILE)
    terminalreporter.write_line(f"report: {report.resolve()}")
