"""The one registry of attention variants, built from one record per backend (``bench.backend.Backend``).
Sweeps, the ``list`` command, reports and the extrapolation LM read this table; nothing else lists variants.
Adding a built-in backend is one record in ``BACKENDS`` below; a user's kernel comes in through
``register`` (``bench.plugins``: ``--variants 'package.module:callable'`` or the ``lrpe_bench.variants``
entry-point group).

Names read ``<family>[-<encoding>]@<backend>``:
    softmax@naive, softmax-rope@sdpa-math        explicit N x N softmax attention
    flash@sdpa-flash, flash-rope@flex, ...       tiled exact softmax attention (FlashAttention family)
    linear@torch-chunked                         linear attention, 1 + elu feature map, no positions
    linear-lrpe-orthogonal-householder@fla       with LRPE (kind, then P when it is not the identity)
    linear-rope@..., linear-spe-sine@...         with RoPE or SPE
All linear variants use the LRPE paper's norm-after convention (no denominator; the layer normalises).
An entry whose package or hardware is missing stays listed, with the reason it cannot run here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from functools import partial

from torch import nn

from baselines.fla_linear import fla_availability, fla_linear_attention, fla_unsupported_reason
from baselines.flash import FLASH_BACKENDS, availability, build_flash, unsupported_reason
from baselines.rope import RoPE
from baselines.softmax import SoftmaxAttention
from baselines.spe import ConvSPE, SineSPE
from bench.backend import ENCODINGS, SPE_REALIZATIONS, Backend, CostModel, SharedCompile
from bench.config import BenchConfig
from bench.variant import AttentionSpec, Variant
from lrpe import P_CHOICES, LinearAttentionCore
from lrpe.kernels.dispatch import FUSED_HEAD_DIMS, float32_reason, fused_availability

ROPE_LAYOUT = "interleaved"
"""RoPE variants pair coordinates (2i, 2i+1) as RoFormer defines RoPE, so on a CPU the rotation is one
complex multiply, the same operation as LRPE-orthogonal's. The pairing is a fixed permutation of coordinates,
which learned projections absorb: it changes no model's quality, only what a rotation costs in torch ops. The
half-split (GPT-NeoX) pairing stays in ``baselines.rope`` (``layout="half"``); it is LRPE-orthogonal with the
odd-even P, and docs/fairness.md has its measured cost."""

CHUNK_SIZE = 64
SPE_SINES = 10
SPE_CONV_KERNEL = 128
LRPE_KINDS = ("unitary", "orthogonal", "permutation")
SWEEP_P = ("identity", "householder")
"""P choices that full sweeps time; the other P choices are ablations, run by naming them."""


def _even_head_dim(config: BenchConfig, pe: str) -> str | None:
    """Pairwise rotations (RoPE, LRPE-orthogonal) need an even head dim."""
    if ENCODINGS[pe].even_head_dim and config.d % 2:
        return f"head dim {config.d} must be even for pairwise rotation"
    return None


def _fused_check(config: BenchConfig, pe: str) -> str | None:
    """The head dims the suite's fused kernels were built for, and for float32 the kinds and head dims the
    kernels take in float32 (lrpe.kernels.dispatch)."""
    if config.d not in FUSED_HEAD_DIMS:
        return f"the fused kernels take head dim {FUSED_HEAD_DIMS}, got {config.d}"
    return float32_reason(pe.removeprefix("lrpe-"), config.d, config.d) if config.dtype == "float32" else None


def _fla_check(config: BenchConfig, pe: str) -> str | None:
    """fla's kernel is probed with the key width the encoding gives (2 D for LRPE-unitary, R for SPE)."""
    return _even_head_dim(config, pe) or fla_unsupported_reason(
        ENCODINGS[pe].key_width(config.d), config.d, config.torch_dtype, config.pass_ == "fwd+bwd")


