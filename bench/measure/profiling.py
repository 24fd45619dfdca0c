"""A torch.profiler trace of a few calls of one callable, with the top operators by self time.

Writes ``<name>.trace.json`` (Chrome trace format: open it in https://ui.perfetto.dev or chrome://tracing)
and ``<name>.top.txt`` (PyTorch's operator table), and returns the table's top rows as data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.measure.timing import synchronize

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120


def profile_callable(fn: Callable[[], object], device: str | torch.device, out_dir: Path, name: str, *,
                     steps: int = 3, row_limit: int = 25, warmup_steps: int = 1) -> dict:
    """Profile ``steps`` calls of ``fn`` (after ``warmup_steps`` untraced calls, so lazy initialisation and
    autotuning stay out of the trace) with CPU activity, plus CUDA kernels on a CUDA device.

    Returns ``trace_path`` and ``table_path`` (Paths), ``sort_by`` (the self-time column that ranks the
    rows: device time on CUDA, CPU time otherwise) and ``top``: up to ``row_limit`` rows of ``name``,
    ``calls``, ``self_cpu_us``, ``total_cpu_us`` and, on CUDA, ``self_device_us``, ``total_device_us``
    (microseconds summed over the steps).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    trace_path = out_dir / f"{stem}.trace.json"
    table_path = out_dir / f"{stem}.top.txt"

    for _ in range(warmup_steps):
        fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities) as prof:
        for step in range(steps):
            with record_function(f"step {step}"):
                fn()
            synchronize(device)  # so each step's kernels fall inside the profile
    prof.export_chrome_trace(str(trace_path))

    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    averages = prof.key_averages()
    ranked = sorted(averages, key=lambda event: getattr(event, sort_by), reverse=True)
    top = [_row(event, on_gpu) for event in ranked[:row_limit]]
    table = averages.table(sort_by=sort_by, row_limit=row_limit)
    table_path.write_text(f"{name}\n{steps} steps, sorted by {sort_by}\n{table}\n")
    return {"trace_path": trace_path, "table_path": table_path, "sort_by": sort_by, "steps": steps,
            "top": top}


def safe_name(name: str) -> str:
    """``name`` as a file name: runs of characters other than letters, digits, '.', '_' and '-' become '_';
    when anything changed, 8 hex digits of the name's hash keep different names apart."""
    safe = _UNSAFE.sub("_", name).strip("._")[:_MAX_NAME] or "profile"
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _row(event: object, on_gpu: bool) -> dict:
    row = {"name": event.key, "calls": event.count, "self_cpu_us": event.self_cpu_time_total,
           "total_cpu_us": event.cpu_time_total}
    if on_gpu:
        row.update(self_device_us=event.self_device_time_total, total_device_us=event.device_time_total)
    return row
