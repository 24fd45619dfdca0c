"""The CI regression gate through pytest: ``pytest bench/ --benchmark --gate [--gate-budgets FILE] [--gate-run DIR]``.

One test: it runs the gated configs (or reads ``--gate-run``), compares them with the budgets and fails with
the table of what moved, as ``python -m bench gate`` does. Without ``--benchmark --gate`` it is skipped.
"""

from __future__ import annotations

import pytest

from bench import gate


def test_gate(request: pytest.FixtureRequest) -> None:
    config = request.config
    if not (config.getoption("benchmark") and config.getoption("gate")):
        pytest.skip("the regression gate runs only with --benchmark --gate (pytest bench/ --benchmark --gate)")
    budgets = config.getoption("gate_budgets") or gate.DEFAULT_BUDGETS
    result = gate.gate(budgets, config.getoption("gate_run"), results_dir=config.getoption("results_dir")
                       or gate.DEFAULT_RESULTS_DIR)
    if not result.passed:
        pytest.fail(result.text, pytrace=False)
    print(result.text)
