"""The result schema: rows are validated once (at the store), typed in one place, and the frame follows it."""

import math
import pickle

import pandas as pd
import pytest

from bench.record import (
    COLUMNS,
    SCHEMA,
    STATUSES,
    Row,
    amend_row,
    columns_for,
    describe_columns,
    is_high_variance,
    stored_row,
    to_frame,
    validate_row,
)


def speed_row(**extra):
    return {"run_id": "r", "key": "k", "variant": "linear@torch-chunked", "n": 1024, "d": 64, "status": "ok",
            "time_median_ms": 1.5, **extra}


def test_every_column_has_a_type_a_doc_and_known_tasks():
    assert len(SCHEMA) == len(COLUMNS)
    for column in COLUMNS:
        assert column.type in (int, float, str, bool) and column.doc
        assert set(column.tasks) <= {"speed", "extrapolation"}
    assert {"time_median_ms", "peak_mem_bytes", "minor_faults_per_call", "alloc_regime"} <= set(columns_for("speed"))
    assert {"perplexity", "eval_len", "protocol", "peak_mem_bytes"} <= set(columns_for("extrapolation"))
    assert "time_median_ms" not in columns_for("extrapolation")
    assert set(describe_columns()["column"]) == set(SCHEMA)


def test_validate_row_rejects_unknown_columns_bad_statuses_and_wrong_kinds():
    with pytest.raises(ValueError, match="time_medain_ms"):
        validate_row(speed_row(time_medain_ms=1.0))
    with pytest.raises(ValueError, match="perplexity"):
        validate_row(speed_row(task="speed", perplexity=3.0))  # an extrapolation column in a speed row
    with pytest.raises(ValueError, match="'crashed'"):
        validate_row(speed_row(status="crashed"))
    with pytest.raises(TypeError, match=r"column 'n' holds an integer, got 1024\.5"):
        validate_row(speed_row(n=1024.5))
    with pytest.raises(TypeError, match=r"'causal'.*'yes'"):
        validate_row(speed_row(causal="yes"))
    with pytest.raises(ValueError, match="task"):
        validate_row(speed_row(task="training"))


def test_validate_row_coerces_and_drops_non_finite_numbers():
    row = validate_row(speed_row(n=1024.0, time_p80_ms=float("nan"), tflops=float("inf"), causal=True))
    assert row["task"] == "speed" and row["n"] == 1024 and isinstance(row["n"], int)
    assert row["time_p80_ms"] is None and row["tflops"] is None and row["causal"] is True


def test_a_validated_row_is_read_only_survives_pickle_and_is_not_checked_again(monkeypatch):
    row = validate_row(speed_row())
    assert isinstance(row, Row)
    with pytest.raises(TypeError, match="read-only"):
        row["status"] = "crashed"
    with pytest.raises(TypeError, match="read-only"):
        row.update(status="crashed")
    assert row["status"] == "ok"
    travelled = pickle.loads(pickle.dumps(row))  # how rows go from a torchrun rank to rank 0
    assert isinstance(travelled, Row) and travelled == row
    monkeypatch.setattr("bench.record._coerce", lambda *a: pytest.fail("a Row was checked again"))
    assert validate_row(travelled) is travelled


def test_rows_read_back_and_framed_are_not_checked_again():
    # A row a store wrote under an older schema (a status since renamed) still reads and frames.
    old = stored_row({**speed_row(), "status": "skipped"})
    assert isinstance(old, Row)
    assert list(to_frame([old])["status"]) == ["skipped"]


def test_amend_row_checks_only_the_new_values():
    row = validate_row(speed_row())
    merged = amend_row(row, run_id="all", source_run="r")
    assert isinstance(merged, Row) and merged["run_id"] == "all" and merged["source_run"] == "r"
    assert row["run_id"] == "r"  # the original is untouched
    with pytest.raises(ValueError, match="perplexity"):
        amend_row(row, perplexity=1.0)
    with pytest.raises(ValueError, match="'crashed'"):
        amend_row(row, status="crashed")
    with pytest.raises(TypeError, match="column 'n' holds an integer, got 'many'"):
        amend_row(row, n="many")


def test_frame_follows_the_schema_order_and_types_and_keeps_missing_values_missing():
    rows = [validate_row(speed_row(causal=True, repeats=10)),
            validate_row(speed_row(key="k2", status="oom", reason="out of memory", time_median_ms=None)),
            {**speed_row(key="old"), "repeats": 3}]  # a row stored before the task column existed
    frame = to_frame(rows)
    order = [c.name for c in COLUMNS]
    assert list(frame.columns) == sorted(frame.columns, key=order.index)
    assert list(frame["task"]) == ["speed"] * 3
    assert str(frame["n"].dtype) == "Int64" and frame["time_median_ms"].dtype == "float64"
    assert math.isnan(frame.loc[1, "time_median_ms"]) and pd.isna(frame.loc[1, "repeats"])
    assert str(frame["status"].dtype) == "string" and set(frame["status"]) <= set(STATUSES)
    with pytest.raises(ValueError, match="bogus"):  # a column without a type cannot be framed
        to_frame([{**speed_row(), "bogus": 1}])


def test_high_variance_flag_follows_the_iqr_threshold():
    assert not is_high_variance(10.0, 0.9)
    assert is_high_variance(10.0, 1.1)
    assert not is_high_variance(0.0, 1.0)
