"""Root conftest: registers ``--benchmark`` and the sweep options for ``pytest bench/ --benchmark``.

pytest-benchmark has no ``--benchmark`` option and pytest refuses abbreviated options, so a stock install
rejects ``pytest bench/ --benchmark``. Here it is a flag: without it the modules under bench/ are skipped
(quickly, with the reason); with it they run the planned sweep through pytest-benchmark.
"""

from bench.cli import add_sweep_options


def pytest_addoption(parser):
    group = parser.getgroup("lrpe-bench", "attention benchmark sweeps (pytest bench/ --benchmark)")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="run the benchmark modules under bench/ (skipped without this flag)")
    add_sweep_options(group.addoption)
    group.addoption("--gate", action="store_true", default=False,
                    help="with --benchmark: run the CI regression gate (bench/test_gate.py) instead of the sweep")
    group.addoption("--gate-budgets", dest="gate_budgets", default=None,
                    help="with --gate: the budget file (default bench/budgets/cpu-gate.json)")
    group.addoption("--gate-run", dest="gate_run", default=None,
                    help="with --gate: compare this gate run instead of running one")
