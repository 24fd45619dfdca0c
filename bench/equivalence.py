"""Every accelerated backend against its oracle, forward and gradients: one row per (variant, dtype, shape).

Which variants: from the registry, every exact-softmax variant on a kernel backend (the FlashAttention family
and ``softmax@sdpa-math``; no positions, so the kernel is all that differs) against the softmax oracle
``baselines.softmax.softmax_attention``, and every linear variant on a kernel backend (``fla``: plain and each
encoding, LRPE with every P) against its twin on ``torch-chunked``, the suite's reference linear attention.
The oracle runs on the very (rounded) inputs the kernel saw, in float64 for softmax and in float32 (float64
for float64 inputs) for the linear twin, with the same parameters (same build seed) and the same random SPE
draw; its gradients dq, dk, dv come from autograd for the same dense random output gradient.

Errors are normalised maxima, ``max |x - x_oracle| / max |x_oracle|``, for the output and each gradient, held
to one tolerance per dtype (:data:`TOLERANCE`): loose enough for reduced-precision accumulation (bf16 keeps 8
significant bits; fla may run float32 dots as TF32), tight enough that a wrong mask, scale, layout or a
missing gradient term (errors of order 0.1 to 1) fails. Status: ``pass``/``fail``; ``unavailable``
(package or GPU missing; one row per variant), ``unsupported`` (a documented limit), ``error`` (anything
raised). It runs on CPU too: the CPU kernels (SDPA flash and math) are checked there and the rest say why not.

``python -m bench.equivalence [--device cuda] [--dtypes bfloat16 float16] [--shapes 2x4x1024x64 ...]`` prints
the table and exits 1 when a row failed or erred.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from baselines.softmax import softmax_attention
from bench.config import DTYPES, BenchConfig
from bench.registry import all_variants, backend_of, get_variant
from bench.sweep.executor import describe
from bench.variant import Variant

TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 2e-3, "float16": 1e-2, "bfloat16": 3e-2}
"""Largest normalised max error of the output and of each gradient, per dtype."""

DEFAULT_DTYPES: tuple[str, ...] = ("bfloat16", "float16")
DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = ((2, 4, 1024, 64), (1, 4, 1000, 128))
"""(B, H, N, D): a power-of-two N and a ragged one (the last tile or chunk partial), D = 64 and 128 (where
LRPE-unitary's key width reaches 256)."""

REFERENCE_LINEAR_BACKEND = "torch-chunked"
REFERENCE_SOFTMAX_BACKEND = "naive"
_SEED = 0
PRECHECK_SHAPE = (1, 2, 96, None)
"""(B, H, N, D) of the check a user kernel passes before it is timed: small, N not a multiple of 64 (a partial
last tile or chunk), D the config's."""


@dataclass
class EquivalenceRow:
    """One line of the table. Errors are normalised max errors (see the module docstring); None: not run."""

    name: str
    dtype: str
    shape: str
    status: str
    forward_error: float | None = None
    dq_error: float | None = None
    dk_error: float | None = None
    dv_error: float | None = None
    tolerance: float | None = None
    reason: str = ""

    def errors(self) -> dict[str, float | None]:
        return {"out": self.forward_error, "dq": self.dq_error, "dk": self.dk_error, "dv": self.dv_error}

    def describe(self) -> str:
        """The errors against the tolerance and the reason, in one line."""
        measured = ", ".join(f"{k} {v:.2e}" for k, v in self.errors().items() if v is not None)
        parts = [f"max normalised error {measured} (tolerance {self.tolerance:.0e})" if measured else "",
                 self.reason]
        return "; ".join(p for p in parts if p)


def kernel_variants() -> list[Variant]:
    """The registry's variants that run an accelerated kernel, each paired with an oracle (see above)."""
    out = []
    for variant in all_variants().values():
        if backend_of(variant).reference:
            continue
        # softmax kernels without positions (the kernel is all that differs); linear ones with every encoding
        if variant.family == "linear" or variant.pe == "none":
            out.append(variant)
    return out


def oracle_name(variant: Variant) -> str:
    """What ``variant`` is compared with: its torch-chunked twin (linear), the softmax oracle (no positions),
    or its explicit-softmax twin with the same encoding (``softmax-rope@naive``), in float64."""
    if variant.family == "linear":
        return variant.name.replace(f"@{variant.backend}", f"@{REFERENCE_LINEAR_BACKEND}")
    if variant.pe == "none":
        return "softmax_attention (float64)"
    return f"softmax-{variant.pe}@{REFERENCE_SOFTMAX_BACKEND} (float64)"


def _normalised_error(x: Tensor | None, reference: Tensor | None) -> float:
    if x is None or reference is None:
        return float("inf")  # a gradient the kernel did not produce
    scale = reference.abs().max().item()
    return (x.to(torch.float64) - reference).abs().max().item() / (scale if scale > 0 else 1.0)


def _run(core: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor | None,
         draw_seed: int) -> tuple[Tensor, list[Tensor | None]]:
    """Output and (when grad_out is given) dq, dk, dv; the global generator is seeded first (SPE draws)."""
    leaves = [t.detach().requires_grad_(grad_out is not None) for t in (q, k, v)]
    torch.manual_seed(draw_seed)
    with torch.set_grad_enabled(grad_out is not None):
        out = core(*leaves)
        if grad_out is None:
            return out.detach(), []
        out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


class _SoftmaxOracle(torch.nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax_attention(q, k, v, causal=self.causal)


def _oracle(variant: Variant, config: BenchConfig, q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor | None,
            draw_seed: int) -> tuple[Tensor, list[Tensor | None]]:
    """The oracle on the same (rounded) inputs: softmax in float64; the torch-chunked twin in float32
    (float64 for float64 inputs), the dtype SPE computes its codes in for every input dtype but float64, so
    that the seeded draw gives the kernel's codes exactly (float32 chunked attention is exact to ~1e-6 here,
    far inside every tolerance)."""
    if variant.family == "linear":
        twin = get_variant(oracle_name(variant))
        dtype = "float64" if config.dtype == "float64" else "float32"
        core = twin.build(replace(config, variant=twin.name, dtype=dtype), seed=_SEED)
        cast = DTYPES[dtype]
    elif variant.pe == "none":
        core, cast = _SoftmaxOracle(config.causal), torch.float64
    else:
        twin = get_variant(oracle_name(variant).split(" ")[0])
        core = twin.build(replace(config, variant=twin.name, dtype="float64"), seed=_SEED).to(torch.float64)
        cast = torch.float64
    inputs = (t.to(cast) for t in (q, k, v))
    return _run(core, *inputs, None if grad_out is None else grad_out.to(cast), draw_seed)


def compare(variant: Variant, config: BenchConfig, *, backward: bool = True) -> EquivalenceRow:
    """Run ``variant`` on ``config``'s shape and dtype (its pass is ignored) against its oracle; the inputs,
    output gradient and SPE draw are seeded, so the same call gives the same row."""
    shape = (config.batch, config.heads, config.n, config.d)
    row = EquivalenceRow(variant.name, config.dtype, "x".join(map(str, shape)), "fail",
                         tolerance=TOLERANCE[config.dtype])
    generator = torch.Generator().manual_seed(sum(shape))
    q, k, v, grad_out = (torch.randn(shape, generator=generator).to(config.device, config.torch_dtype)
                         for _ in range(4))
    try:
        core = variant.build(config, seed=_SEED)
        out, grads = _run(core, q, k, v, grad_out if backward else None, draw_seed=_SEED + 1)
        ref_out, ref_grads = _oracle(variant, config, q, k, v, grad_out if backward else None,
                                     draw_seed=_SEED + 1)
    except torch.OutOfMemoryError as exc:
        row.status, row.reason = "error", f"out of memory at this shape: {describe(exc)}"
        return row
    except Exception as exc:  # a failure is a row with the exception, never a missing row
        row.status, row.reason = "error", describe(exc)
        return row
    if out.shape != ref_out.shape or out.dtype != config.torch_dtype:
        row.reason = f"returned {tuple(out.shape)} {out.dtype}, expected {tuple(ref_out.shape)} {config.dtype}"
        return row
    row.forward_error = _normalised_error(out, ref_out)
    if backward:
        row.dq_error, row.dk_error, row.dv_error = (_normalised_error(g, r) for g, r in zip(grads, ref_grads,
                                                                                          strict=True))
    worst = max(e for e in row.errors().values() if e is not None)
    row.status = "pass" if worst <= row.tolerance else "fail"
    if row.status == "fail":
        row.reason = f"exceeds the tolerance {row.tolerance:.0e} against {oracle_name(variant)}"
    return row


def oracle_check(variant: Variant, config: BenchConfig) -> str | None:
    """None when ``variant`` matches its oracle on small seeded inputs (``PRECHECK_SHAPE``) in ``config``'s
    device, dtype and causal mode (gradients too for fwd+bwd), else why not: the max normalised errors against
    the tolerance, or what the kernel raised. The sweep runs it before a user kernel is timed."""
    b, h, n, _ = PRECHECK_SHAPE
    small = replace(config, batch=b, heads=h, n=n)
    row = compare(variant, small, backward=config.pass_ == "fwd+bwd")
    if row.status == "pass":
        return None
    what = f"oracle check on {row.shape} {config.dtype} against {oracle_name(variant)}"
    if row.status == "error":
        return f"{what} raised: {row.reason}"
    if row.reason.startswith("exceeds the tolerance"):  # the errors and tolerance say it; the oracle is named
        row.reason = ""
    return f"{what} failed: {row.describe()}"


def _rows_for(variant: Variant, device: str, dtypes: Sequence[str],
              shapes: Sequence[tuple[int, int, int, int]], causal: bool) -> list[EquivalenceRow]:
    available = variant.availability()
    if not available.runs:
        return [EquivalenceRow(variant.name, "all", "all", available.status, reason=available.reason or "")]
    rows = []
    for dtype in dtypes:
        for b, h, n, d in shapes:
            config = BenchConfig(variant=variant.name, n=n, d=d, batch=b, heads=h, dtype=dtype, causal=causal,
                                 pass_="fwd+bwd", device=device)
            label = f"{b}x{h}x{n}x{d}"
            verdict = variant.verdict(config)
            if verdict.runs:
                rows.append(compare(variant, config))
                continue
            forward_only = variant.verdict(replace(config, pass_="fwd"))
            if verdict.status == "unsupported" and forward_only.runs:
                row = compare(variant, config, backward=False)
                row.reason = "; ".join(r for r in (row.reason, f"gradients not checked: {verdict.reason}") if r)
                rows.append(row)
            else:
                rows.append(EquivalenceRow(variant.name, dtype, label, verdict.status, reason=verdict.reason or ""))
    return rows


def equivalence_rows(device: str, dtypes: Sequence[str] = DEFAULT_DTYPES,
                     shapes: Sequence[tuple[int, int, int, int]] = DEFAULT_SHAPES, *, causal: bool = True,
                     names: Sequence[str] | None = None) -> list[EquivalenceRow]:
    """The table: every kernel variant (or those in ``names``) on ``device`` ("cpu" or "cuda") for each dtype
    name and (B, H, N, D) shape, against its oracle, forward and gradients. Never raises for a variant's
    failure: that is a row. Linear kernels are causal only; with ``causal=False`` their rows say so."""
    unknown = [d for d in dtypes if d not in TOLERANCE]
    if unknown:
        raise ValueError(f"dtypes {unknown} have no tolerance; allowed: {sorted(TOLERANCE)}")
    variants = kernel_variants() if names is None else [get_variant(n) for n in names]
    return [row for variant in variants for row in _rows_for(variant, device, dtypes, shapes, causal)]


def markdown(rows: list[EquivalenceRow]) -> str:
    """The rows as a markdown table."""
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2e}"

    lines = ["| variant | dtype | B x H x N x D | status | out | dq | dk | dv | tolerance | reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reason = r.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.name} | {r.dtype} | {r.shape} | {r.status} | {cell(r.forward_error)} | "
                     f"{cell(r.dq_error)} | {cell(r.dk_error)} | {cell(r.dv_error)} | {cell(r.tolerance)} | "
                     f"{reason} |")
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        b, h, n, d = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be BxHxNxD with integers, e.g. 2x4x1024x64, got {text!r}") from None
    return b, h, n, d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES), choices=sorted(TOLERANCE))
    parser.add_argument("--shapes", nargs="+", type=_shape, default=list(DEFAULT_SHAPES), metavar="BxHxNxD")
    parser.add_argument("--variants", nargs="+", default=None, help="variant names (default: every kernel)")
    parser.add_argument("--full", action="store_true", help="non-causal (softmax kernels only)")
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; causal={not args.full}\n")
    rows = equivalence_rows(args.device, args.dtypes, args.shapes, causal=not args.full, names=args.variants)
    print(markdown(rows))
    return 1 if any(r.status in ("fail", "error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
