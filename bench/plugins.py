"""User kernels: a function declared with :func:`kernel` in the user's own package, brought into the registry
by ``--variants 'package.module:callable'`` or by the ``lrpe_bench.variants`` entry-point group.

The declaration says what the suite needs to hold the kernel to an oracle: its family (``softmax``: exact
softmax attention with scale 1/sqrt(D); ``linear``: the suite's norm-after linear attention with the 1 + elu
feature map), the causal modes it takes, and its encoding. Its oracle is the suite's reference variant of the
same family and encoding (``bench.equivalence.oracle_name``), and before any config of it is timed it is checked
against that oracle on small random inputs (``bench.equivalence.oracle_check``). docs/your-kernel.md walks
through one.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from torch import Tensor, nn

from bench.backend import Backend, CostModel
from bench.variant import AttentionSpec, Variant

ENTRY_POINT_GROUP = "lrpe_bench.variants"
USER_FAMILIES = ("softmax", "linear")

KernelFn = Callable[..., Tensor]
"""``fn(q, k, v, *, causal: bool) -> out``: q, k (B, H, N, D), v (B, H, N, Dv) -> (B, H, N, Dv) in v's dtype."""

_DEFAULT_COST = {
    "softmax": CostModel(65536, {64: (27.5, 104.9), 128: (51.6, 189.4)}, 1160.0,
                         "assumed = sdpa-flash (a user kernel without its own cost model)"),
    "linear": CostModel(65536, {64: (0.97, 3.16), 128: (1.85, 6.76)}, 1408.0,
                        "assumed = fla (a user kernel without its own cost model)", fuses_positions=True),
}
"""The dry run's H100 figures for a user kernel that gives none: FlashAttention-2's for exact softmax, fla's
for linear attention (both ESTIMATES, bench.registry)."""


@dataclass(frozen=True)
class Kernel:
    """A user's attention function with what the suite needs to know about it (made by :func:`kernel`)."""

    fn: KernelFn
    backend: str
    family: str
    causal: tuple[bool, ...]
    encoding: str = "none"
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    memory_complexity: str | None = None
    cost: CostModel | None = None
    about: str = ""

    def __post_init__(self) -> None:
        if self.family not in USER_FAMILIES:
            raise ValueError(f"kernel {self.backend!r}: family must be one of {USER_FAMILIES} (the oracle is chosen "
                             f"by it), got {self.family!r}")

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
        return self.fn(q, k, v, causal=causal)

    def record(self, source: str = "") -> Backend:
        """The backend record of this kernel (``source``: where it was loaded from): one variant, checked
        against its oracle before it is timed."""
        fn, family = self.fn, self.family
        memory = self.memory_complexity or ("quadratic" if family == "softmax" else "linear")
        return Backend(
            family=family, name=self.backend, build=lambda spec, *, pe, p: UserCore(fn, spec),
            encodings=((self.encoding, "identity"),), devices=self.devices, dtypes=self.dtypes,
            causal_modes=self.causal, time_complexity="quadratic" if family == "softmax" else "linear",
            memory_complexity=memory, cost=self.cost or _DEFAULT_COST[family], precheck=True,
            chunk_size=64 if family == "linear" else None,
            about=f"user kernel {source or getattr(fn, '__qualname__', self.backend)}"
                  + (f": {self.about}" if self.about else ""))


def kernel(*, backend: str, family: str, causal: bool | tuple[bool, ...] = (True, False), encoding: str = "none",
           devices: tuple[str, ...] = ("cpu", "cuda"), dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
           memory_complexity: str | None = None, cost: CostModel | None = None,
           about: str = "") -> Callable[[KernelFn], Kernel]:
    """Declare ``fn(q, k, v, *, causal) -> out`` a kernel the suite can sweep as ``<family>[-<encoding>]@<backend>``.

    family: ``softmax`` or ``linear`` (see the module docstring for the function each must compute).
    causal: True (causal only), False (full only) or (True, False). memory_complexity: the peak's growth in N
    (default: quadratic for softmax, linear for linear). cost: the dry run's H100 figures
    (``bench.backend.CostModel``; default: FlashAttention-2's or fla's, marked assumed).
    """
    modes = (causal,) if isinstance(causal, bool) else tuple(causal)

    def declare(fn: KernelFn) -> Kernel:
        return Kernel(fn=fn, backend=backend, family=family, causal=modes, encoding=encoding, devices=devices,
                      dtypes=dtypes, memory_complexity=memory_complexity, cost=cost, about=about)
    return declare


class UserCore(nn.Module):
    """A user's kernel function as an attention core (``forward(q, k, v, offset=0)``); it has no parameters.
    An ``offset`` other than 0 (decoding from a cache) is not part of the kernel contract and raises."""

    def __init__(self, fn: KernelFn, spec: AttentionSpec) -> None:
        super().__init__()
        self.fn, self.causal = fn, spec.causal

    def forward(self, q: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
        if offset:
            raise ValueError(f"a user kernel takes offset 0 only, got {offset}")
        return self.fn(q, k, v, causal=self.causal)


def _as_records(obj: object, target: str) -> list[Backend | Variant]:
    """What ``target`` named as records: a Kernel, a Backend, a Variant, or a function returning one of them
    or a list of them."""
    records = (Kernel, Backend, Variant)
    expected = ("expected a bench.plugins.kernel(...) declaration, a bench.backend.Backend, a Variant, or a "
                "function of no arguments returning them")
    items = obj
    if callable(obj) and not isinstance(obj, records):
        try:
            items = obj()
        except Exception as exc:  # not a factory (or a broken one): say what was named and what is expected
            raise ValueError(f"calling {target!r} raised {type(exc).__name__}: {exc}; {expected}") from None
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    if not items or not all(isinstance(item, records) for item in items):
        raise ValueError(f"{target!r} gave {items!r}; {expected}")
    return [item.record(source=target) if isinstance(item, Kernel) else item for item in items]


def _import(target: str) -> object:
    """``package.module:callable`` -> the object, or ValueError naming what could not be found."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a user kernel is named 'package.module:callable', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} of {target!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})")
        obj = getattr(obj, part)
    return obj


def load(target: str) -> list[Variant]:
    """Register the kernels that ``package.module:callable`` names (once; a second load returns the same
    variants) and return their variants."""
    from bench.registry import all_variants, register

    if target in _LOADED:
        return [all_variants()[name] for name in _LOADED[target]]
    variants = [v for record in _as_records(_import(target), target) for v in register(record)]
    _LOADED[target] = [v.name for v in variants]
    return variants


_LOADED: dict[str, list[str]] = {}
"""Variant names registered per loaded target: loading the same target again (a preset and --variants) is a no-op."""


def load_entry_points() -> list[Variant]:
    """Register every kernel of the ``lrpe_bench.variants`` entry-point group (installed packages declare
    ``[project.entry-points."lrpe_bench.variants"] name = "package.module:callable"``). One that fails to load is
    a warning naming it, never a broken registry."""
    variants: list[Variant] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            variants += load(point.value)
        except Exception as exc:  # a broken plugin must not take the built-ins down with it
            warnings.warn(f"entry point {point.name} = {point.value!r} of group {ENTRY_POINT_GROUP} was not "
                          f"registered: {type(exc).__name__}: {exc}", stacklevel=2)
    return variants
