"""``torchrun --nproc-per-node 2 -m bench run`` on CPU (gloo): every config exactly once in rank 0's store, the
report rendered, the same run id resumed; and the option spellings torchrun passes through."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

from bench.cli import build_parser

TINY = Path(__file__).parent / "data" / "tiny.toml"


def torchrun(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bench",
         "run", "--preset", str(TINY), "--seq-lens", "256,512", "--head-dims", "16",
         "--variants", "linear@torch-chunked,softmax@naive", "--results-dir", str(tmp_path), "--run-id", "tr",
         "--no-progress"], env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_write_one_complete_store_and_report_and_resume(tmp_path, child_env):
    done = torchrun(tmp_path, child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks share this machine's CPU" in done.stderr
    run = tmp_path / "tr"
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 4  # 2 variants x 2 lengths, each exactly once
    assert {(r["variant"], r["n"]) for r in rows} == {(v, n) for v in ("linear@torch-chunked", "softmax@naive")
                                                      for n in (256, 512)}
    assert all(r["status"] == "ok" for r in rows)
    assert "softmax@naive" in (run / "report.html").read_text()
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert sorted(s.get("rank", 0) for s in sessions) == [0, 1]
    again = torchrun(tmp_path, child_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 configs, 4 already done" in again.stderr
    assert len((run / "rows.jsonl").read_text().splitlines()) == 4  # nothing run twice


def test_sweep_options_have_spellings_torchrun_passes_through():
    # torchrun's parser refuses --n and --d as ambiguous abbreviations of its own options
    args = build_parser().parse_args(["run", "--seq-lens", "1k..4k", "--head-dims", "64,128"])
    assert (args.n, args.d) == ("1k..4k", "64,128")
    assert build_parser().parse_args(["run", "--n", "1k", "--d", "64"]).n == "1k"


def test_a_config_whose_rank_failed_is_an_error_row_and_the_others_still_run(tmp_path, monkeypatch):
    """A rank whose run of a config raises outside the executor stores an ``error`` row naming the rank and
    the exception, and goes on with its other configs (one gloo process, the path every rank takes)."""
    import socket

    from bench.sweep import distributed
    from bench.sweep.presets import load_spec
    from bench.sweep.session import Sweep

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    real_run_one = Sweep.run_one

    def run_one(self, planned, timer=None):
        if planned.config.variant == "softmax@naive" and planned.config.n == 128:
            raise RuntimeError("the device fell off the bus")
        return real_run_one(self, planned, timer)

    monkeypatch.setattr(Sweep, "run_one", run_one)
    spec = load_spec(str(TINY))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one rank alone on the machine: no warning about shared cores
        sweep = distributed.run_ranks(spec, results_dir=tmp_path, run_id="fail", log=lambda text: None)
    rows = {(r["variant"], r["n"]): r for r in sweep.store.rows()}
    assert len(rows) == 4
    failed = rows[("softmax@naive", 128)]
    assert failed["status"] == "error"
    assert failed["reason"] == "rank 0 failed: RuntimeError: the device fell off the bus"
    assert all(r["status"] == "ok" for key, r in rows.items() if key != ("softmax@naive", 128))
