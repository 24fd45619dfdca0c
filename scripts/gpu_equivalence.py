"""Every FlashAttention-family backend against the float32 oracle, as a markdown table (meant for a GPU).

For each backend: its availability; then for each dtype and shape (causal by default) whether it takes the
config, and if so the max abs error of its output against ``softmax_attention`` computed in float32 on the
same (rounded) inputs, and whether that error is within ``float_tolerance(dtype)``. Runs on CPU too (most
rows then say unavailable). Exit status 1 when a backend that ran erred or missed its tolerance.

Run from the repository root: ``python -m scripts.gpu_equivalence [--n 1024 4096] [--d 64 128] ...``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from baselines.flash import FLASH_BACKENDS, availability, build_flash, float_tolerance, unsupported_reason
from baselines.flash_common import first_lines
from baselines.softmax import softmax_attention


@dataclass
class Row:
    """One line of the table; ``error`` is the max abs error against the oracle, None when not run."""

    backend: str
    dtype: str
    shape: str
    status: str
    error: float | None = None
    reason: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"],
                        choices=["bfloat16", "float16", "float32", "float64"])
    parser.add_argument("--n", nargs="+", type=int, default=[1024, 4096], help="sequence lengths")
    parser.add_argument("--d", nargs="+", type=int, default=[64, 128], help="head dims")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backends", nargs="+", default=list(FLASH_BACKENDS), choices=FLASH_BACKENDS)
    return parser.parse_args(argv)


def run_config(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reference: torch.Tensor,
               causal: bool, row: Row) -> None:
    """Run ``backend`` on q, k, v and fill ``row``'s status and error (ok / mismatch / oom / error)."""
    try:
        with torch.no_grad():
            out = build_flash(backend, causal=causal)(q, k, v)
        diff = (out.float() - reference).abs()
        row.error = diff.max().item()
        atol, rtol = float_tolerance(v.dtype)
        within = bool((diff <= atol + rtol * reference.abs()).all())
        row.status = "ok" if within else "mismatch"
        if not within:
            row.reason = f"exceeds atol={atol:g} + rtol={rtol:g} * |oracle|"
    except torch.OutOfMemoryError as exc:
        row.status, row.reason = "oom", first_lines(str(exc), lines=1)
    except Exception as exc:  # keep the message: a failure is a status, never a missing row
        row.status, row.reason = "error", f"{type(exc).__name__}: {first_lines(str(exc))}"


def collect(args: argparse.Namespace) -> list[Row]:
    """Every row: one per unavailable backend, one per (backend, dtype, shape) otherwise."""
    runnable = [b for b in args.backends if availability(b) is None]
    rows = [Row(b, "all", "all", "unavailable", reason=availability(b))
            for b in args.backends if b not in runnable]
    generator = torch.Generator().manual_seed(0)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for n in args.n:
            for d in args.d:
                shape = (args.batch, args.heads, n, d)
                label = "x".join(map(str, shape))
                q, k, v = (torch.randn(shape, generator=generator).to(args.device, dtype) for _ in range(3))
                # the oracle sees the rounded inputs the kernels see, computed in float32
                reference = softmax_attention(q.float(), k.float(), v.float(), causal=args.causal)
                for backend in runnable:
                    row = Row(backend, dtype_name, label, "unsupported")
                    reason = unsupported_reason(backend, head_dim=d, dtype=dtype, device=args.device,
                                                causal=args.causal)
                    if reason is not None:
                        row.reason = reason
                    else:
                        run_config(backend, q, k, v, reference, args.causal, row)
                    rows.append(row)
                del q, k, v, reference
    order = {b: i for i, b in enumerate(FLASH_BACKENDS)}
    return sorted(rows, key=lambda r: order[r.backend])


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| backend | dtype | shape (B x H x N x D) | status | max abs error | reason |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        error = "" if r.error is None else f"{r.error:.3e}"
        lines.append(f"| {r.backend} | {r.dtype} | {r.shape} | {r.status} | {error} | {cell(r.reason)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    hooks = getattr(torch.nn.attention, "list_flash_attention_impls", lambda: [])()
    print(f"device: {name}; torch {torch.__version__}; causal={args.causal}; "
          f"torch flash-attention hooks: {hooks or 'none'}\n")
    rows = collect(args)
    print(markdown(rows))
    return 1 if any(r.status in ("error", "mismatch") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
