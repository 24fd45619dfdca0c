"""The extrapolation workload under pytest: ``pytest bench/ --benchmark [--variants ...]``.

One test per variant of the extrapolation preset: it trains the variant (or resumes it) and evaluates it at
every length and protocol, appending the rows to the run's store exactly as ``python -m bench extrapolate``
does. Without ``--preset`` the default runs (extrap-quick on CPU, extrap-full with CUDA), so one
``pytest bench/ --benchmark`` runs both the speed sweep and this; a speed preset (``--preset quick``) skips
these tests; an extrapolation preset (extrap-quick, extrap-full or a .toml with an ``[eval]`` table) is for
this file alone: ``pytest bench/test_extrapolation.py --benchmark --preset extrap-full`` (the speed sweep
does not know it). ``--variants``, ``--device``, ``--seed``, ``--steps``, ``--run-id``, ``--results-dir``
and ``--shard`` apply as on the command line; the eval lengths are ``--eval-lens``, else ``--n`` (which the
speed sweep reads as its N too).
These tests run after the speed sweep's (bench/conftest.py orders them), and the run (corpus, store,
environment) is made when the first of them runs, not at collection.
A variant with an ``error`` row fails; the table of perplexity against eval length prints at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RUN_KEY = pytest.StashKey()
SPEC_KEY = pytest.StashKey()


def _extrap_preset(preset: str | None) -> str | None:
    from bench.extrapolation.spec import preset_names

    if preset is None:
        return None
    if preset in preset_names() or (preset.endswith(".toml") and Path(preset).is_file()
                                    and "[eval]" in Path(preset).read_text()):
        return preset
    return None


def _spec(config: pytest.Config):
    """The extrapolation spec of the command line (no corpus read, nothing written)."""
    if SPEC_KEY not in config.stash:
        from bench.extrapolation.spec import load_extrap_spec

        config.stash[SPEC_KEY] = load_extrap_spec(
            _extrap_preset(config.getoption("preset")), device=config.getoption("device"),
            variants=config.getoption("variants"),
            lengths=config.getoption("eval_lens", None) or config.getoption("n"),
            steps=config.getoption("steps", None), seed=config.getoption("seed"))
    return config.stash[SPEC_KEY]


def _variants(config: pytest.Config) -> list[str]:
    """The variants of the trainings this shard runs (``bench.extrapolation.run.tasks``, as
    ``ExtrapolationRun`` selects them)."""
    from bench.extrapolation.run import tasks
    from bench.sweep.planner import parse_shard

    shard = parse_shard(config.getoption("shard"))
    return list(dict.fromkeys(variant for variant, _ in tasks(_spec(config), shard)))


def _run(config: pytest.Config):
    """The session's ExtrapolationRun, made when the first extrapolation test runs."""
    if RUN_KEY not in config.stash:
        from bench.extrapolation.run import ExtrapolationRun
        from bench.sweep.store import DEFAULT_RESULTS_DIR

        config.stash[RUN_KEY] = ExtrapolationRun(
            _spec(config), results_dir=config.getoption("results_dir") or DEFAULT_RESULTS_DIR,
            run_id=config.getoption("run_id"), shard=config.getoption("shard"), progress=False)
    return config.stash[RUN_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "extrap_variant" not in metafunc.fixturenames:
        return
    if not metafunc.config.getoption("benchmark"):
        from bench.conftest import SKIP_REASON

        metafunc.parametrize("extrap_variant", [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON),
                                                             id="needs-benchmark-flag")])
        return
    preset = metafunc.config.getoption("preset")
    if preset is not None and _extrap_preset(preset) is None:
        reason = (f"--preset {preset} is a speed-sweep preset; the extrapolation workload runs without --preset "
                  "or with an extrapolation one: pytest bench/test_extrapolation.py --benchmark --preset extrap-quick")
        metafunc.parametrize("extrap_variant", [pytest.param(None, marks=pytest.mark.skip(reason=reason),
                                                             id="speed-preset")])
        return
    metafunc.parametrize("extrap_variant", _variants(metafunc.config))


@pytest.fixture(scope="module")
def extrap_run(request: pytest.FixtureRequest):
    run = _run(request.config)
    yield run
    if run.rank == 0:
        from bench.extrapolation.table import extrapolation_table

        run.store.write_frame()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():  # print past pytest's output capture
            reporter.write_sep("=", "extrapolation")
            reporter.write_line(extrapolation_table(run.store.frame()))
            reporter.write_line(f"results: {run.store.path}  (rows.jsonl, results.csv, extrapolation/<variant>/)")


def test_extrapolation(extrap_variant: str, extrap_run) -> None:
    extrap_run.run_variant(extrap_variant)
    rows = [r for r in extrap_run.store.rows() if r.get("variant") == extrap_variant
            and r.get("task") == "extrapolation"]
    errors = [f"{r['eval_len']} {r['protocol']}: {r['reason']}" for r in rows if r["status"] == "error"]
    if errors:
        pytest.fail("; ".join(errors))
    if not any(r["status"] == "ok" for r in rows):
        pytest.skip(", ".join(sorted({f"{r['status']}: {r['reason']}" for r in rows})))
    assert all(0 < r["perplexity"] <= 256 * 1.5 for r in rows if r["status"] == "ok")
