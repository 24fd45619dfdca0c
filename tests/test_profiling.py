"""bench.measure.profiling: a trace that parses, a top table, rows as data, safe file names."""

from __future__ import annotations

import json

import torch

from bench.measure.profiling import profile_callable, safe_name


def test_profile_writes_a_trace_and_a_top_table(tmp_path):
    a = torch.randn(256, 256)
    result = profile_callable(lambda: torch.mm(a, a).relu(), "cpu", tmp_path / "profiles",
                              "lrpe-unitary|cpu|float32|n 1024/d64", steps=3, row_limit=10)
    trace, table = result["trace_path"], result["table_path"]
    assert trace.parent == table.parent == tmp_path / "profiles"  # the '/' in the name made no folder
    assert trace.name.endswith(".trace.json") and table.name.endswith(".top.txt")
    assert not set("|/ ") & set(trace.name)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(event.get("name") == "aten::mm" for event in events)
    assert "aten::mm" in table.read_text()
    rows = {row["name"]: row for row in result["top"]}
    assert rows["aten::mm"]["calls"] == 3  # one per step: the warm-up call is not traced
    assert 0 < rows["aten::mm"]["self_cpu_us"] <= rows["aten::mm"]["total_cpu_us"]
    self_times = [row["self_cpu_us"] for row in result["top"]]
    assert self_times == sorted(self_times, reverse=True) and len(self_times) <= 10


def test_safe_name_keeps_plain_names_and_separates_changed_ones():
    assert safe_name("softmax-naive_n1024.fp32") == "softmax-naive_n1024.fp32"
    assert safe_name("a|b") != safe_name("a/b")  # both would be 'a_b' without the hash
    assert safe_name("../../etc/passwd").startswith("etc_passwd-")
    assert safe_name("///").startswith("profile-")
