"""The typed records the registry is built from: one :class:`Backend` per (family, backend) and one
:class:`Encoding` per positional encoding, each owning every fact the planner, the dry run, the equivalence
check and the report read about it. ``bench.registry`` holds the built-in records and makes the variants;
``bench.registry.register`` takes a user's.

A record cannot lack a fact: every field the suite reads is required or has a stated default, and
``__post_init__`` refuses values outside what the suite knows (tests/test_registry.py also runs every
registered variant through the dry run's cost model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from bench.config import DEVICES, DTYPES, PASSES, BenchConfig

FAMILIES = ("softmax", "flash", "linear")
COMPLEXITIES = ("quadratic", "linear")
COST_HEAD_DIMS = (64, 128)
"""Head dims every cost model gives figures for; others scale from the nearer one (bench.sweep.dryrun)."""

SPE_REALIZATIONS = 64
"""R, the width of SPE's codes: the key width the attention kernel sees under SPE."""


@dataclass(frozen=True)
class SharedCompile:
    """One-time work a backend does for the first config of a group and not again in the same process:
    Triton's JIT (its kernels specialise on D, dtype, causal and pass, not on N) or an autotune. ``scope``
    names the group (``series`` or ``run``); ``seconds`` is an ESTIMATE (docs/gpu-timing.md, "Compile time");
    it counts against the run's total limit only, not the per-config limit, which is for a config's calls."""

    what: str
    scope: str
    seconds: float

    def __post_init__(self) -> None:
        if self.scope not in ("series", "run"):
            raise ValueError(f"shared compile scope must be 'series' or 'run', got {self.scope!r}")
        if self.seconds < 0:
            raise ValueError(f"shared compile seconds must be >= 0, got {self.seconds!r}")


@dataclass(frozen=True)
class CostModel:
    """A backend's entry in the dry run's H100 cost model (bench.sweep.dryrun; ESTIMATES, docs/anchors.md).

    ref_n: the reference N of ``ms``. ms: {D: (fwd ms, fwd+bwd ms)} per call at 16 heads, bf16, causal, for D
        in ``COST_HEAD_DIMS``; quadratic backends at batch 1 and N = ref_n (time ~ batch x heads x N^2),
        linear backends at batch x N = 64k tokens (time ~ batch x heads x N).
    peak_mib: peak memory above the inputs, MiB at 64k tokens, 16 heads, D = 64, fwd+bwd (the forward is taken
        as half); None for explicit N x N scores (16 bytes per score element).
    fuses_positions: the positional transform runs inside the kernel (no extra per-call cost for it).
    basis: where the figures come from ("anchor", or "assumed = ..." for a figure reused from another kernel).
    """

    ref_n: int
    ms: Mapping[int, tuple[float, float]]
    peak_mib: float | None
    basis: str
    fuses_positions: bool = False

    def __post_init__(self) -> None:
        missing = [d for d in COST_HEAD_DIMS if d not in self.ms]
        if missing:
            raise ValueError(f"cost model needs figures for head dims {list(COST_HEAD_DIMS)}, missing {missing}")
        if self.ref_n < 1 or any(ms <= 0 for pair in self.ms.values() for ms in pair):
            raise ValueError(f"cost model needs ref_n >= 1 and positive ms, got {self.ref_n!r}, {dict(self.ms)}")


@dataclass(frozen=True)
class Encoding:
    """A positional encoding: what the planner, dry run and FLOP formulas need about it.

    key_width: (head dim) -> width of the features the attention kernel sees (2 D for LRPE-unitary, R for SPE).
    h100_ms: (fwd ms, fwd+bwd ms) the transform adds outside the kernel per call at 64k tokens, 16 heads,
        D = 64 on an H100 (x D / 64; an ESTIMATE, bench.sweep.dryrun).
    even_head_dim: pairwise rotation, so the head dim must be even.
    """

    name: str
    key_width: Callable[[int], int]
    h100_ms: tuple[float, float]
    even_head_dim: bool = False
    about: str = ""


ENCODINGS: dict[str, Encoding] = {e.name: e for e in (
    Encoding("none", lambda d: d, (0.0, 0.0), about="no positions (NoPE)"),
    Encoding("ape", lambda d: d, (0.0, 0.0), about="sinusoidal absolute positions, added at the embedding"),
    # LRPE-orthogonal's unfused rotation is docs/anchors.md's 2.21 - 0.97 ms fwd, 6.42 - 3.16 ms fwd+bwd; RoPE
    # and the permutation are assumed to cost the same (one elementwise pass over q and k)
    Encoding("rope", lambda d: d, (1.24, 3.26), even_head_dim=True, about="rotary, RoFormer's interleaved pairs"),
    # SPE has no anchor: assumed 3x LRPE-unitary's (R = 64 realisations)
    Encoding("spe-sine", lambda d: SPE_REALIZATIONS, (3.93, 9.24), about="sinusoidal stochastic PE"),
    Encoding("spe-conv", lambda d: SPE_REALIZATIONS, (3.93, 9.24), about="convolutional stochastic PE"),
    # LRPE-unitary: its anchored 2.28 / 6.24 ms minus fla's 0.97 / 3.16 (its doubled key width included)
    Encoding("lrpe-unitary", lambda d: 2 * d, (1.31, 3.08), about="LRPE, unitary (complex) transform"),
    Encoding("lrpe-orthogonal", lambda d: d, (1.24, 3.26), even_head_dim=True, about="LRPE, orthogonal"),
    Encoding("lrpe-permutation", lambda d: d, (1.24, 3.26), about="LRPE, permutation"),
)}
"""Every encoding a variant may carry, by name."""

