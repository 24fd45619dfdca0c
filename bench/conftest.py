"""Parametrise bench/test_*.py over the planned sweep; write the run's frame and summary at the end."""

from __future__ import annotations

import pytest

from bench.cli import SWEEP_OPTIONS, overrides_from

SWEEP_KEY = pytest.StashKey()
SKIP_REASON = "benchmark modules run only with --benchmark (pytest bench/ --benchmark)"
GATE_REASON = "--gate runs the regression gate (bench/test_gate.py) only"


def _sweep(config: pytest.Config):
    """The session's Sweep, made once (its ceilings are measured at collection)."""
    if SWEEP_KEY not in config.stash:
        from bench.sweep.presets import load_spec
        from bench.sweep.session import Sweep
        from bench.sweep.store import DEFAULT_RESULTS_DIR

        names = [("pass_" if name == "pass" else name) for name in SWEEP_OPTIONS]  # argparse dest of --pass
        options = {name: config.getoption(name) for name in names}
        spec = load_spec(config.getoption("preset"), device=config.getoption("device"),
                         overrides=overrides_from(options))
        config.stash[SWEEP_KEY] = Sweep(spec, results_dir=config.getoption("results_dir") or DEFAULT_RESULTS_DIR,
                                        run_id=config.getoption("run_id"), shard=config.getoption("shard"),
                                        profile=config.getoption("profile"), timer=_timer_name(config, spec))
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
    planned = _sweep(metafunc.config).planned
    metafunc.parametrize("planned", [pytest.param(p, marks=_timer_marks(p.config.device)) for p in planned],
                         ids=[p.config.key.replace("|", "-") for p in planned])


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
    return _sweep(request.config)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if SWEEP_KEY not in config.stash:
        return
    from reports.render import REPORT_FILE, write_report
    from reports.summary import summary_text

    sweep = config.stash[SWEEP_KEY]
    frame_path = sweep.finish()
    terminalreporter.write_sep("=", "attention sweep")
    terminalreporter.write_line(summary_text(sweep.store.frame()))
    terminalreporter.write_line(f"results: {sweep.store.path}  ({frame_path.name}, rows.jsonl, environment.json)")
    report = write_report([sweep.store.path], sweep.store.path / REPORT_FILE)
    terminalreporter.write_line(f"report: {report.resolve()}")
