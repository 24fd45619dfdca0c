"""The command line and the pytest front end, run as a user would (subprocesses where it matters)."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.registry import get_variant
from bench.sweep.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny.toml"


def test_list_shows_every_variant_and_what_runs_here(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "available here" in out and "linear-lrpe-orthogonal@torch-chunked" in out
    assert main(["list", "linear-lrpe-unitary*", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["pe"]) == {"lrpe-unitary"} and "reason" in frame
    # "available here" and the reason are the variant's own probe, whichever machine this is
    assert main(["list", "linear@fla,linear@torch-chunked", "--format", "csv"]) == 0
    listed = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False).set_index("variant")
    assert listed.loc["linear@torch-chunked", "available here"] == "yes"
    fla_missing = get_variant("linear@fla").unavailable_reason()
    assert listed.loc["linear@fla", "available here"] == ("no" if fla_missing else "yes")
    assert listed.loc["linear@fla", "reason"] == (fla_missing or "")


def test_run_stores_rows_prints_a_summary_and_resumes(tmp_path, capsys):
    args = ["run", "--preset", str(TINY), "--results-dir", str(tmp_path), "--run-id", "r", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "median time, ms" in out and f"results: {tmp_path / 'r'}" in out
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}
    assert main(args) == 0  # same run id: resumes, nothing left to do, no row repeated
    assert "4 already done" in capsys.readouterr().err
    assert len(RunStore(tmp_path, "r").rows()) == 4


def test_bad_input_is_named_and_exits_2(tmp_path, capsys):
    assert main(["run", "--preset", str(TINY), "--n", "4x", "--results-dir", str(tmp_path)]) == 2
    assert "'4x'" in capsys.readouterr().err
    assert main(["run", "--preset", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "preset must be one of" in capsys.readouterr().err
    assert main(["run", "--preset", str(TINY), "--variants", "linear@warp", "--results-dir", str(tmp_path)]) == 2
    assert "no variant matches 'linear@warp'" in capsys.readouterr().err


def test_shards_merge_into_the_whole_sweep(tmp_path, capsys):
    base = ["run", "--preset", str(TINY), "--results-dir", str(tmp_path), "--no-progress"]
    assert main([*base, "--shard", "1/2", "--run-id", "s1"]) == 0
    assert main([*base, "--shard", "2/2", "--run-id", "s2"]) == 0
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--into", "all",
                 "--results-dir", str(tmp_path)]) == 0
    merged = pd.read_csv(tmp_path / "all" / "results.csv")
    assert len(merged) == 4 and merged["key"].is_unique
    shards = {s["shard"] for s in json.loads((tmp_path / "all" / "environment.json").read_text())["sessions"]}
    assert shards == {"1/2", "2/2"}


def test_a_run_killed_halfway_resumes_without_losing_or_repeating(tmp_path, child_env):
    """Start a sweep in a subprocess, kill it (SIGKILL) once some rows exist, resume with the same id."""
    args = [sys.executable, "-m", "bench", "run", "--preset", str(TINY), "--n", "64,96,128,160,192,224",
            "--results-dir", str(tmp_path), "--run-id", "k", "--no-progress"]
    rows_path = tmp_path / "k" / "rows.jsonl"
    proc = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_path.exists() and len(rows_path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line)["key"] for line in rows_path.read_text().splitlines() if line.strip()]
    assert 3 <= len(before) < 12, "the run finished or never started before the kill"
    done = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = [r["key"] for r in RunStore(tmp_path, "k").rows()]
    assert after[: len(before)] == before  # nothing lost
    assert len(after) == len(set(after)) == 12  # nothing repeated, everything there


def test_pytest_benchmark_front_end(tmp_path, child_env):
    """`pytest bench/ --benchmark` with a tiny preset: rows in the store and pytest-benchmark JSON."""
    json_path = tmp_path / "bench.json"
    args = [sys.executable, "-m", "pytest", "bench/", "--benchmark", "--preset", str(TINY), "-p", "no:cacheprovider",
            "--results-dir", str(tmp_path), "--run-id", "pb", f"--benchmark-json={json_path}", "-q"]
    done = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout and "attention sweep" in done.stdout
    benchmarks = json.loads(json_path.read_text())["benchmarks"]
    assert len(benchmarks) == 4
    for bench in benchmarks:
        assert bench["extra_info"]["status"] == "ok"
        assert bench["extra_info"]["peak_mem_bytes"] is not None and bench["extra_info"]["flops"] > 0
        assert bench["stats"]["median"] > 0
    frame = pd.read_csv(tmp_path / "pb" / "results.csv")
    # the CPU path of both front ends: perf_counter around each call (pytest-benchmark's default clock)
    assert set(frame["timer"]) == {"pytest-benchmark:time.perf_counter"} and len(frame) == 4
    assert (frame["workload_s"] >= frame["repeats"] * frame["time_min_ms"] / 1e3).all()
    # the store's median is pytest-benchmark's median, in ms
    store = frame.set_index("key")["time_median_ms"]
    for bench in benchmarks:
        assert abs(store[bench["extra_info"]["key"]] - bench["stats"]["median"] * 1e3) < 1e-6


def test_without_the_flag_bench_modules_skip_quickly(child_env):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-rs", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 skipped" in done.stdout and "only with --benchmark" in done.stdout  # sweep, extrapolation, gate
    assert time.monotonic() - started < 60


def test_dry_run_prints_the_plan_with_predictions_and_needs_no_gpu(capsys, tmp_path):
    assert main(["run", "--preset", "full", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN of preset full on an assumed h100" in out and "ESTIMATES" in out
    assert "coverage (predicted ok) by family and encoding" in out and "predicted run time" in out
    assert "linear-lrpe-orthogonal@fla 65536" in out
    assert not any(tmp_path.iterdir())  # nothing was run or stored
    assert main(["run", "--preset", "full", "--dry-run", "--device", "cpu"]) == 2
    assert "--device must be cuda" in capsys.readouterr().err


@pytest.mark.needs_gpu
def test_both_front_ends_time_the_same_way_on_cuda(tmp_path, child_env):
    """On a GPU: the CLI's do_bench and the pytest front end's CUDA event clock give the same medians."""
    common = ["--preset", str(TINY), "--device", "cuda", "--n", "4096", "--heads", "16", "--d", "64",
              "--results-dir", str(tmp_path)]
    assert main(["run", *common, "--run-id", "cli", "--no-progress"]) == 0
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--benchmark", *common, "--run-id", "pt",
                           "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cli = pd.read_csv(tmp_path / "cli" / "results.csv").set_index("key")
    pt = pd.read_csv(tmp_path / "pt" / "results.csv").set_index("key")
    assert set(cli["timer"]) <= {"triton.do_bench+l2flush", "cuda-events+l2flush"}
    assert set(pt["timer"]) == {"pytest-benchmark:cuda_event_clock+l2flush"}
    for key in cli.index:
        assert pt.loc[key, "time_median_ms"] == pytest.approx(cli.loc[key, "time_median_ms"], rel=0.10), key


def test_pytest_front_end_gives_pytest_benchmark_the_cuda_event_clock_on_cuda_only():
    from pytest_benchmark.plugin import pytest_runtest_setup

    from bench.conftest import _timer_marks
    from bench.measure.timing import cuda_event_clock

    assert _timer_marks("cpu") == []
    (mark,) = _timer_marks("cuda")
    assert mark.name == "benchmark" and mark.kwargs == {"timer": cuda_event_clock}

    class Item:  # pytest-benchmark's own check of the marker's keywords (it raises on unknown ones)
        def get_closest_marker(self, name):
            return mark.mark if name == "benchmark" else None

    pytest_runtest_setup(Item())
