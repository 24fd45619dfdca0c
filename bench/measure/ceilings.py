"""The machine's measured ceilings, once per run: dense matmul throughput and memory-copy bandwidth.

Results are reported as fractions of these, so a kernel's number says how close to this machine's limits it
runs rather than how fast the machine is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from bench.config import DTYPES, parse_dtype
from bench.measure.timing import Timing, TimingSettings, time_callable, warmup

GPU_MATMUL_N = 8192
GPU_COPY_BYTES = 2**30
CPU_COPY_BYTES = 128 * 2**20  # 4x this machine's 32 MiB last-level cache: the copy streams from memory
# The CPU matmul doubles until one call takes at least MIN_S, unless the next size (8x the work) would take
# over MAX_S: a slow CPU or dtype still finishes quickly, and a fast one is not dominated by overheads.
CPU_MATMUL_MIN_S = 0.1
CPU_MATMUL_MAX_S = 0.3
CPU_MATMUL_SIZES = (256, 512, 1024, 2048, 4096)

_CPU_SETTINGS = TimingSettings(warmup_min_calls=1, warmup_min_s=0.0, min_repeats=3, max_repeats=20,
                               min_time_s=0.2, max_time_s=0.8, flush_l2=False, median_precision=0.02)


def measure_ceilings(device: str | torch.device,
                     dtypes: str | torch.dtype | Sequence[str | torch.dtype] | None = None) -> dict:
    """Matmul TFLOP/s for each of ``dtypes`` (n x n by n x n, 2 n^3 FLOPs) and copy GB/s (one buffer copied
    into another on the device, counting the bytes read plus the bytes written), from median times.

    GPU: n = 8192 and a 1 GiB buffer. CPU: n from 256..4096 such that one call takes about 0.1-0.3 s (chosen
    per dtype), and a 128 MiB buffer; about 1-3 s per dtype. ``dtypes`` (one or several) defaults to
    bfloat16 on GPU, float32 on CPU. The copy is measured once (bytes do not depend on a dtype). Returns
    ``{"device", "float32_matmul_precision", "torch_threads", "copy_*", "matmul": {dtype name: {"matmul_shape",
    "matmul_flops", "matmul_ms", "matmul_repeats", "matmul_tflops"}}}``; ``matmul_tflops(ceilings, dtype)``
    reads one rate.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if dtypes is None:
        dtypes = [torch.bfloat16 if on_gpu else torch.float32]
    elif isinstance(dtypes, (str, torch.dtype)):
        dtypes = [dtypes]
    resolved = [DTYPES[parse_dtype(d)] if isinstance(d, str) else d for d in dtypes]
    settings = TimingSettings.for_device(device) if on_gpu else _CPU_SETTINGS
    out: dict = {"device": str(device), "float32_matmul_precision": torch.get_float32_matmul_precision(),
                 "torch_threads": torch.get_num_threads(), "matmul": {}}
    for dtype in dict.fromkeys(resolved):
        n = GPU_MATMUL_N if on_gpu else _cpu_matmul_size(dtype)
        out["matmul"][_dtype_name(dtype)] = _matmul_ceiling(n, device, dtype, settings)
    out.update(_copy_ceiling(GPU_COPY_BYTES if on_gpu else CPU_COPY_BYTES, device, settings))
    return out


def matmul_tflops(ceilings: Mapping, dtype: str | torch.dtype) -> float | None:
    """The measured matmul ceiling (TFLOP/s) for ``dtype`` in ``ceilings`` (from ``measure_ceilings``), or
    None when that dtype was not measured."""
    name = _dtype_name(DTYPES[parse_dtype(dtype)] if isinstance(dtype, str) else dtype)
    return (ceilings.get("matmul") or {}).get(name, {}).get("matmul_tflops")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _matmul_ceiling(n: int, device: torch.device, dtype: torch.dtype, settings: TimingSettings) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = _timed(lambda: torch.mm(a, b), device, settings)
    flops = 2 * n**3
    return {"matmul_shape": [n, n, n], "matmul_flops": flops, "matmul_ms": timing.median_ms,
            "matmul_repeats": timing.repeats, "matmul_tflops": flops / (timing.median_ms / 1e3) / 1e12}


def _copy_ceiling(nbytes: int, device: torch.device, settings: TimingSettings) -> dict:
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)  # ones, not empty: the pages really exist
    dst = torch.zeros_like(src)
    timing = _timed(lambda: dst.copy_(src), device, settings)
    moved = 2 * nbytes  # every byte is read once and written once
    return {"copy_buffer_bytes": nbytes, "copy_bytes_moved": moved, "copy_ms": timing.median_ms,
            "copy_repeats": timing.repeats, "copy_gbps": moved / (timing.median_ms / 1e3) / 1e9}


def _timed(fn: Callable[[], object], device: torch.device, settings: TimingSettings) -> Timing:
    warmup(fn, device, settings)
    return time_callable(fn, device, settings)


def _cpu_matmul_size(dtype: torch.dtype) -> int:
    for n in CPU_MATMUL_SIZES:
        a = torch.randn(n, n, dtype=dtype)
        torch.mm(a, a)  # first call: thread pool and kernel selection
        start = time.perf_counter()
        torch.mm(a, a)
        seconds = time.perf_counter() - start
        if seconds >= CPU_MATMUL_MIN_S or 8 * seconds > CPU_MATMUL_MAX_S:
            return n
    return CPU_MATMUL_SIZES[-1]
