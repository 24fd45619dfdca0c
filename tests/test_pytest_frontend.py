"""``pytest bench/ --benchmark`` as a user runs it: the workloads' order, when their clocks start, what a
selection that runs no sweep config prints, and ``--require-ok`` (CI's check that the sweep measured all)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.sweep.presets import load_spec
from bench.sweep.session import Sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny.toml"


def _pytest_bench(child_env, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "bench/", "--benchmark", "-p", "no:cacheprovider",
               "--results-dir", str(tmp_path / "results"), *args]
    return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)


def test_sweep_is_ordered_before_extrapolation_and_collecting_measures_nothing(tmp_path, child_env):
    # Without --preset both workloads are collected; pytest collects bench/test_extrapolation.py first.
    done = _pytest_bench(child_env, tmp_path, "--collect-only", "-q", "--n", "256",
                         "--variants", "linear@torch-chunked,linear-lrpe-orthogonal@torch-chunked")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    sweep = [i for i, line in enumerate(ids) if "test_sweep.py" in line]
    extrapolation = [i for i, line in enumerate(ids) if "test_extrapolation.py" in line]
    assert len(sweep) == 2 and len(extrapolation) == 2, ids
    assert max(sweep) < min(extrapolation), ids
    # Collection plans; it neither measures ceilings nor opens a run store, and prints no report.
    assert not (tmp_path / "results").exists()
    assert "attention sweep" not in done.stdout


def test_a_selection_without_sweep_configs_ends_without_a_report_or_traceback(tmp_path, child_env):
    done = _pytest_bench(child_env, tmp_path, "-q", "-k", "test_gate", "--preset", str(TINY))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "1 skipped" in done.stdout
    assert "attention sweep" not in done.stdout and not (tmp_path / "results").exists()


def test_require_ok_fails_every_config_that_was_not_measured(tmp_path, child_env):
    # A per-config limit no config can meet: every one is over-budget before it runs.
    args = ("-q", "-k", "test_attention", "--preset", str(TINY), "--config-time-limit", "1e-9", "--run-id", "strict")
    skipped = _pytest_bench(child_env, tmp_path, *args)
    assert skipped.returncode == 0 and "4 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    strict = _pytest_bench(child_env, tmp_path, *args[:-1], "strict-2", "--require-ok")
    assert strict.returncode == 1 and "4 failed" in strict.stdout, strict.stdout + strict.stderr
    assert "--require-ok: every planned config must be measured; over-budget" in strict.stdout


def test_the_sweep_budget_clock_starts_at_its_first_config(tmp_path):
    # A total limit of 1 s; the session waits 1.2 s between being made and running (as pytest does while it
    # collects and runs other tests). Counting from construction, the first config would be over-budget.
    spec = load_spec(str(TINY), overrides={"time_limit": 1.0, "variants": "linear@torch-chunked", "n": "64"})
    sweep = Sweep(spec, results_dir=tmp_path, run_id="clock", measure_ceilings_now=False)
    time.sleep(1.2)
    assert sweep.elapsed_s() == 0.0
    (planned,) = sweep.pending()
    row = sweep.run_one(planned)
    assert row["status"] == "ok", row["reason"]
    assert 0 < sweep.elapsed_s() < 1.2


def test_child_processes_keep_the_pythonpath_they_inherit(tmp_path, monkeypatch, fresh_python, child_env):
    # scripts/gpu_session.sh puts the wheels an offline GPU machine lacks on PYTHONPATH; a child that replaced
    # it could import this checkout but not them.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "carried_wheel.py").write_text("NAME = 'carried'\n")
    monkeypatch.setenv("PYTHONPATH", str(wheels))
    assert fresh_python("import bench, carried_wheel; print(carried_wheel.NAME)").strip() == "carried"
    assert child_env()["PYTHONPATH"].split(os.pathsep) == [str(ROOT), str(wheels)]
