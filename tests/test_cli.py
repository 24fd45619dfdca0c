"""The command line and the pytest front end, run as a user would (subprocesses where it matters)."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bench.cli import main
from bench.sweep.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny.toml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_list_shows_every_variant_and_what_runs_here(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "available here" in out and "linear-lrpe-orthogonal@torch-chunked" in out
    assert "flash-linear-attention" in out or "linear@fla" in out
    assert main(["list", "linear-lrpe-unitary*", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["pe"]) == {"lrpe-unitary"} and "reason" in frame


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


def test_a_run_killed_halfway_resumes_without_losing_or_repeating(tmp_path):
    """Start a sweep in a subprocess, kill it (SIGKILL) once some rows exist, resume with the same id."""
    args = [sys.executable, "-m", "bench", "run", "--preset", str(TINY), "--n", "64,96,128,160,192,224",
            "--results-dir", str(tmp_path), "--run-id", "k", "--no-progress"]
    rows_path = tmp_path / "k" / "rows.jsonl"
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_path.exists() and len(rows_path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line)["key"] for line in rows_path.read_text().splitlines() if line.strip()]
    assert 3 <= len(before) < 12, "the run finished or never started before the kill"
    done = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = [r["key"] for r in RunStore(tmp_path, "k").rows()]
    assert after[: len(before)] == before  # nothing lost
    assert len(after) == len(set(after)) == 12  # nothing repeated, everything there


def test_pytest_benchmark_front_end(tmp_path):
    """`pytest bench/ --benchmark` with a tiny preset: rows in the store and pytest-benchmark JSON."""
    json_path = tmp_path / "bench.json"
    args = [sys.executable, "-m", "pytest", "bench/", "--benchmark", "--preset", str(TINY), "-p", "no:cacheprovider",
            "--results-dir", str(tmp_path), "--run-id", "pb", f"--benchmark-json={json_path}", "-q"]
    done = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout and "attention sweep" in done.stdout
    benchmarks = json.loads(json_path.read_text())["benchmarks"]
    assert len(benchmarks) == 4
    for bench in benchmarks:
        assert bench["extra_info"]["status"] == "ok"
        assert bench["extra_info"]["peak_mem_bytes"] is not None and bench["extra_info"]["flops"] > 0
        assert bench["stats"]["median"] > 0
    frame = pd.read_csv(tmp_path / "pb" / "results.csv")
    assert set(frame["timer"]) == {"pytest-benchmark"} and len(frame) == 4
    # the store's median is pytest-benchmark's median, in ms
    store = frame.set_index("key")["time_median_ms"]
    for bench in benchmarks:
        assert abs(store[bench["extra_info"]["key"]] - bench["stats"]["median"] * 1e3) < 1e-6


def test_without_the_flag_bench_modules_skip_quickly():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-rs", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 skipped" in done.stdout and "only with --benchmark" in done.stdout  # the sweep and the gate
    assert time.monotonic() - started < 60
