"""CI regression gates: ``python -m bench gate [--budgets FILE] [--run DIR] [--update]``.

Parts, one job each: ``run`` (measuring a gate run: interleaved CPU-time calls, peak memory in forked
children), ``stats`` (the gated quantities from a run), ``budget`` (the budget file as a typed record, and
tolerances from the runs' spread), ``compare`` (measurements against budgets, a table), ``present`` (the
text), ``cli`` (the command and the ``gate``/``update`` functions), ``sensitivity`` (injected slowdowns and
memory growth: what the gate catches) and ``quality`` (the gate on what the encodings compute).
What is gated and the tolerances: docs/gates.md.
"""

from bench.gate.budget import UPDATE_COMMAND, Budgets, ToleranceRules
from bench.gate.cli import DEFAULT_BUDGETS, DEFAULT_RESULTS_DIR, GateResult, add_arguments, gate, main, update

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_RESULTS_DIR", "UPDATE_COMMAND", "Budgets", "GateResult", "ToleranceRules",
           "add_arguments", "gate", "main", "update"]
