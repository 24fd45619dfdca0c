"""bench.measure.ceilings: positive rates, consistent with the shapes, bytes and times they came from."""

from __future__ import annotations

import time

import pytest
import torch

from bench.measure.ceilings import measure_ceilings


@pytest.fixture(scope="module")
def cpu_ceilings() -> tuple[dict, float]:
    start = time.perf_counter()
    ceilings = measure_ceilings("cpu", "fp32")
    return ceilings, time.perf_counter() - start


def test_cpu_ceilings_are_positive_and_consistent(cpu_ceilings):
    ceilings, _seconds = cpu_ceilings
    n, m, k = ceilings["matmul_shape"]
    assert n == m == k >= 256
    assert ceilings["matmul_flops"] == 2 * n**3
    assert ceilings["matmul_tflops"] > 0
    assert ceilings["matmul_tflops"] == pytest.approx(ceilings["matmul_flops"] / ceilings["matmul_ms"] / 1e9)
    assert ceilings["copy_bytes_moved"] == 2 * ceilings["copy_buffer_bytes"] > 0
    assert ceilings["copy_gbps"] == pytest.approx(ceilings["copy_bytes_moved"] / ceilings["copy_ms"] / 1e6)
    assert ceilings["copy_gbps"] > 0.1  # any memory system moves more than 100 MB/s
    assert ceilings["dtype"] == "float32" and ceilings["device"] == "cpu"
    assert ceilings["torch_threads"] == torch.get_num_threads()


def test_cpu_ceilings_stay_quick(cpu_ceilings):
    _ceilings, seconds = cpu_ceilings
    assert seconds < 10.0  # about 1-2 s on 2 cores; generous for a loaded machine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_ceilings_use_8192_cubed():
    ceilings = measure_ceilings("cuda")
    assert ceilings["matmul_shape"] == [8192, 8192, 8192] and ceilings["dtype"] == "bfloat16"
    assert ceilings["matmul_tflops"] > 1 and ceilings["copy_gbps"] > 100
