"""bench.measure.environment: JSON-serialisable, with the keys the run store relies on."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

import pytest
import torch

from bench.measure.environment import PACKAGES, collect_environment, git_state, package_version

KEYS = ("git_commit", "git_dirty", "versions", "device", "device_name", "cuda_version", "driver_version",
        "cpu_model", "logical_cores", "torch_threads", "hostname", "platform", "utc_time")


@pytest.fixture(scope="module")
def env() -> dict:
    return collect_environment("cpu")


def test_environment_is_json_with_the_expected_keys(env):
    assert json.loads(json.dumps(env)) == env
    missing = [key for key in KEYS if key not in env]
    assert not missing
    assert set(PACKAGES) | {"python"} <= set(env["versions"])
    assert {"flash-linear-attention", "xformers", "flash-attn", "nvidia-ml-py"} <= set(env["versions"])


def test_environment_values_describe_this_process(env):
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["python"] == platform.python_version()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["logical_cores"] == os.cpu_count()
    assert env["cuda_version"] == torch.version.cuda
    assert dt.datetime.fromisoformat(env["utc_time"]).utcoffset() == dt.timedelta(0)
    assert env["device_name"] == env["cpu_model"]
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    # The machine's memory as /proc/meminfo states it (or a lower cgroup limit): what 1M-token predictions
    # in the report are checked against.
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert 0 < env["memory_total_bytes"] <= int(meminfo["MemTotal"].split()[0]) * 1024
    assert env["git_dirty"] in (None, True, False)


def test_missing_things_are_none(tmp_path):
    assert package_version("surely-not-an-installed-distribution") is None
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