def _flash_check(backend: str) -> Callable[[BenchConfig, str], str | None]:
    def check(config: BenchConfig, pe: str) -> str | None:
        return _even_head_dim(config, pe) or unsupported_reason(
            backend, head_dim=config.d, dtype=config.dtype, device=config.device, causal=config.causal,
            backward=config.pass_ == "fwd+bwd")
    return check


# ---- builders: (spec, *, pe, p) -> core ------------------------------------------------------------------


def _rope(spec: AttentionSpec) -> nn.Module:
    return RoPE(spec.head_dim, layout=ROPE_LAYOUT)


def _softmax(spec: AttentionSpec, *, pe: str, p: str) -> nn.Module:
    return SoftmaxAttention(causal=spec.causal, positional=_rope(spec) if pe == "rope" else None)


def _flash(spec: AttentionSpec, *, backend: str, pe: str, p: str) -> nn.Module:
    return build_flash(backend, causal=spec.causal, positional=_rope(spec) if pe == "rope" else None)


def _spe(spec: AttentionSpec, kind: str) -> nn.Module:
    """SPE draws fresh codes at every call from torch's global generator, which Variant.build seeds with
    the run's seed: a sweep's codes are reproducible for the same sequence of calls."""
    if kind == "spe-sine":
        return SineSPE(spec.num_heads, spec.head_dim, num_sines=SPE_SINES, num_realizations=SPE_REALIZATIONS)
    return ConvSPE(spec.num_heads, spec.head_dim, kernel_size=SPE_CONV_KERNEL, num_realizations=SPE_REALIZATIONS)


def _linear(spec: AttentionSpec, *, pe: str, p: str, impl) -> nn.Module:
    positional: str | nn.Module = "none"
    qk_transform = None
    if pe.startswith("lrpe-"):
        positional = pe.removeprefix("lrpe-")
    elif pe == "rope":
        positional = _rope(spec)
    elif pe.startswith("spe-"):
        qk_transform = _spe(spec, pe)
    return LinearAttentionCore(spec.head_dim, num_heads=spec.num_heads, positional=positional, p=p,
                               qk_transform=qk_transform, causal=spec.causal, impl=impl,
                               chunk_size=CHUNK_SIZE, seed=spec.seed)


# ---- the records ---------------------------------------------------------------------------------------
# H100 costs: per call, 16 heads, bf16, causal (bench.backend.CostModel; ESTIMATES for the dry run, from
# docs/anchors.md's H100 medians). "anchor": measured there; "assumed": an anchored kernel's figure reused for
# a kernel of the same algorithm, or a D = 128 figure taken as 2x D = 64 where docs/anchors.md has none.
# Peak: MiB at 64k tokens, D = 64, fwd+bwd (flash kernels 1160 MiB); None for explicit N x N scores.