HOUSEHOLDER_FACTOR = 1.2
"""A P other than the identity is assumed to add 20% to the positional transform's cost (an estimate)."""


BuildFn = Callable[..., nn.Module]
"""(spec: AttentionSpec, *, pe: str, p: str) -> the attention core (bench.variant.Builder's contract)."""
CheckFn = Callable[[BenchConfig, str], "str | None"]
"""(config, pe) -> None when the backend takes this config, else why not (a documented limit)."""


def _no_limits(config: BenchConfig, pe: str) -> str | None:
    return None


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """Everything about one backend of one family: the variants it registers (one per (encoding, P) in
    ``encodings``), how to build and check them, where they run, how their cost grows, what the dry run
    predicts for them, what they compile, and their oracle.

    build: makes the core of one variant (``BuildFn``). check: a config's documented limits (``CheckFn``),
        asked after the declared devices, dtypes and causal modes. probe: () -> None when this machine can run
        the backend, else the reason (called once). chunk_size: the chunk of chunked linear attention (FLOP
        formula), None otherwise. compile_seconds: {(device, pass): seconds} a config pays when the backend
        compiles per shape. shared_compile: {(device, pass): SharedCompile entries} paid once per series or run.
    reference: the backend is an oracle itself (explicit softmax, the torch chunked linear attention) and is
        not checked against one. precheck: check each (device, dtype, causal, pass) against the oracle on
        small inputs before timing it (user kernels; bench.equivalence.oracle_check).
    probe_seconds: what ``probe`` costs the first time it runs (FlexAttention compiles a small kernel: ~20 s
        on 2 CPU cores); the dry run charges it once per backend of the preset (an ESTIMATE).
    cpu_selfcheck: the CPU self-check runs this backend's equivalence check; False for a backend that compiles
        per dtype and shape (``python -m bench.equivalence`` still runs it).
    sweep_ps: the P choices ``*`` sweeps; other P choices are ablations, run by naming them.
    """

    family: str
    name: str
    build: BuildFn
    encodings: tuple[tuple[str, str], ...]
    time_complexity: str
    memory_complexity: str
    cost: CostModel
    about: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    causal_modes: tuple[bool, ...] = (True, False)
    probe: Callable[[], str | None] = _always_available
    check: CheckFn = _no_limits
    chunk_size: int | None = None
    compile_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    shared_compile: Mapping[tuple[str, str], tuple[SharedCompile, ...]] = field(default_factory=dict)
    reference: bool = False
    precheck: bool = False
    sweep_ps: tuple[str, ...] = ("identity", "householder")
    probe_seconds: float = 0.0
    cpu_selfcheck: bool = True

    def __post_init__(self) -> None:
        where = f"backend {self.family}@{self.name}"
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: family must be one of {FAMILIES}, got {self.family!r}")
        if not self.name or "@" in self.name or "," in self.name:
            raise ValueError(f"{where}: name must be non-empty without '@' or ',', got {self.name!r}")
        for what in (self.time_complexity, self.memory_complexity):
            if what not in COMPLEXITIES:
                raise ValueError(f"{where}: complexity must be one of {COMPLEXITIES}, got {what!r}")
        if not self.encodings:
            raise ValueError(f"{where}: registers no variant (encodings is empty)")
        for pe, _ in self.encodings:
            if pe not in ENCODINGS:
                raise ValueError(f"{where}: encoding must be one of {list(ENCODINGS)}, got {pe!r}")
        for name, values, allowed in (("devices", self.devices, DEVICES), ("dtypes", self.dtypes, tuple(DTYPES)),
                                      ("causal_modes", self.causal_modes, (True, False))):
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ValueError(f"{where}: {name} must be a non-empty subset of {list(allowed)}, got {values!r}")
        if self.probe_seconds < 0:
            raise ValueError(f"{where}: probe_seconds must be >= 0, got {self.probe_seconds!r}")
        for device, pass_ in (*self.compile_seconds, *self.shared_compile):
            if device not in DEVICES or pass_ not in PASSES:
                raise ValueError(f"{where}: compile keys are (device in {DEVICES}, pass in {PASSES}), "
                                 f"got {(device, pass_)!r}")

    def variant_name(self, pe: str, p: str) -> str:
        """``<family>[-<encoding>][-<P>]@<backend>``."""
        return f"{self.family}{'' if pe == 'none' else '-' + pe}{'' if p == 'identity' else '-' + p}@{self.name}"
