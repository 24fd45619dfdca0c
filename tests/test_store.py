"""The run store: rows on disk as soon as they exist, crash-cut lines, resume keys, merge."""

import json
import pickle

import pytest

import bench.sweep.store as store_module
from bench.record import Row
from bench.sweep.store import MemoryStore, RunStore, first_per_key, merge_runs


def row(key, **extra):
    return {"key": key, "status": "ok", "n": 1, **extra}


def test_append_is_on_disk_immediately_and_resume_sees_it(tmp_path):
    store = RunStore(tmp_path, "r1")
    store.append(row("a", time_median_ms=1.5))
    lines = (tmp_path / "r1" / "rows.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["time_median_ms"] == 1.5
    reopened = RunStore(tmp_path, "r1")
    assert reopened.done_keys() == {"a"}


def test_nan_is_stored_as_null(tmp_path):
    store = RunStore(tmp_path, "r")
    store.append(row("a", tflops=float("nan")))
    assert store.rows()[0]["tflops"] is None


def test_cut_off_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path):
    store = RunStore(tmp_path, "r")
    store.append(row("a"))
    with open(store.rows_path, "a") as handle:
        handle.write('{"key": "b", "sta')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="cut-off"):
        assert [r["key"] for r in store.rows()] == ["a"]
    store.append(row("c"))
    with pytest.warns(UserWarning, match="cut-off"):
        assert [r["key"] for r in store.rows()] == ["a", "c"]


def test_frame_and_environment(tmp_path):
    store = RunStore(tmp_path, "r")
    store.append(row("a", n=1024))
    store.append(row("b", n=2048))
    store.add_environment({"device": "cpu"})
    store.add_environment({"device": "cpu", "resumed": True})
    assert len(store.environment()["sessions"]) == 2
    path = store.write_frame()
    assert path.read_text().splitlines()[0].startswith("key,")
    assert list(store.frame()["n"]) == [1024, 2048]


def test_bad_run_id():
    with pytest.raises(ValueError, match="run id"):
        RunStore("/tmp", "a/b")


def test_merge_joins_shards_and_keeps_environments(tmp_path):
    one, two = RunStore(tmp_path, "s1"), RunStore(tmp_path, "s2")
    one.append(row("a"))
    two.append(row("b"))
    two.append(row("a", status="error"))  # duplicate key: the first occurrence wins
    one.add_environment({"shard": "1/2"})
    two.add_environment({"shard": "2/2"})
    merged = merge_runs([one.path, two.path], tmp_path, "all")
    frame = merged.frame()
    assert sorted(frame["key"]) == ["a", "b"]
    assert frame.set_index("key").loc["a", "status"] == "ok"
    assert [s["shard"] for s in merged.environment()["sessions"]] == ["1/2", "2/2"]
    assert (merged.path / "results.csv").exists()
    with pytest.raises(ValueError, match="already has rows"):
        merge_runs([one.path], tmp_path, "all")
    with pytest.raises(ValueError, match="not a run directory"):
        merge_runs([tmp_path / "nope"], tmp_path, "x")


@pytest.fixture
def checks(monkeypatch):
    """The rows the stores really checked (a ``Row`` passes through ``validate_row`` unchecked)."""
    checked = []
    real = store_module.validate_row

    def counting(values):
        if not isinstance(values, Row):
            checked.append(values["key"])
        return real(values)

    monkeypatch.setattr(store_module, "validate_row", counting)
    return checked


def test_a_row_is_checked_once_on_its_way_from_a_rank_to_the_run_store(tmp_path, checks):
    rank = MemoryStore("r")
    kept = rank.append(row("a", n=1024.0))
    assert isinstance(kept, Row) and kept["n"] == 1024 and isinstance(kept["n"], int)
    travelled = pickle.loads(pickle.dumps(rank.rows()))  # torch.distributed's object collectives pickle
    stored = RunStore(tmp_path, "r").append(travelled[0])
    assert stored == kept and checks == ["a"]
    assert RunStore(tmp_path, "r").rows() == [kept] and checks == ["a"]  # reading back checks nothing


def test_a_merged_row_is_not_checked_again(tmp_path, checks):
    RunStore(tmp_path, "s1").append(row("a"))
    merged = merge_runs([tmp_path / "s1"], tmp_path, "all")
    assert checks == ["a"]
    assert merged.rows()[0]["run_id"] == "all" and merged.rows()[0]["source_run"] == "s1"


def test_append_names_the_bad_column_and_value(tmp_path):
    store = RunStore(tmp_path, "r")
    with pytest.raises(TypeError, match="column 'n' holds an integer, got 'many'"):
        store.append(row("a", n="many"))
    with pytest.raises(ValueError, match="time_medain_ms"):
        store.append(row("a", time_medain_ms=1.0))
    with pytest.raises(ValueError, match="needs a 'key'"):
        store.append({"status": "ok"})
    assert store.rows() == []


def test_first_per_key_keeps_the_first_row_of_each_key_in_first_seen_order():
    rows = [row("a", status="ok"), row("b"), row("a", status="error"), row("c"), row("b", status="oom")]
    kept = first_per_key(rows)
    assert list(kept) == ["a", "b", "c"]
    assert [r["status"] for r in kept.values()] == ["ok", "ok", "ok"]


def test_every_reader_of_a_store_applies_the_one_rule(tmp_path):
    store = RunStore(tmp_path, "r")
    store.append(row("a", n=1024))
    store.append(row("b"))
    store.append(row("a", n=2048, status="error"))  # a second writer on the same run id
    assert [(r["key"], r["n"]) for r in store.rows()] == [("a", 1024), ("b", 1)]
    assert list(store.frame()["n"]) == [1024, 1] and list(store.frame()["status"]) == ["ok", "ok"]
    memory = MemoryStore("m")
    memory.append(row("a", n=1024))
    memory.append(row("a", n=2048))
    assert [r["n"] for r in memory.rows()] == [1024]