_FA2 = {64: (27.5, 104.9), 128: (51.6, 189.4)}
_CUDNN = {64: (19.0, 66.9), 128: (28.1, 107.6)}
_EFFICIENT = {64: (4.38, 18.8), 128: (8.76, 37.6)}
_NAIVE = {64: (65.7, 162.0), 128: (131.4, 324.0)}
_FLA = {64: (0.97, 3.16), 128: (1.85, 6.76)}
FLASH_PEAK_MIB = 1160.0
FLASH_COSTS: dict[str, CostModel] = {
    "sdpa-flash": CostModel(65536, _FA2, FLASH_PEAK_MIB, "anchor"),
    "sdpa-cudnn": CostModel(65536, _CUDNN, FLASH_PEAK_MIB, "anchor"),
    "sdpa-efficient": CostModel(16384, _EFFICIENT, FLASH_PEAK_MIB, "anchor (D = 64); D = 128 assumed 2x"),
    "flex": CostModel(65536, {64: (21.7, 91.9), 128: (43.4, 183.8)}, FLASH_PEAK_MIB,
                      "anchor (D = 64); D = 128 assumed 2x"),
    "flash-attn2": CostModel(65536, _FA2, FLASH_PEAK_MIB, "assumed = sdpa-flash (the same FA2 kernel)"),
    "flash-attn3": CostModel(65536, _CUDNN, FLASH_PEAK_MIB, "assumed = sdpa-cudnn (Hopper kernels)"),
    "flash-attn4": CostModel(65536, _CUDNN, FLASH_PEAK_MIB, "assumed = sdpa-cudnn (Hopper kernels)"),
    "xformers-cutlass": CostModel(16384, _EFFICIENT, FLASH_PEAK_MIB, "assumed = sdpa-efficient"),
    "xformers-triton": CostModel(16384, _EFFICIENT, FLASH_PEAK_MIB, "assumed = sdpa-efficient"),
    "xformers-flash": CostModel(65536, _FA2, FLASH_PEAK_MIB, "assumed = sdpa-flash"),
    "xformers-flash3": CostModel(65536, _CUDNN, FLASH_PEAK_MIB, "assumed = sdpa-cudnn"),
    "sdpa-math": CostModel(16384, _NAIVE, None, "assumed = naive softmax"),
}
NAIVE_COST = CostModel(16384, _NAIVE, None, "anchor: naive softmax (D = 64); D = 128 assumed 2x")
FLEX_COMPILE_SECONDS = {("cpu", "fwd"): 18.0, ("cuda", "fwd"): 10.0, ("cuda", "fwd+bwd"): 20.0}
"""FlexAttention under ``torch.compile(dynamic=False)`` compiles again for every new N, batch, D, dtype and pass.
CPU: measured here, 17-18 s per new shape (docs/gpu-timing.md; FlexAttention has no CPU backward). CUDA: an
estimate, not a measurement (docs/gpu-timing.md gives its basis); the first GPU run's flex rows replace it."""

FLEX_PROBE_SECONDS = 20.0
"""FlexAttention's availability probe compiles one small kernel: taken as 20 s (a new shape's compile measured
17-18 s on 2 CPU cores, FLEX_COMPILE_SECONDS), charged once by the dry run; an estimate."""

