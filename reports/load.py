"""Read stored runs for a report: frames and environments through ``bench.sweep.store``, never re-running."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.sweep.store import ROWS_FILE, RunStore


@dataclass(frozen=True)
class Run:
    """One stored run: its directory, frame (typed by ``bench.record``) and environment sessions."""

    path: Path
    run_id: str
    frame: pd.DataFrame
    sessions: list[dict]


def load_run(path: str | Path) -> Run:
    """The run stored in directory ``path`` (``<results>/<run_id>``). Raises ValueError when ``path`` holds
    no ``rows.jsonl``."""
    path = Path(path).resolve()  # "." or a trailing slash still names the run directory
    if not (path / ROWS_FILE).is_file():
        raise ValueError(f"{str(path)!r} is not a run directory (no {ROWS_FILE} in it)")
    store = RunStore(path.parent, path.name)
    frame = store.frame()
    if not frame.empty and "run_id" not in frame:
        frame.insert(0, "run_id", store.run_id)
    return Run(path=path, run_id=store.run_id, frame=frame, sessions=store.environment().get("sessions", []))


def combine(runs: Iterable[Run]) -> pd.DataFrame:
    """The frames of several runs in one frame (rows keep their ``run_id``); empty when none has rows."""
    frames = [run.frame for run in runs if not run.frame.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


def ceilings_by_dtype(ceilings: Mapping | None) -> dict[str, dict]:
    """Ceilings keyed by dtype, each with the matmul rate and the run-wide values (copy GB/s, device).

    Read from the form ``bench.measure.ceilings.measure_ceilings`` stores (``{"matmul": {dtype: {...}},
    "copy_gbps": ..., ...}``) and from two older ones: one flat dict for the run's first dtype
    (``{"dtype": "float32", "matmul_tflops": ..., ...}``) or ``{dtype: {...}, ...}``. Non-dict input -> {}."""
    if not isinstance(ceilings, Mapping) or not ceilings:
        return {}
    per_dtype = ceilings.get("matmul")
    if isinstance(per_dtype, Mapping) and per_dtype:
        shared = {k: v for k, v in ceilings.items() if k != "matmul"}
        return {str(dtype): {**shared, **values} for dtype, values in per_dtype.items() if isinstance(values, Mapping)}
    nested = {str(k): dict(v) for k, v in ceilings.items() if isinstance(v, Mapping)}
    if nested and all(isinstance(v, Mapping) for v in ceilings.values()):
        return nested
    return {str(ceilings.get("dtype", "unknown dtype")): dict(ceilings)}


def run_ceilings(runs: Iterable[Run]) -> dict[tuple[str, str], dict]:
    """{(run_id, dtype): ceilings} over every run, from the first session of each run that has them (a
    resumed run reuses its first session's ceilings)."""
    out: dict[tuple[str, str], dict] = {}
    for run in runs:
        for session in run.sessions:
            found = ceilings_by_dtype(session.get("ceilings"))
            if found:
                for dtype, values in found.items():
                    out.setdefault((run.run_id, dtype), values)
                break
    return out


def device_memory(runs: Iterable[Run]) -> dict[str, int]:
    """{device name: total memory in bytes} from the runs' environment sessions: a GPU's NVML total
    (``gpu.memory_total_bytes``), else a session's own ``memory_total_bytes`` where the environment records
    one (CPU runs: MemTotal, or the cgroup limit when lower). Devices that recorded neither are absent."""
    out: dict[str, int] = {}
    for run in runs:
        for session in run.sessions:
            gpu = session.get("gpu") if isinstance(session.get("gpu"), Mapping) else {}
            total = gpu.get("memory_total_bytes", session.get("memory_total_bytes"))
            name = session.get("device_name")
            if isinstance(total, int | float) and not isinstance(total, bool) and total > 0 and name:
                out.setdefault(str(name), int(total))
    return out
