"""CPU time of one call: the clock of the CI gate (``bench.gate``), beside the wall-clock timers of
``bench.measure.timing``.

``time.process_time`` counts the CPU seconds of this process (all its threads, user + system). With one torch
thread, the time slices the scheduler gives to other processes are not in it, so a neighbour's load slows the
reading only through shared caches and memory bandwidth: under load 10-13 on this project's 2-core machine,
wall-time ratios of two configs ranged 2.3x..17x between repeats while CPU-time ratios stayed within 1.3x
(docs/gates.md). Its resolution is the kernel's (1 us here, ``time.get_clock_info("process_time")``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOCK = time.process_time
LABEL = "process_time"
"""What a row's or a gate run's ``timer`` says for these readings."""


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU seconds of this process spent in one call of ``fn`` (its return value is dropped)."""
    start = CLOCK()
    fn()
    return CLOCK() - start


def spend_cpu_seconds(seconds: float) -> None:
    """Busy-wait until this process has spent ``seconds`` more CPU time (a measured amount of extra work:
    what the gate's sensitivity checks add to a call to make it slower by a known factor)."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    end = CLOCK() + seconds
    while CLOCK() < end:
        pass
