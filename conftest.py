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
