"""What every FlashAttention-family backend shares: the attention-core base class and the backend record.

The public interface (names, availability, per-config support, builder) is ``baselines.flash``; the backend
modules (``sdpa``, ``flash_attn_pkg``, ``xformers_ops``, ``flex``) each describe their backends with a
:class:`BackendSpec` and implement :meth:`FlashCore.attend`.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from baselines.refusal import Refusal
from lrpe.checks import check_qkv
from lrpe.core import encode_pair


class FlashCore(nn.Module):
    """Attention core running one named kernel: forward(q, k, v, offset=0) -> (B, H, N, Dv).

    q, k: (B, H, N, D); v: (B, H, N, Dv); the output has v's dtype. ``positional`` (a module mapping
    (x, offset) -> x, e.g. RoPE) is applied to q and k first; ``offset`` is the position of the first token.
    The scale is 1/sqrt(D) (every kernel's default). Subclasses implement :meth:`attend` and must raise
    when their kernel cannot take the input, never hand it to another kernel.
    """

    backend: str = ""

    def __init__(self, *, causal: bool, positional: nn.Module | None) -> None:
        super().__init__()
        self.causal = causal
        self.positional = positional

    def forward(self, q: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
        check_qkv(q, k, v)
        if self.positional is not None:
            # forward_pair when it exists (RoPE: phasors once for q and k); not in place: q, k are the caller's.
            q, k = encode_pair(self.positional, q, k, offset)
        return self.attend(q, k, v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Softmax attention of q, k (B, H, N, D) and v (B, H, N, Dv) by this backend's kernel only."""
        raise NotImplementedError

    @property
    def kernel(self) -> str:
        """What actually runs, in words (package, version, operator), for reports."""
        return self.backend

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, causal={self.causal}"


@dataclass(frozen=True)
class BackendSpec:
    """One backend of the family.

    devices: the device types its kernel exists for at all.
    requirement: () -> None when its package imports, its operator loads and its hardware is present, else
        why not; cheap (no kernel launch), never raises.
    make: (causal=..., positional=...) -> the core, without checking availability (``baselines.flash``
        checks it; the probes call ``make`` directly).
    probe_lengths: sequence lengths of the tiny inputs a support probe runs; each is a kernel launch
        (a compilation for flex, hence one length there).
    refusals: how its kernel documents refusing an input (read from its sources); a probe that fails any
        other way raises instead of calling the config unsupported (see ``baselines.refusal``).
    """

    name: str
    devices: tuple[str, ...]
    requirement: Callable[[], str | None]
    make: Callable[..., FlashCore]
    probe_lengths: tuple[int, ...] = (64, 37)
    refusals: tuple[Refusal, ...] = ()


def import_module(name: str) -> tuple[ModuleType | None, str | None]:
    """Import ``name``: (module, None), or (None, why) when the package is missing or its compiled library
    does not load (ImportError, or OSError from the dynamic loader).

    Anything else an import raises (a TypeError or AttributeError from version skew between packages) is a
    bug to report, not a missing package: it propagates.
    """
    try:
        with warnings.catch_warnings():
            # import-time warnings (deprecations, "can't load C++ extensions") are not the caller's business
            warnings.simplefilter("ignore")
            return importlib.import_module(name), None
    except (ImportError, OSError) as exc:
        return None, f"{type(exc).__name__}: {first_lines(str(exc))}"


def cuda_reason() -> str | None:
    """None when a CUDA (or ROCm) device is usable, else why not, naming the torch build."""
    if torch.cuda.is_available():
        return None
    return f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__})"


_TRIGGERED = re.compile(r"\s*\(Triggered internally at [^)]*\)\s*")


def first_lines(text: str, *, lines: int = 2, chars: int = 400) -> str:
    """The first ``lines`` non-empty lines of ``text`` joined by ' / ', cut to ``chars`` characters.

    Compiler and dispatcher errors run to pages (graphs, stack dumps); the cause is at the top.
    """
    kept = [line.strip() for line in _TRIGGERED.sub(" ", text).splitlines() if line.strip()][:lines]
    joined = " / ".join(kept)
    return joined if len(joined) <= chars else joined[: chars - 3] + "..."


def failure_text(exc: BaseException, caught: list[warnings.WarningMessage]) -> str:
    """Why a forced kernel refused an input: torch's warnings (it warns each check that failed, then raises
    a generic "No available kernel"), followed by the exception."""
    said: list[str] = []
    for w in caught:
        text = first_lines(str(w.message), lines=1)
        if text and text not in said:
            said.append(text)
    said.append(f"{type(exc).__name__}: {first_lines(str(exc))}")
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not exc:
        # torch.compile wraps the error the traced code raised in pages of its own explanation
        said.append(f"(caused by {type(root).__name__}: {first_lines(str(root), lines=1)})")
    return " ".join(said)
