"""bench.measure.telemetry: silent without a GPU, correct summaries from a (simulated) NVML."""

from __future__ import annotations

import sys
import time
import types
from collections import namedtuple

import pytest
import torch

from bench.measure.telemetry import TelemetrySampler, gpu_static_info, nvml_unavailable_reason

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
needs_cuda = pytest.mark.needs_gpu  # skipped without CUDA by tests/conftest.py


def fake_nvml(power_mw: list[int]) -> types.ModuleType:
    """A pynvml with one GPU whose power draw follows ``power_mw`` (then stays at its last value) and
    which does not report utilisation."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    memory = namedtuple("Memory", "total used free")
    readings = iter(power_mw)
    last = [power_mw[0]]

    def power(handle: object) -> int:
        last[0] = next(readings, last[0])
        return last[0]

    def unsupported(handle: object) -> None:
        raise NVMLError("Not Supported")

    nvml.NVMLError = NVMLError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    nvml.state = {"initialised": 0}
    nvml.nvmlInit = lambda: nvml.state.update(initialised=nvml.state["initialised"] + 1)
    nvml.nvmlShutdown = lambda: nvml.state.update(initialised=nvml.state["initialised"] - 1)
    nvml.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"
    nvml.nvmlDeviceGetClockInfo = lambda handle, clock: {1: 1980, 2: 2619}[clock]
    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetTemperature = lambda handle, sensor: 41
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: memory(80 * 2**30, 3 * 2**30, 77 * 2**30)
    nvml.nvmlDeviceGetUtilizationRates = unsupported
    nvml.nvmlDeviceGetName = lambda handle: b"NVIDIA H100 80GB HBM3"  # older bindings return bytes
    nvml.nvmlSystemGetDriverVersion = lambda: "580.65.06"
    nvml.nvmlDeviceGetUUID = lambda handle: "GPU-0000"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 13000
    nvml.nvmlDeviceGetMaxClockInfo = lambda handle, clock: {1: 1980, 2: 2619}[clock]
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda handle: 700_000
    return nvml


@no_cuda
def test_without_a_gpu_there_is_a_reason_and_no_summary():
    with TelemetrySampler(interval_s=0.01) as sampler:
        time.sleep(0.03)
    assert isinstance(sampler.unavailable_reason, str) and sampler.unavailable_reason
    assert sampler.summary() == {}
    assert gpu_static_info() == {}
    assert nvml_unavailable_reason()


def test_without_pynvml_there_is_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with TelemetrySampler() as sampler:
        pass
    assert "pynvml" in sampler.unavailable_reason
    assert sampler.summary() == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fake NVML stands in for a missing GPU")
def test_summary_from_a_simulated_gpu(monkeypatch):
    nvml = fake_nvml([300_000, 500_000, 700_000])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with TelemetrySampler(interval_s=0.005) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert sampler.unavailable_reason is None
    assert summary["samples"] >= 3
    assert summary["power_w_max"] == pytest.approx(700.0)  # NVML's milliwatts as watts
    assert summary["power_w_min"] == pytest.approx(300.0)
    assert 300.0 < summary["power_w_mean"] < 700.0
    assert summary["sm_clock_mhz_mean"] == pytest.approx(1980)
    assert summary["memory_used_bytes_max"] == 3 * 2**30
    assert not any(key.startswith(("gpu_util", "mem_util")) for key in summary)  # unsupported: left out
    assert nvml.state["initialised"] == 0  # NVML shut down again


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fake NVML stands in for a missing GPU")
def test_static_info_from_a_simulated_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([1]))
    info = gpu_static_info(0)
    assert info["name"] == "NVIDIA H100 80GB HBM3"
    assert info["cuda_driver_version"] == "13.0"
    assert info["power_limit_w"] == pytest.approx(700.0)
    assert info["max_sm_clock_mhz"] == 1980
    assert nvml_unavailable_reason(0) is None


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        TelemetrySampler(interval_s=0)


@needs_cuda
def test_samples_a_real_gpu():
    a = torch.randn(4096, 4096, device="cuda")
    with TelemetrySampler(interval_s=0.02) as sampler:
        for _ in range(50):
            a @ a
        torch.cuda.synchronize()
    summary = sampler.summary()
    assert summary["samples"] >= 2 and summary["sm_clock_mhz_max"] > 0
    assert gpu_static_info()["name"]
