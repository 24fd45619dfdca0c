"""Telling a kernel's documented refusal of an input apart from a bug.

A probe that runs a kernel on a tiny input sees three kinds of outcome: it runs; it refuses the input the way
its documentation says it will (SDPA's "No available kernel", flash-attn's "only supports fp16 and bf16",
xformers' "does not support inputs", a Triton tile that does not fit in shared memory), which makes the config
``unsupported``; or something else breaks (a ``TypeError`` after an API change, a wrong shape), which is a
bug and must surface as an ``error``, never be filed as a limit. Each backend lists its documented refusals
as :class:`Refusal` patterns read from its sources; :func:`is_refusal` matches an exception against them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class Unsupported(Exception):
    """Raised by the suite's own code for a documented limit of a backend; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class Refusal:
    """A documented refusal: an exception of type ``kind`` (or a subclass) whose message matches ``pattern``
    (a regular expression, searched); ``kind`` may be a class name (``module.Class``) to avoid importing an
    optional package just to name its exception."""

    kind: type[BaseException] | str
    pattern: str = ""

    def matches(self, exc: BaseException) -> bool:
        if isinstance(self.kind, str):
            names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
            if self.kind not in names:
                return False
        elif not isinstance(exc, self.kind):
            return False
        return re.search(self.pattern, str(exc)) is not None


TRITON_OUT_OF_RESOURCES = Refusal("triton.runtime.errors.OutOfResources")
"""Triton's tile/shared-memory limit: independent of N, a limit of the kernel for this head dim and GPU."""

ALWAYS: tuple[Refusal, ...] = (Refusal(Unsupported), TRITON_OUT_OF_RESOURCES)
"""Refusals every backend may give."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps, outermost first: ``raise ... from`` (``__cause__``), and the
    ``inner_exception`` by which torch.compile's BackendCompilerFailed/InductorError carry what a compiler
    pass raised (they are raised ``from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or getattr(current, "inner_exception", None)


def is_refusal(exc: BaseException, refusals: tuple[Refusal, ...]) -> bool:
    """Whether ``exc`` (or one of its causes) is one of ``refusals`` or of :data:`ALWAYS`."""
    return any(r.matches(e) for e in causes(exc) for r in (*ALWAYS, *refusals))
