"""The CI gates through pytest: ``pytest bench/ --benchmark --gate [--gate-budgets FILE] [--gate-run DIR]``.

One test, both gates: the speed and memory gate (it runs the gated configs, or reads ``--gate-run``, and
compares them with the budgets, as ``python -m bench gate`` does), then the quality gate (``python -m bench
gate --quality``); it fails with the text of each gate that failed. Without ``--benchmark --gate`` it is
skipped.
"""

from __future__ import annotations

import pytest

from bench import gate
from bench.gate.quality import quality_gate


def test_gate(request: pytest.FixtureRequest) -> None:
    config = request.config
    if not (config.getoption("benchmark") and config.getoption("gate")):
        pytest.skip("the regression gates run only with --benchmark --gate (pytest bench/ --benchmark --gate)")
    budgets = config.getoption("gate_budgets") or gate.DEFAULT_BUDGETS
    speed = gate.gate(budgets, config.getoption("gate_run"), results_dir=config.getoption("results_dir")
                      or gate.DEFAULT_RESULTS_DIR)
    quality = quality_gate()
    print(speed.text, quality.text, sep="\n")
    failed = [r.text for r in (speed, quality) if not r.passed]
    if failed:
        pytest.fail("\n\n".join(failed), pytrace=False)