_ALL_PES = ("none", "rope", "ape")
_LINEAR_PES = ("none", "rope", "spe-sine", "spe-conv")
ALL_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _linear_encodings(ps: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((pe, "identity") for pe in _LINEAR_PES) + tuple(
        (f"lrpe-{kind}", p) for kind in LRPE_KINDS for p in ps)


def _flash_record(backend: str) -> Backend:
    family = "softmax" if backend == "sdpa-math" else "flash"
    if backend not in FLASH_COSTS:
        raise RuntimeError(f"flash backend {backend!r} has no H100 cost model in bench.registry.FLASH_COSTS")
    return Backend(
        family=family, name=backend, build=partial(_flash, backend=backend),
        encodings=tuple((pe, "identity") for pe in (_ALL_PES if backend in ("sdpa-flash", "sdpa-math")
                                                    else ("none", "rope"))),
        time_complexity="quadratic", memory_complexity="quadratic" if family == "softmax" else "linear",
        cost=FLASH_COSTS[backend], probe=partial(availability, backend), check=_flash_check(backend),
        compile_seconds=FLEX_COMPILE_SECONDS if backend == "flex" else {},
        probe_seconds=FLEX_PROBE_SECONDS if backend == "flex" else 0.0, cpu_selfcheck=backend != "flex",
        about="explicit N x N scores" if family == "softmax" else "tiled exact softmax attention")


BACKENDS: tuple[Backend, ...] = (
    Backend(family="softmax", name="naive", build=_softmax, encodings=tuple((pe, "identity") for pe in _ALL_PES),
            time_complexity="quadratic", memory_complexity="quadratic", cost=NAIVE_COST, check=_even_head_dim,
            reference=True, about="explicit N x N scores"),
    _flash_record("sdpa-math"),
    *(_flash_record(b) for b in FLASH_BACKENDS if b != "sdpa-math"),
    Backend(family="linear", name="naive", build=partial(_linear, impl="quadratic"),
            encodings=_linear_encodings(("identity",)), time_complexity="quadratic",
            memory_complexity="quadratic", cost=CostModel(16384, _NAIVE, None, "assumed = naive softmax"),
            check=_even_head_dim, reference=True, about="quadratic oracle (explicit N x N)"),
    Backend(family="linear", name="torch-chunked", build=partial(_linear, impl="chunked"),
            encodings=_linear_encodings(P_CHOICES), time_complexity="linear", memory_complexity="linear",
            cost=CostModel(65536, {64: (3.37, 9.05), 128: (7.43, 21.3)}, 2560.0, "anchor"),
            check=_even_head_dim, chunk_size=CHUNK_SIZE, reference=True,
            about=f"chunked form in plain PyTorch, C = {CHUNK_SIZE}, float32 state"),
    Backend(family="linear", name="fla", build=partial(_linear, impl=fla_linear_attention),
            encodings=_linear_encodings(P_CHOICES), time_complexity="linear", memory_complexity="linear",
            cost=CostModel(65536, _FLA, 1408.0, "anchor"), devices=("cuda",), causal_modes=(True,),
            dtypes=("float32", "bfloat16", "float16"), probe=fla_availability, check=_fla_check,
            chunk_size=CHUNK_SIZE,
            # fla's chunk kernels autotune about 48 configurations each, keyed on the chunk size and gating
            # flags but not on D or dtype: once per run and pass (2 kernels fwd, 5 fwd+bwd, each configuration
            # compiled and timed, ~1.15 s), then the chosen configuration compiles per series (~1.5 s a
            # kernel). Estimates.
            shared_compile={("cuda", "fwd"): (SharedCompile("fla autotune", "run", 110.0),
                                              SharedCompile("Triton JIT", "series", 3.0)),
                            ("cuda", "fwd+bwd"): (SharedCompile("fla autotune", "run", 276.0),
                                                  SharedCompile("Triton JIT", "series", 7.5))},
            about="flash-linear-attention chunk_linear_attn (Triton); positional transform unfused"),
    Backend(family="linear", name="triton", build=partial(_linear, impl="triton"),
            # no positions or LRPE (each P: one other than identity runs in torch before the kernels,
            # lrpe.kernels.function)
            encodings=(("none", "identity"), *((f"lrpe-{kind}", p) for kind in LRPE_KINDS for p in P_CHOICES)),
            time_complexity="linear", memory_complexity="linear",
            # assumed = fla's figures: the fused kernels are predicted at 1-1.5 ms fwd and 3-4 ms fwd+bwd at
            # D = 64 (docs/kernels.md), i.e. about fla's; the positional transform is fused
            cost=CostModel(65536, _FLA, 1408.0, "assumed = fla", fuses_positions=True), devices=("cuda",),
            dtypes=("bfloat16", "float16", "float32"), probe=fused_availability, check=_fused_check,
            chunk_size=CHUNK_SIZE,
            # per series: fwd compiles the state and output kernels, fwd+bwd three more. Estimate from the
            # ahead-of-time compile of the same kernels for sm_90 on this 2-core CPU (fwd 5.6-6.7 s, fwd+bwd
            # 14-17 s for orthogonal D=64 and unitary D=128, bf16; docs/gpu-timing.md).
            shared_compile={("cuda", "fwd"): (SharedCompile("Triton JIT", "series", 6.0),),
                            ("cuda", "fwd+bwd"): (SharedCompile("Triton JIT", "series", 15.0),)},
            about=f"lrpe.kernels: 1 + elu and LRPE fused into Triton kernels, C = {CHUNK_SIZE} (float32: 32), "
                  "float32 state"),
)
"""The built-in backends, in registry order. One record per (family, backend)."""


# ---- the table -----------------------------------------------------------------------------------------

_RECORDS: dict[tuple[str, str], Backend] = {}
_TABLE: dict[str, Variant] | None = None


def variants_of(record: Backend) -> list[Variant]:
    """The variants ``record`` registers: one per (encoding, P) in its ``encodings``."""
    out = []
    for pe, p in record.encodings:
        check = record.check
        out.append(Variant(
            name=record.variant_name(pe, p), family=record.family, pe=pe, backend=record.name,
            builder=partial(record.build, pe=pe, p=p), time_complexity=record.time_complexity,
            memory_complexity=record.memory_complexity, devices=record.devices, dtypes=record.dtypes,
            causal_modes=record.causal_modes, probe=record.probe,
            check=lambda config, check=check, pe=pe: check(config, pe), chunk_size=record.chunk_size,
            in_sweeps=pe != "ape" and p in record.sweep_ps, precheck=record.precheck,
            description=record.about + (" (APE acts at the embedding)" if pe == "ape" else ""),
            options={"p": p} if record.family == "linear" else {}))
    return out


def register(record: Backend | Variant, *, replace: bool = False) -> list[Variant]:
    """Add a backend's variants, or one variant of a registered backend, to the registry; returns the
    variants added. A name (or backend record) already registered raises ValueError unless ``replace``."""
    table = all_variants()
    if isinstance(record, Variant):
        backend_of(record)  # ValueError: its backend has no record (planner, dry run and report need one)
        variants = [record]
    else:
        key = (record.family, record.name)
        if key in _RECORDS and not replace and _RECORDS[key] is not record:
            raise ValueError(f"backend {record.family}@{record.name} is already registered")
        variants = variants_of(record)
    taken = [v.name for v in variants if v.name in table and not replace]
    if taken:
        raise ValueError(f"variant names already registered: {taken}")
    if not isinstance(record, Variant):
        _RECORDS[(record.family, record.name)] = record
    table.update({v.name: v for v in variants})
    return variants


def all_variants() -> dict[str, Variant]:
    """Every registered variant by name, in registry order: the built-in backends', then those of the
    ``lrpe_bench.variants`` entry points (loaded on the first call), then any ``register``-ed since."""
    global _TABLE
    if _TABLE is None:
        _TABLE = {}
        for record in BACKENDS:
            register(record)
        from bench.plugins import load_entry_points

        load_entry_points()
    return _TABLE


def backend_of(variant: Variant) -> Backend:
    """The record of ``variant``'s backend (every fact the planner, dry run and equivalence check need)."""
    all_variants()
    key = (variant.family, variant.backend)
    if key not in _RECORDS:
        raise ValueError(f"variant {variant.name!r} has no backend record {variant.family}@{variant.backend}; "
                         f"registered: {sorted(f'{f}@{b}' for f, b in _RECORDS)}")
    return _RECORDS[key]


def get_variant(name: str) -> Variant:
    table = all_variants()
    if name not in table:
        close = fnmatch.filter(table, f"*{name.split('@')[0]}*")[:8]
        raise ValueError(f"unknown variant {name!r}; similar: {close or 'none'}; "
                         f"`python -m bench list` shows all {len(table)}")
    return table[name]


def select_variants(patterns: list[str] | tuple[str, ...] | str) -> list[Variant]:
    """Variants matching exact names or globs, in registry order.

    "*" alone means every variant that sweeps time (``in_sweeps``); ``package.module:callable`` loads a user's
    kernels (``bench.plugins.load``) and selects them; any other pattern selects every match, ablations
    included. A pattern that matches nothing raises ValueError naming it.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    table = all_variants()
    chosen: dict[str, Variant] = {}
    for pattern in patterns:
        if ":" in pattern:
            from bench.plugins import load

            matches = [v.name for v in load(pattern)]
        elif pattern == "*":
            matches = [name for name, v in table.items() if v.in_sweeps]
        else:
            matches = fnmatch.filter(table, pattern)
        if not matches:
            raise ValueError(f"no variant matches {pattern!r}; `python -m bench list` shows the {len(table)} names")
        chosen.update({name: table[name] for name in matches})
    return [v for name, v in table.items() if name in chosen]
