"""A dry run: the plan of a sweep on a device that need not be here, with predicted times from a cost model.

``python -m bench run --preset full --dry-run`` (``--assume-device h100``, the one model so far) plans the
sweep for CUDA without probing this machine, predicts each config's per-call time and peak memory from
``H100_MS`` (ESTIMATES from docs/anchors.md H100 measurements, scaled; see docs/gpu-timing.md), and runs the
planner's own budget (``Budget.decide``, the call model of do_bench, compile times) over the plan in order, so
the printed statuses are those the real run would give if the model is right. Nothing is measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.measure.timing import DO_BENCH_FLUSH_BYTES, TIMER_DO_BENCH
from bench.sweep.planner import Budget, CallModel, Planned, Prediction, plan
from bench.sweep.presets import SweepSpec

REF_TOKENS = 65536
REF_HEADS = 16

# (reference N, {D: (fwd ms, fwd+bwd ms)}) per backend, 16 heads, bf16, causal. Quadratic backends: batch 1 at
# the reference N (time ~ batch x heads x N^2); linear backends: batch x N = 64k tokens (time ~ batch x heads
# x N). "anchor": docs/anchors.md's H100 medians; "assumed": an anchored kernel's figure reused for a kernel of the
# same algorithm, or a D = 128 figure taken as 2x D = 64 where docs/anchors.md has none.
_FA2 = (65536, {64: (27.5, 104.9), 128: (51.6, 189.4)})
_CUDNN = (65536, {64: (19.0, 66.9), 128: (28.1, 107.6)})
_EFFICIENT = (16384, {64: (4.38, 18.8), 128: (8.76, 37.6)})
_NAIVE = (16384, {64: (65.7, 162.0), 128: (131.4, 324.0)})
H100_MS: dict[str, tuple[int, dict[int, tuple[float, float]]]] = {
    "sdpa-flash": _FA2,                                   # anchor
    "sdpa-cudnn": _CUDNN,                                 # anchor
    "sdpa-efficient": _EFFICIENT,                         # anchor (D = 64); D = 128 assumed 2x
    "flex": (65536, {64: (21.7, 91.9), 128: (43.4, 183.8)}),  # anchor (D = 64); D = 128 assumed 2x
    "flash-attn2": _FA2,                                  # assumed = sdpa-flash (the same FA2 kernel)
    "flash-attn3": _CUDNN, "flash-attn4": _CUDNN,         # assumed = cuDNN (Hopper kernels)
    "xformers-cutlass": _EFFICIENT, "xformers-triton": _EFFICIENT,  # assumed = sdpa-efficient
    "xformers-flash": _FA2, "xformers-flash3": _CUDNN,    # assumed
    "naive": _NAIVE,                                      # anchor: naive softmax (D = 64); D = 128 assumed 2x
    "sdpa-math": _NAIVE,                                  # assumed = naive softmax
    "fla": (65536, {64: (0.97, 3.16), 128: (1.85, 6.76)}),            # anchor
    "torch-chunked": (65536, {64: (3.37, 9.05), 128: (7.43, 21.3)}),  # anchor
    # assumed = fla's figures: the suite's fused kernels are predicted at 1-1.5 ms fwd and 3-4 ms fwd+bwd at
    # D = 64 (docs/kernels.md), i.e. about fla's; the positional transform is fused, so it adds nothing below.
    "triton": (65536, {64: (0.97, 3.16), 128: (1.85, 6.76)}),
}
FUSED_BACKENDS = ("triton",)
# Positional transforms outside the kernel, added per call at 64k tokens, 16 heads, D = 64 (x D / 64):
# LRPE-orthogonal's unfused rotation is docs/anchors.md's 2.21 - 0.97 ms fwd, 6.42 - 3.16 ms fwd+bwd; RoPE and the
# permutation are assumed to cost the same (one elementwise pass over q and k); LRPE-unitary is its anchored
# 2.28 / 6.24 ms minus fla's 0.97 / 3.16 (its doubled key width included); SPE has no anchor: assumed 3x
# LRPE-unitary's (R = 64 realisations); a Householder P is assumed +20% of the transform.
H100_PE_MS: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0), "ape": (0.0, 0.0),
    "rope": (1.24, 3.26), "lrpe-orthogonal": (1.24, 3.26), "lrpe-permutation": (1.24, 3.26),
    "lrpe-unitary": (1.31, 3.08), "spe-sine": (3.93, 9.24), "spe-conv": (3.93, 9.24),
}
HOUSEHOLDER_FACTOR = 1.2
# Peak memory above the inputs, MiB at 64k tokens, 16 heads, D = 64, fwd+bwd (docs/anchors.md), x D / 64; the
# forward is taken as half. Explicit-N x N variants: 16 bytes per score element (65824 MiB at 16k x 16 heads).
H100_PEAK_MIB: dict[str, float] = {"fla": 1408.0, "triton": 1408.0, "torch-chunked": 2560.0, "flash": 1160.0}
NAIVE_BYTES_PER_SCORE = 16.0
H100_MEMORY_BYTES = 80 * 10**9
H100_COPY_GBPS = 3000.0
HARNESS_S_PER_CONFIG = 0.15
"""Harness seconds per config on a GPU host (build, inputs, NVML sampler, memory-pass gc, fsync of the row):
an estimate; this CPU machine measured about 0.02 s per config (README: 0.8 s over 37 configs)."""
START_S = 5.0
"""Ceilings (matmul per dtype + copy), environment and availability probes before the first config: an estimate."""

DEVICE_MODELS = ("h100",)


@dataclass(frozen=True)
class Estimate:
    ms: float
    peak_bytes: float


def h100_estimate(planned: Planned) -> Estimate:
    """ESTIMATED per-call ms and peak bytes of ``planned`` on an H100 (see the tables above)."""
    config, variant = planned.config, planned.variant
    fwd = config.pass_ == "fwd"
    ref_n, table = H100_MS[variant.backend]
    ref_d = 128 if config.d >= 128 else 64
    base = table[ref_d][0 if fwd else 1] * config.d / ref_d
    tokens = config.batch * config.n * config.heads / (REF_TOKENS * REF_HEADS)
    naive = variant.backend in ("naive", "sdpa-math")
    if variant.time_complexity == "quadratic":
        base *= config.batch * config.heads * config.n**2 / (REF_HEADS * ref_n**2)
    else:
        base *= tokens
    pe_ms = H100_PE_MS[variant.pe][0 if fwd else 1] * tokens * config.d / 64
    if variant.backend in FUSED_BACKENDS:
        pe_ms = 0.0
    if variant.options.get("p", "identity") != "identity":
        pe_ms *= HOUSEHOLDER_FACTOR
    if naive:
        peak = NAIVE_BYTES_PER_SCORE * config.batch * config.heads * config.n**2
    else:
        kind = variant.backend if variant.backend in H100_PEAK_MIB else "flash"
        peak = H100_PEAK_MIB[kind] * 2**20 * tokens * config.d / 64 * (0.5 if fwd else 1.0)
    return Estimate(base + pe_ms, peak)


def dry_run(spec: SweepSpec, device_model: str = "h100") -> pd.DataFrame:
    """The plan of ``spec`` (device cuda) in run order with each config's predicted status, per-call ms,
    calls, seconds and the run's elapsed seconds after it, by the planner's budget and ``device_model``."""
    if device_model not in DEVICE_MODELS:
        raise ValueError(f"device model must be one of {DEVICE_MODELS}, got {device_model!r}")
    if spec.device != "cuda":
        raise ValueError(f"a dry run for {device_model} plans a cuda sweep, got device {spec.device!r}")
    from bench.sweep.session import timing_settings

    calls = CallModel(timing_settings(spec), TIMER_DO_BENCH, DO_BENCH_FLUSH_BYTES / (H100_COPY_GBPS * 1e9))
    memory_limit = spec.limits.memory_bytes or int(spec.limits.memory_fraction * H100_MEMORY_BYTES)
    budget = Budget(spec.limits, calls=calls, memory_limit=memory_limit, matmul_tflops=None)
    elapsed = START_S + (20.0 if any(v.endswith("@flex") for v in spec.variants) else 0.0)
    rows: list[dict] = []
    out = []
    for planned in plan(spec, probe=False):
        entry = {"key": planned.config.key, "variant": planned.config.variant, "family": planned.variant.family,
                 "pe": planned.variant.pe, "n": planned.config.n, "d": planned.config.d,
                 "pass": planned.config.pass_, "batch": planned.config.batch, "flops": planned.flops}
        status, reason, ms, config_s, n_calls = planned.status, planned.reason, None, 0.0, 0
        if status is None:
            est = h100_estimate(planned)
            ms = est.ms
            pred = Prediction(est.ms / 1e3, est.peak_bytes, f"{device_model} estimate from docs/anchors.md")
            reason = budget.decide(planned, pred, rows, elapsed)
            if reason is None:
                status = "ok"
                # Triton JIT and fla autotune the first config of a series (or run) pays, as the planner counts
                config_s = (budget.config_seconds(planned, est.ms / 1e3) + HARNESS_S_PER_CONFIG
                            + budget.shared_compile_seconds(planned, rows)[0])
                n_calls = calls.total_calls(est.ms / 1e3)
                elapsed += config_s
            else:
                status = "over-budget"
        rows.append({**planned.config.as_row(), "status": status})
        out.append({**entry, "status": status, "predicted_ms": ms, "calls": n_calls,
                    "predicted_config_s": config_s, "elapsed_s": elapsed, "reason": reason})
    return pd.DataFrame(out)


def dry_run_text(frame: pd.DataFrame, spec: SweepSpec, device_model: str) -> str:
    """The dry run as text: one line per config, then coverage by family and encoding, then totals."""
    lines = [f"DRY RUN of preset {spec.name} on an assumed {device_model}: per-call times are ESTIMATES from "
             f"docs/anchors.md's H100 measurements (bench/sweep/dryrun.py, docs/gpu-timing.md); nothing was measured.",
             f"limits: {spec.limits.config_seconds:g} s per config, {spec.limits.total_seconds:g} s in all; "
             f"timer {TIMER_DO_BENCH}; availability assumed (no probes on this machine)", ""]
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 110):
        table = frame[["variant", "n", "d", "pass", "batch", "status", "predicted_ms", "calls",
                       "predicted_config_s", "elapsed_s"]]
        lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        lines.append("")
        ok = frame[frame["status"] == "ok"]
        coverage = (ok.groupby(["family", "pe"])["n"].agg(["min", "max", "count"])
                    .rename(columns={"min": "smallest N", "max": "largest N", "count": "configs run"}))
        planned = frame.groupby(["family", "pe"]).size().rename("configs planned")
        lines.append("coverage (predicted ok) by family and encoding:")
        lines.append(pd.concat([coverage, planned], axis=1).fillna("-").to_string())
    counts = frame["status"].value_counts().to_dict()
    total = frame["elapsed_s"].max() if len(frame) else 0.0
    lines += ["", f"{len(frame)} configs: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
              f"predicted run time {total:.0f} s ({total / 60:.1f} min) of the {spec.limits.total_seconds:g} s "
              f"limit"]
    over = frame[frame["status"] == "over-budget"]
    if len(over):
        lines.append("over-budget reasons (first of each variant):")
        for _, row in over.drop_duplicates("variant").iterrows():
            lines.append(f"  {row['variant']} N={row['n']} D={row['d']} {row['pass']}: {row['reason']}")
    return "\n".join(lines)

