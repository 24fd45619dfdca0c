"""The result record: every column a run stores, with its type, unit and meaning, in one place.

A producer (a sweep session, a torchrun rank, an extrapolation training, a merge) hands a plain dict to its run
store (``bench.sweep.store``); the store validates it, once (``validate_row``), and writes the resulting ``Row``.
Rows read back from a store are ``Row``s without a second check (``stored_row``: the store checked them when it
wrote them), so a row that travels on (from a torchrun rank to rank 0, from a shard into a merge) is not checked
again, and ``to_frame`` only types them into a pandas frame whose columns follow this schema's order. The
store, the frame, the terminal summary, the HTML report and the gates all read these names; a column that is not
declared here cannot be stored (``validate_row`` raises), so a typo or a new measurement without a definition
fails at once.

Two tasks share the store: ``speed`` rows (one per sweep config) and ``extrapolation`` rows (one per
variant, train length, eval length and protocol); the ``task`` column tells them apart and each column names
the tasks it belongs to. Units are in the column names where they are not obvious (``_ms``, ``_bytes``,
``_s``), and restated in ``Column.unit``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

TASKS: tuple[str, ...] = ("speed", "extrapolation")
STATUSES: tuple[str, ...] = ("ok", "oom", "over-budget", "unsupported", "unavailable", "error")
"""ok: measured. oom: ran out of memory (released before the next config). over-budget: skipped by the
planner, the prediction in the reason. unsupported: the variant cannot take this config (a documented limit:
head dim, dtype, mask, a kernel's tile/shared-memory limit). unavailable: its package or hardware is missing.
error: anything else, the exception kept in the reason (a bug until shown otherwise)."""

HIGH_VARIANCE_IQR = 0.1
"""A timing is flagged ``high_variance`` when its interquartile range exceeds this fraction of its median
(the threshold torch.utils.benchmark's Measurement warns at)."""

# Floats stay numpy float64 (NaN when missing) so numpy and matplotlib take them as they are; integers,
# booleans and strings use pandas' nullable dtypes so a missing value stays missing instead of becoming 0.0.
_PANDAS_DTYPES = {int: "Int64", float: "float64", str: "string", bool: "boolean"}
SPEED = ("speed",)
EXTRAP = ("extrapolation",)
BOTH = TASKS


@dataclass(frozen=True)
class Column:
    """One stored column. ``type`` is the Python type of a non-missing value; ``unit`` None for unitless."""

    name: str
    type: type
    unit: str | None
    doc: str
    tasks: tuple[str, ...] = BOTH

    @property
    def pandas_dtype(self) -> str:
        return _PANDAS_DTYPES[self.type]


def _telemetry_columns() -> list[Column]:
    quantities = {
        "sm_clock_mhz": ("MHz", "SM clock"), "mem_clock_mhz": ("MHz", "memory clock"),
        "power_w": ("W", "board power"), "temperature_c": ("degC", "GPU temperature"),
        "memory_used_bytes": ("bytes", "device memory in use (all processes)"),
        "gpu_util_pct": ("%", "NVML GPU utilisation"), "mem_util_pct": ("%", "NVML memory-controller utilisation"),
    }
    out = [Column("gpu_samples", int, None, "NVML telemetry samples taken during the timed calls", SPEED)]
    for name, (unit, what) in quantities.items():
        for stat in ("mean", "min", "max"):
            out.append(Column(f"gpu_{name}_{stat}", float, unit, f"{what}, {stat} over the timed calls", SPEED))
    return out


COLUMNS: tuple[Column, ...] = (
    # identity
    Column("run_id", str, None, "the run this row belongs to"),
    Column("key", str, None, "stable config id: the same config has the same key in every run (resume, merge)"),
    Column("task", str, None, f"one of {TASKS}"),
    Column("variant", str, None, "registry name, <family>[-<encoding>]@<backend>"),
    Column("family", str, None, "softmax, flash or linear"),
    Column("pe", str, None, "positional encoding"),
    Column("backend", str, None, "the kernel or implementation that ran"),
    Column("time_complexity", str, None, "quadratic or linear in N", SPEED),
    Column("device", str, None, "cpu or cuda"),
    Column("device_name", str, None, "GPU or CPU model"),
    Column("dtype", str, None, "input dtype"),
    Column("causal", bool, None, "causal mask", SPEED),
    Column("pass", str, None, "fwd or fwd+bwd", SPEED),
    Column("batch", int, None, "batch size", SPEED),
    Column("heads", int, None, "attention heads", SPEED),
    Column("n", int, "tokens", "sequence length", SPEED),
    Column("d", int, None, "head dim of q, k and v", SPEED),
    Column("threads", int, None, "torch intra-op threads"),
    # outcome
    Column("status", str, None, f"one of {STATUSES}"),
    Column("reason", str, None, "why the status is not ok (or a note on an ok row); empty when ok"),
    # timing
    Column("timer", str, None, "exactly which clock produced the times (e.g. perf_counter, "
           "triton.do_bench+l2flush, cuda-events+l2flush, pytest-benchmark:time.perf_counter)", SPEED),
    Column("warmup_calls", int, None, "untimed calls before the timed ones", SPEED),
    Column("repeats", int, None, "timed calls", SPEED),
    Column("time_median_ms", float, "ms", "median time of one call", SPEED),
    Column("time_p20_ms", float, "ms", "20th percentile of the call times", SPEED),
    Column("time_p80_ms", float, "ms", "80th percentile of the call times", SPEED),
    Column("time_min_ms", float, "ms", "fastest call", SPEED),
    Column("time_iqr_ms", float, "ms", "interquartile range of the call times", SPEED),
    Column("high_variance", bool, None, f"IQR above {HIGH_VARIANCE_IQR:.0%} of the median: treat the time "
           "with care", SPEED),
    Column("minor_faults_per_call", float, "faults", "minor page faults per timed call (getrusage; CPU): "
           "time spent zero-filling fresh pages is inside the time", SPEED),
    Column("alloc_regime", str, None, "the CPU allocator regime the timed calls ran under "
           "(see bench.measure.allocator); 'cuda-caching' on a GPU", SPEED),
    # memory
    Column("peak_mem_bytes", float, "bytes", "measured peak memory above what was in use before the call "
           "(the inputs; for fwd+bwd the gradients are counted)"),
    # work and rates
    Column("flops", float, "FLOP", "FLOPs of one call by the formulas in bench.measure.flops", SPEED),
    Column("min_bytes", float, "bytes", "bytes any implementation must move (read inputs, write outputs once)",
           SPEED),
    Column("tflops", float, "TFLOP/s", "flops / median time", SPEED),
    Column("gbps", float, "GB/s", "min_bytes / median time", SPEED),
    Column("tokens_per_s", float, "tokens/s", "batch x N / median time", SPEED),
    Column("frac_matmul_ceiling", float, None, "tflops / the matmul ceiling measured in this run for this dtype",
           SPEED),
    Column("frac_copy_ceiling", float, None, "gbps / the copy ceiling measured in this run", SPEED),
    # planner and harness
    Column("predicted_ms", float, "ms", "the planner's per-call prediction before running", SPEED),
    Column("predicted_peak_bytes", float, "bytes", "the planner's peak-memory prediction", SPEED),
    Column("workload_s", float, "s", "seconds inside calls of the workload (warm-up, probes, timed calls, "
           "memory pass, profile)", SPEED),
    Column("wall_s", float, "s", "seconds the harness spent on this config", BOTH),
    Column("overhead_s", float, "s", "wall_s - workload_s: the harness's own time", SPEED),
    *_telemetry_columns(),
    Column("profile_trace", str, None, "torch.profiler Chrome trace (with --profile)", SPEED),
    Column("profile_table", str, None, "torch.profiler top-operator table (with --profile)", SPEED),
    # extrapolation
    Column("corpus", str, None, "text corpus the model was trained and evaluated on", EXTRAP),
    Column("tokenizer", str, None, "tokenizer (bytes: UTF-8 bytes, vocabulary 256)", EXTRAP),
    Column("train_len", int, "tokens", "training sequence length L", EXTRAP),
    Column("eval_len", int, "tokens", "evaluation window length", EXTRAP),
    Column("protocol", str, None, "non-overlapping or sliding", EXTRAP),
    Column("stride", int, "tokens", "sliding-window stride (the window length when non-overlapping)", EXTRAP),
    Column("tokens_scored", int, "tokens", "tokens whose loss entered the average", EXTRAP),
    Column("loss_nats", float, "nats/byte", "mean cross-entropy per scored token", EXTRAP),
    Column("perplexity", float, None, "exp(loss_nats)", EXTRAP),
    Column("bits_per_byte", float, "bits/byte", "loss_nats / ln 2", EXTRAP),
    Column("loss_se_nats", float, "nats/byte", "standard error of loss_nats over blocks of 1,024 consecutive "
           "scored bytes (std of the block means / sqrt(blocks))", EXTRAP),
    Column("bits_per_byte_se", float, "bits/byte", "loss_se_nats / ln 2", EXTRAP),
    Column("bpb_vs_train_len", float, "bits/byte", "bits_per_byte minus the same model's at eval length = "
           "train length, same protocol and bytes", EXTRAP),
    Column("bpb_vs_train_len_se", float, "bits/byte", "standard error of bpb_vs_train_len over the per-block "
           "differences (paired: the same bytes at both lengths)", EXTRAP),
    Column("eval_backend", str, None, "the attention kernel the scoring pass ran (an explicit-score softmax "
           "variant scores through its FlashAttention twin, the same function)", EXTRAP),
    Column("scored_bytes_per_s", float, "bytes/s", "tokens_scored / eval_wall_s", EXTRAP),
    Column("train_wall_s", float, "s", "seconds the model's training took (in the session that trained it)",
           EXTRAP),
    Column("params", int, None, "model parameters", EXTRAP),
    Column("steps", int, None, "training steps", EXTRAP),
    Column("seed", int, None, "seed of the model, data order and inputs"),
    Column("eval_wall_s", float, "s", "seconds of the scoring pass at this length (peak memory is measured "
           "apart)", EXTRAP),
    # bookkeeping
    Column("finished_utc", str, None, "when the row was written (UTC, ISO 8601)"),
    Column("source_run", str, None, "for merged runs: the run the row came from"),
)

SCHEMA: dict[str, Column] = {column.name: column for column in COLUMNS}
if len(SCHEMA) != len(COLUMNS):  # pragma: no cover - a duplicate is a programming error caught on import
    raise RuntimeError("duplicate column names in bench.record.COLUMNS")


def columns_for(task: str) -> list[str]:
    """The names of the columns a ``task`` row may carry, in schema order."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return [c.name for c in COLUMNS if task in c.tasks]


def _coerce(column: Column, value: object) -> object:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if column.type is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"column {column.name!r} holds a bool, got {value!r}")
    if column.type in (int, float):
        kind = "an integer" if column.type is int else "a number"
        try:  # a string or an object float() cannot read is named like any other wrong kind
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or (column.type is int and not number.is_integer()):
            raise TypeError(f"column {column.name!r} holds {kind}, got {value!r}")
        if column.type is int:
            return value if isinstance(value, int) else int(number)
        return number if math.isfinite(number) else None
    return str(value)


class Row(dict):
    """A stored row: validated by ``validate_row`` when a store wrote it, or read back from a store that did.
    Read-only, so it stays what was checked: a store appends a ``Row`` as it is. To change a value, build a
    new dict (``{**row, "run_id": ...}``) and append that (it is validated then)."""

    __slots__ = ()

    def _read_only(self, *args, **kwargs):
        raise TypeError("a stored row is read-only; append a new dict ({**row, ...}) to change it")

    __setitem__ = __delitem__ = __ior__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only

    def __reduce__(self):
        # pickle (torch.distributed's object collectives, worker queues) would set items one by one
        return (Row, (dict(self),))


def validate_row(values: Mapping[str, object]) -> Row:
    """``values`` checked against the schema of its ``task`` (a row without one is a speed row), every value
    coerced to its column's type (NaN and infinities -> None). A ``Row`` is returned as it is: it was checked.

    Raises ValueError naming any column that is not in the schema for this task, an unknown task, or a status
    that is not one of STATUSES; TypeError naming the column and value of the wrong kind. Only the run stores
    call this (``bench.sweep.store``): the one check every row passes on its way in.
    """
    if isinstance(values, Row):
        return values
    task = str(values.get("task") or "speed")
    allowed = set(columns_for(task))
    unknown = sorted(set(values) - allowed - {"task"})
    if unknown:
        raise ValueError(f"columns {unknown} are not in bench.record's schema for task {task!r}")
    status = values.get("status")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    row = {"task": task}
    for name, value in values.items():
        if name != "task":
            row[name] = _coerce(SCHEMA[name], value)
    return Row(row)


def amend_row(row: Row, **values: object) -> Row:
    """``row`` with ``values`` set: only the new values are checked (the rest was, when ``row`` was stored),
    with ``validate_row``'s errors. A merge uses it to give a row its new run and its source."""
    task = str(row.get("task") or "speed")
    unknown = sorted(set(values) - set(columns_for(task)))
    if unknown:
        raise ValueError(f"columns {unknown} are not in bench.record's schema for task {task!r}")
    if "status" in values and values["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {values['status']!r}")
    return Row({**row, **{name: _coerce(SCHEMA[name], value) for name, value in values.items()}})


def stored_row(parsed: Mapping[str, object]) -> Row:
    """A row parsed from a store's file, as a ``Row`` without checking it again: the store validated it when
    it wrote it (rows written before a column was renamed or dropped stay readable)."""
    return Row(parsed)


def is_high_variance(median_ms: float, iqr_ms: float) -> bool:
    """Whether a timing's spread is large enough to flag (see HIGH_VARIANCE_IQR)."""
    return median_ms > 0 and iqr_ms / median_ms > HIGH_VARIANCE_IQR


def to_frame(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Rows (from a store) as a DataFrame with the schema's column order and nullable dtypes.

    Columns no row has are left out; a row without ``task`` (stored before the column existed) is a speed
    row. The values are not checked again (the store did when it wrote them), only typed: a column the schema
    does not know has no type, and raises ValueError naming it.
    """
    records = [{**row, "task": row.get("task") or "speed"} for row in rows]
    present = {name for record in records for name in record}
    unknown = sorted(present - set(SCHEMA))
    if unknown:
        raise ValueError(f"columns {unknown} are not in bench.record's schema")
    names = [c.name for c in COLUMNS if c.name in present]
    frame = pd.DataFrame.from_records(records, columns=names)
    for name in names:
        frame[name] = frame[name].astype(SCHEMA[name].pandas_dtype)
    return frame


def describe_columns(task: str | None = None) -> pd.DataFrame:
    """The schema as a table (name, type, unit, tasks, meaning): for docs, reports and ``bench columns``."""
    return pd.DataFrame([
        {"column": c.name, "type": c.type.__name__, "unit": c.unit or "", "tasks": ",".join(c.tasks),
         "meaning": c.doc}
        for c in COLUMNS if task is None or task in c.tasks
    ])
