"""Process-wide settings a measurement depends on, owned by one context: ``process_settings``.

Torch's intra-op thread count and the garbage collector's frozen generation belong to the whole process, so
whatever changes them for a block of work (a sweep session, a torchrun rank's share of the cores, an
extrapolation training, a gate round, the quality gate's scoring, the self-check) must give them back as it
found them: a pytest session runs several of these one after another, and each must start from the same
process. The CPU allocator regimes are the third such setting; they change per measurement phase (timed
calls, memory pass) and are owned by their own contexts in ``bench.measure.allocator``, which restore in
the same way.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def process_settings(*, threads: int | None = None, freeze_gc: bool = False) -> Iterator[None]:
    """Within the block: ``threads`` torch intra-op threads (None: leave the count as it is), and with
    ``freeze_gc`` every object alive at entry moved out of the collector's reach (``gc.freeze``).

    On exit, also when the block raises, the previous thread count is restored, and what this block froze is
    unfrozen. Python can only unfreeze everything at once, so when objects were already frozen at entry (an
    enclosing block froze them) nothing is unfrozen here: the enclosing block unfreezes all of it on its exit.

    Why freeze: the imports of a run (torch, the backends' compilers) leave ~400k objects that live as long as
    the run; every full gc pass would otherwise scan them (~90 ms per config of a sweep on a 2-core CPU).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    already_frozen = gc.get_freeze_count() > 0
    if threads is not None:
        torch.set_num_threads(threads)
    if freeze_gc:
        gc.freeze()
    try:
        yield
    finally:
        if freeze_gc and not already_frozen:
            gc.unfreeze()
        torch.set_num_threads(previous_threads)
