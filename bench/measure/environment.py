"""What a run was measured on: code version, package versions, device, driver, CPU and threads.

Everything here is plain JSON (strings, numbers, booleans, None, lists, dicts) so it can be stored once per
run beside the results. A thing that cannot be found is None, never a guess.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from bench.measure.allocator import regime_record
from bench.measure.memory import total_memory_bytes
from bench.measure.telemetry import gpu_static_info, nvml_unavailable_reason

# Distribution names as pip knows them: reading their metadata imports nothing (xformers and flash-attn
# can print errors or take seconds to import).
PACKAGES = ("torch", "triton", "flash-linear-attention", "fla-core", "xformers", "flash-attn", "pandas",
            "numpy", "pytest-benchmark", "nvidia-ml-py")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
_CODE_DIR = Path(__file__).resolve().parent


def collect_environment(device: str | torch.device) -> dict:
    """The run's environment as a JSON-serialisable dict (keys listed in the module's tests)."""
    device = torch.device(device)
    env: dict = {
        **git_state(_CODE_DIR),
        "versions": {"python": platform.python_version(),
                     **{name: package_version(name) for name in PACKAGES}},
        "device": str(device),
        "device_name": _device_name(device),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # What the report's 128k / 1M predictions are checked against (a GPU's own total is under "gpu").
        "memory_total_bytes": total_memory_bytes(device) if device.type == "cpu" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        # The CPU allocator and the regimes timed calls and memory passes run under (docs/cpu-timing.md).
        "allocator": regime_record(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "utc_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        gpu = gpu_static_info(index)
        env["gpu"] = gpu or None
        env["gpu_unavailable_reason"] = None if gpu else nvml_unavailable_reason(index)
        env["driver_version"] = gpu.get("driver_version")
    else:
        env["gpu"] = env["gpu_unavailable_reason"] = env["driver_version"] = None
    return env


def git_state(path: Path) -> dict:
    """``git_commit`` (HEAD's hash) and ``git_dirty`` (tracked files changed) of the repository holding
    ``path``; None for each that git cannot tell (not a repository, no commit yet, git absent)."""
    commit = _git(path, "rev-parse", "HEAD")
    # --no-optional-locks: status would otherwise refresh the index, i.e. write to the repository.
    status = _git(path, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution (pip name), or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _device_name(device: torch.device) -> str | None:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
    if device.type == "cpu":
        return cpu_model()
    return None


def _git(path: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
