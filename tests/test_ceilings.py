"""bench.measure.ceilings: positive rates, consistent with the shapes, bytes and times they came from, one
matmul ceiling per dtype of the run, and each row compared with its own dtype's ceiling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from bench.measure.ceilings import matmul_tflops, measure_ceilings
from bench.sweep.presets import load_spec
from bench.sweep.session import Sweep

TINY = Path(__file__).parent / "data" / "tiny.toml"


@pytest.fixture(scope="module")
def cpu_ceilings() -> tuple[dict, float]:
    start = time.perf_counter()
    ceilings = measure_ceilings("cpu", ["fp32", "float64"])
    return ceilings, time.perf_counter() - start


def test_cpu_ceilings_are_positive_and_consistent(cpu_ceilings):
    ceilings, _seconds = cpu_ceilings
    assert set(ceilings["matmul"]) == {"float32", "float64"}
    for matmul in ceilings["matmul"].values():
        n, m, k = matmul["matmul_shape"]
        assert n == m == k >= 256
        assert matmul["matmul_flops"] == 2 * n**3
        assert matmul["matmul_tflops"] > 0
        assert matmul["matmul_tflops"] == pytest.approx(matmul["matmul_flops"] / matmul["matmul_ms"] / 1e9)
    assert ceilings["copy_bytes_moved"] == 2 * ceilings["copy_buffer_bytes"] > 0
    assert ceilings["copy_gbps"] == pytest.approx(ceilings["copy_bytes_moved"] / ceilings["copy_ms"] / 1e6)
    assert ceilings["copy_gbps"] > 0.1  # any memory system moves more than 100 MB/s
    assert ceilings["device"] == "cpu" and ceilings["torch_threads"] == torch.get_num_threads()


def test_float64_matmul_is_slower_than_float32(cpu_ceilings):
    # Each dtype is really measured: float64 moves twice the bytes and does half the SIMD lanes of float32.
    ceilings, _seconds = cpu_ceilings
    assert matmul_tflops(ceilings, "float64") < matmul_tflops(ceilings, "fp32")
    assert matmul_tflops(ceilings, torch.float64) == ceilings["matmul"]["float64"]["matmul_tflops"]
    assert matmul_tflops(ceilings, "bfloat16") is None  # not measured: no ceiling, not another dtype's


def test_cpu_ceilings_stay_quick(cpu_ceilings):
    _ceilings, seconds = cpu_ceilings
    assert seconds < 20.0  # about 1-3 s per dtype on 2 cores; generous for a loaded machine


def test_each_row_uses_its_own_dtypes_ceiling(tmp_path):
    spec = load_spec(str(TINY), overrides={"dtype": "float32,float64", "variants": "linear@torch-chunked",
                                           "n": "64"})
    sweep = Sweep(spec, results_dir=tmp_path, run_id="dtypes")
    stored = sweep.store.environment()["sessions"][0]["ceilings"]
    assert set(stored["matmul"]) == {"float32", "float64"}
    rows = [sweep.run_one(p) for p in sweep.pending()]
    assert {r["dtype"] for r in rows} == {"float32", "float64"}
    for row in rows:
        assert row["status"] == "ok"
        ceiling = stored["matmul"][row["dtype"]]["matmul_tflops"]
        assert row["frac_matmul_ceiling"] == pytest.approx(row["tflops"] / ceiling)


def test_a_resumed_run_measures_only_the_dtypes_it_lacks(tmp_path):
    first = Sweep(load_spec(str(TINY), overrides={"n": "64"}), results_dir=tmp_path, run_id="r")
    again = Sweep(load_spec(str(TINY), overrides={"n": "64", "dtype": "float32,float64"}),
                  results_dir=tmp_path, run_id="r")
    assert again.ceilings["matmul"]["float32"] == first.ceilings["matmul"]["float32"]  # reused, not remeasured
    assert matmul_tflops(again.ceilings, "float64") > 0


@pytest.mark.needs_gpu
def test_gpu_ceilings_use_8192_cubed_per_dtype():
    ceilings = measure_ceilings("cuda", ["bfloat16", "float32"])
    assert ceilings["matmul"]["bfloat16"]["matmul_shape"] == [8192, 8192, 8192]
    assert matmul_tflops(ceilings, "bfloat16") > matmul_tflops(ceilings, "float32") > 1
    assert ceilings["copy_gbps"] > 100
