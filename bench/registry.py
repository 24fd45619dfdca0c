"""The one registry of attention variants. Sweeps, the ``list`` command, reports and the extrapolation LM
read this table; nothing else lists variants.

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
from functools import cache, partial

from torch import nn

from baselines.fla_linear import fla_availability, fla_linear_attention, fla_unsupported_reason
from baselines.flash import FLASH_BACKENDS, availability, build_flash, unsupported_reason
from baselines.rope import RoPE
from baselines.softmax import SoftmaxAttention
from baselines.spe import ConvSPE, SineSPE
from bench.config import BenchConfig
from bench.variant import AttentionSpec, Variant, always_available, supports_everything
from lrpe import P_CHOICES, LinearAttentionCore
from lrpe.kernels.dispatch import FUSED_HEAD_DIMS, float32_reason, fused_availability

ROPE_LAYOUT = "half"
"""RoPE variants use the half-split (GPT-NeoX) layout; LRPE-orthogonal with P = identity is the
interleaved layout, so the two differ by the odd-even P."""

CHUNK_SIZE = 64
SPE_REALIZATIONS = 64
SPE_SINES = 10
SPE_CONV_KERNEL = 128
LRPE_KINDS = ("unitary", "orthogonal", "permutation")
SWEEP_P = ("identity", "householder")
"""P choices that full sweeps time; the other P choices are ablations, run by naming them."""


def _even_head_dim(config: BenchConfig) -> str | None:
    return None if config.d % 2 == 0 else f"head dim {config.d} must be even for pairwise rotation"


def _fused_head_dim(config: BenchConfig) -> str | None:
    return None if config.d in FUSED_HEAD_DIMS else f"the fused kernels take head dim {FUSED_HEAD_DIMS}, got {config.d}"


def _fused_check(pe: str) -> Callable[[BenchConfig], str | None]:
    """Head dims, and for float32 the kinds and head dims the kernels take in float32 (lrpe.kernels.dispatch)."""
    kind = pe.removeprefix("lrpe-")
    return lambda config: _fused_head_dim(config) or (
        float32_reason(kind, config.d, config.d) if config.dtype == "float32" else None)


def _linear_check(pe: str, backend: str) -> Callable[[BenchConfig], str | None]:
    """The limits of a linear variant: pairwise rotation needs an even D; the suite's fused kernels take the
    head dims they were built for; fla's kernel is probed with the key width its encoding gives (2 D for
    LRPE-unitary, R for SPE)."""
    needs_even = pe in ("lrpe-orthogonal", "rope")
    if backend == "triton":
        return _fused_check(pe)
    if backend != "fla":
        return _even_head_dim if needs_even else supports_everything
    key_width = _key_width(pe)

    def check(config: BenchConfig) -> str | None:
        if needs_even and (reason := _even_head_dim(config)):
            return reason
        return fla_unsupported_reason(key_width(config.d), config.d, config.torch_dtype, config.pass_ == "fwd+bwd")
    return check


# ---- builders -----------------------------------------------------------------------------------------


def _rope(spec: AttentionSpec) -> nn.Module:
    return RoPE(spec.head_dim, layout=ROPE_LAYOUT)


def _softmax(spec: AttentionSpec, *, pe: str) -> nn.Module:
    return SoftmaxAttention(causal=spec.causal, positional=_rope(spec) if pe == "rope" else None)


def _flash(spec: AttentionSpec, *, backend: str, pe: str) -> nn.Module:
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


# ---- the table ----------------------------------------------------------------------------------------


def _softmax_variants() -> list[Variant]:
    out = []
    for backend in ("naive", "sdpa-math"):
        for pe in ("none", "rope", "ape"):
            name = f"softmax{'' if pe == 'none' else '-' + pe}@{backend}"
            if backend == "naive":
                builder: Callable = partial(_softmax, pe=pe)
                probe, check = always_available, (_even_head_dim if pe == "rope" else supports_everything)
            else:
                builder = partial(_flash, backend=backend, pe=pe)
                probe, check = partial(availability, backend), _flash_check(backend, pe)
            out.append(Variant(
                name=name, family="softmax", pe=pe, backend=backend, builder=builder,
                time_complexity="quadratic", memory_complexity="quadratic", probe=probe, check=check,
                in_sweeps=pe != "ape",
                description="explicit N x N scores" + (" (APE acts at the embedding)" if pe == "ape" else "")))
    return out


def _flash_check(backend: str, pe: str) -> Callable[[BenchConfig], str | None]:
    def check(config: BenchConfig) -> str | None:
        if pe == "rope" and (reason := _even_head_dim(config)):
            return reason
        return unsupported_reason(backend, head_dim=config.d, dtype=config.dtype, device=config.device,
                                  causal=config.causal, backward=config.pass_ == "fwd+bwd")
    return check


def _flash_variants() -> list[Variant]:
    out = []
    for backend in FLASH_BACKENDS:
        if backend == "sdpa-math":
            continue
        pes = ("none", "rope", "ape") if backend == "sdpa-flash" else ("none", "rope")
        for pe in pes:
            out.append(Variant(
                name=f"flash{'' if pe == 'none' else '-' + pe}@{backend}", family="flash", pe=pe,
                backend=backend, builder=partial(_flash, backend=backend, pe=pe),
                time_complexity="quadratic", memory_complexity="linear",
                probe=partial(availability, backend), check=_flash_check(backend, pe), in_sweeps=pe != "ape",
                description="tiled exact softmax attention" + (" (APE acts at the embedding)" if pe == "ape"
                                                               else "")))
    return out


LINEAR_BACKENDS: dict[str, dict] = {
    "naive": {"impl": "quadratic", "time": "quadratic", "memory": "quadratic", "devices": ("cpu", "cuda"),
              "probe": always_available, "causal": (True, False),
              "dtypes": ("float32", "float64", "bfloat16", "float16"), "about": "quadratic oracle (explicit N x N)"},
    "torch-chunked": {"impl": "chunked", "time": "linear", "memory": "linear", "devices": ("cpu", "cuda"),
                      "probe": always_available, "causal": (True, False),
                      "dtypes": ("float32", "float64", "bfloat16", "float16"),
                      "about": f"chunked form in plain PyTorch, C = {CHUNK_SIZE}, float32 state"},
    "fla": {"impl": fla_linear_attention, "time": "linear", "memory": "linear", "devices": ("cuda",),
            "probe": fla_availability, "causal": (True,), "dtypes": ("float32", "bfloat16", "float16"),
            "about": "flash-linear-attention chunk_linear_attn (Triton); positional transform unfused"},
    "triton": {"impl": "triton", "time": "linear", "memory": "linear", "devices": ("cuda",),
               "probe": fused_availability, "causal": (True, False), "dtypes": ("bfloat16", "float16", "float32"),
               "about": f"lrpe.kernels: 1 + elu and LRPE fused into Triton kernels, C = {CHUNK_SIZE} (float32: 32), "
                        "float32 state"},
}


def _linear_encodings(backend: str) -> list[tuple[str, str]]:
    """(pe, P) pairs registered for a linear backend: every P on the fast backends, P = identity on naive;
    the fused triton backend takes no positions or LRPE (each P: one other than identity runs in torch
    before the kernels, lrpe.kernels.function)."""
    if backend == "triton":
        return [("none", "identity")] + [(f"lrpe-{kind}", p) for kind in LRPE_KINDS for p in P_CHOICES]
    pairs = [("none", "identity"), ("rope", "identity"), ("spe-sine", "identity"), ("spe-conv", "identity")]
    ps = ("identity",) if backend == "naive" else P_CHOICES
    pairs += [(f"lrpe-{kind}", p) for kind in LRPE_KINDS for p in ps]
    return pairs


def _key_width(pe: str) -> Callable[[int], int]:
    if pe == "lrpe-unitary":
        return lambda d: 2 * d
    if pe.startswith("spe-"):
        return lambda d: SPE_REALIZATIONS
    return lambda d: d


def _linear_variants() -> list[Variant]:
    out = []
    for backend, info in LINEAR_BACKENDS.items():
        for pe, p in _linear_encodings(backend):
            name = f"linear{'' if pe == 'none' else '-' + pe}{'' if p == 'identity' else '-' + p}@{backend}"
            out.append(Variant(
                name=name, family="linear", pe=pe, backend=backend,
                builder=partial(_linear, pe=pe, p=p, impl=info["impl"]),
                time_complexity=info["time"], memory_complexity=info["memory"], devices=info["devices"],
                dtypes=info["dtypes"], causal_modes=info["causal"], probe=info["probe"],
                check=_linear_check(pe, backend), key_width=_key_width(pe),
                chunk_size=CHUNK_SIZE if info["time"] == "linear" else None,
                in_sweeps=p in SWEEP_P, description=info["about"], options={"p": p}))
    return out


@cache
def all_variants() -> dict[str, Variant]:
    """Every registered variant by name, in registry order."""
    variants = _softmax_variants() + _flash_variants() + _linear_variants()
    table = {}
    for variant in variants:
        if variant.name in table:
            raise RuntimeError(f"duplicate variant name {variant.name!r}")
        table[variant.name] = variant
    return table


def get_variant(name: str) -> Variant:
    table = all_variants()
    if name not in table:
        close = fnmatch.filter(table, f"*{name.split('@')[0]}*")[:8]
        raise ValueError(f"unknown variant {name!r}; similar: {close or 'none'}; "
                         f"`python -m bench list` shows all {len(table)}")
    return table[name]


def select_variants(patterns: list[str] | tuple[str, ...] | str) -> list[Variant]:
    """Variants matching exact names or globs, in registry order.

    "*" alone means every variant that sweeps time (``in_sweeps``); any other pattern selects every match,
    ablations included. A pattern that matches nothing raises ValueError naming it.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    table = all_variants()
    chosen: dict[str, Variant] = {}
    for pattern in patterns:
        if pattern == "*":
            matches = [name for name, v in table.items() if v.in_sweeps]
        else:
            matches = fnmatch.filter(table, pattern)
        if not matches:
            raise ValueError(f"no variant matches {pattern!r}; `python -m bench list` shows the {len(table)} names")
        chosen.update({name: table[name] for name in matches})
    return [v for name, v in table.items() if name in chosen]

