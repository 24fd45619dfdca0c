"""What the registry knows about one attention variant (the registry table itself is ``bench.registry``).

Before a config runs, the registry decides its :class:`Verdict`: it runs (status None), or it is
``unavailable`` (a package or the hardware is missing: the probe returned a reason), ``unsupported`` (a
documented limit of the backend: the check returned a reason, or the variant's declared devices, dtypes and
causal modes exclude it), or ``error`` (a probe or check raised: a bug, never filed as a limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn

from bench.backend import COMPLEXITIES, ENCODINGS, FAMILIES
from bench.config import BenchConfig
from bench.measure.flops import Shape, attention_flops


@dataclass(frozen=True)
class AttentionSpec:
    """What a builder needs to make an attention core: the per-head width, head count, masking and a seed."""

    head_dim: int
    num_heads: int
    causal: bool = True
    seed: int = 0


Builder = Callable[[AttentionSpec], nn.Module]
"""Makes an attention core: ``forward(q, k, v, offset=0)`` with q, k (B, H, N, D) and v (B, H, N, Dv),
returning (B, H, N, Dv) in v's dtype. The executor moves it to the device; it accepts any supported dtype."""


def always_available() -> str | None:
    return None


def supports_everything(config: BenchConfig) -> str | None:
    return None


@dataclass(frozen=True)
class Verdict:
    """What is known about a config before running it: ``status`` None means "run it"; otherwise
    "unavailable", "unsupported" or "error", with the reason (no status word in it)."""

    status: str | None = None
    reason: str | None = None

    @property
    def runs(self) -> bool:
        return self.status is None


RUNS = Verdict()


def _raised(what: str, exc: Exception) -> Verdict:
    return Verdict("error", f"{what} raised {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Variant:
    """One row of the registry.

    probe: () -> None when the variant can run on this machine, else the reason (package or hardware
        missing). Called once and cached. If it raises, the variant's configs are ``error`` rows.
    check: (config) -> None when this config can run, else why not (a documented limit of the backend:
        head dim, dtype, mask); the registry checks devices, dtypes and causal itself before calling it.
        If it raises, the config is an ``error`` row.
    key_width: (head_dim) -> width of the features the attention kernel sees (2 D for LRPE-unitary, R for
        SPE); used by the FLOP formulas. None: the encoding's (``bench.backend.ENCODINGS``).
    chunk_size: the chunk of chunked linear attention (FLOP formula), None for the other families.
    in_sweeps: False for entries that time the same kernel as another entry (APE acts at the embedding).
    precheck: before a config of this variant is timed, check it against its oracle on small inputs
        (``bench.equivalence.oracle_check``); a mismatch is an ``error`` row. Set for user kernels.
    """

    name: str
    family: str
    pe: str
    backend: str
    builder: Builder
    time_complexity: str
    memory_complexity: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    causal_modes: tuple[bool, ...] = (True, False)
    probe: Callable[[], str | None] = always_available
    check: Callable[[BenchConfig], str | None] = supports_everything
    key_width: Callable[[int], int] | None = None
    chunk_size: int | None = None
    in_sweeps: bool = True
    description: str = ""
    options: dict = field(default_factory=dict)
    precheck: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.pe not in ENCODINGS:
            raise ValueError(f"{self.name}: pe must be one of {list(ENCODINGS)}, got {self.pe!r}")
        for what in (self.time_complexity, self.memory_complexity):
            if what not in COMPLEXITIES:
                raise ValueError(f"{self.name}: complexity must be one of {COMPLEXITIES}, got {what!r}")

    def availability(self) -> Verdict:
        """Whether this machine can run the variant at all: runs, ``unavailable`` or ``error`` (cached)."""
        return _probe_once(self.probe)

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the variant, else why not, in words (for listings): the probe's
        reason, or what the probe raised."""
        return self.availability().reason

    def verdict(self, config: BenchConfig) -> Verdict:
        """Whether ``config`` can run: availability first, then the declared devices, dtypes and causal
        modes, then the backend's check; ``unsupported`` for a limit, ``error`` when the check raised."""
        available = self.availability()
        if not available.runs:
            return available
        declared = self.declared_verdict(config)
        if not declared.runs:
            return declared
        try:
            reason = self.check(config)
        except Exception as exc:  # a check that breaks is a bug to report, not a limit
            return _raised("support check", exc)
        return RUNS if reason is None else Verdict("unsupported", reason)

    def declared_verdict(self, config: BenchConfig) -> Verdict:
        """What the registry itself declares, without probing this machine: ``unsupported`` for a device,
        dtype or causal mode outside the variant's lists (a dry run for another machine stops here)."""
        if config.device not in self.devices:
            return Verdict("unsupported", f"device {config.device!r} not supported (supports {list(self.devices)})")
        if config.dtype not in self.dtypes:
            return Verdict("unsupported", f"dtype {config.dtype!r} not supported (supports {list(self.dtypes)})")
        if config.causal not in self.causal_modes:
            return Verdict("unsupported", f"causal={config.causal} not supported")
        return RUNS

    def flops(self, config: BenchConfig) -> float:
        """FLOPs of one call on ``config`` by the formulas of ``bench.measure.flops``."""
        return attention_flops(self.flop_shape(config), time_complexity=self.time_complexity,
                               causal=config.causal, pass_=config.pass_, chunk_size=self.chunk_size)

    def flop_shape(self, config: BenchConfig) -> Shape:
        """The sizes the FLOP and byte formulas of ``bench.measure.flops`` take for ``config``."""
        key_width = self.key_width or ENCODINGS[self.pe].key_width
        return Shape(batch=config.batch, heads=config.heads, n=config.n, dk=key_width(config.d),
                     dv=config.d, d_in=config.d)

    def build(self, config: BenchConfig, seed: int = 0) -> nn.Module:
        """The attention core for ``config``, on its device, parameters seeded by ``seed``."""
        torch.manual_seed(seed)
        spec = AttentionSpec(head_dim=config.d, num_heads=config.heads, causal=config.causal, seed=seed)
        return self.builder(spec).to(config.device)


@cache
def _probe_once(probe: Callable[[], str | None]) -> Verdict:
    try:
        reason = probe()
    except Exception as exc:  # a probe that breaks is a bug to report, not a missing package
        return _raised("availability probe", exc)
    return RUNS if reason is None else Verdict("unavailable", reason)
