"""A dry run: the plan of a sweep on a device that need not be here, with predicted times from a cost model.

``python -m bench run --preset full --dry-run`` (``--assume-device h100``, the one model so far) plans the
sweep for CUDA without probing this machine, predicts each config's per-call time and peak memory from its
backend's and encoding's records (ESTIMATES from docs/anchors.md H100 measurements, scaled; see
docs/gpu-timing.md), and runs the planner's own budget (``Budget.decide``, the call model of do_bench, compile
times) over the plan in order, so the printed statuses are those the real run would give if the model is right.
Nothing is measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.backend import ENCODINGS, HOUSEHOLDER_FACTOR
from bench.measure.timing import DO_BENCH_FLUSH_BYTES, TIMER_DO_BENCH
from bench.registry import backend_of, get_variant
from bench.sweep.planner import Budget, CallModel, Measured, Planned, Prediction, plan
from bench.sweep.presets import SweepSpec

REF_TOKENS = 65536
REF_HEADS = 16

# Per-call times and peaks come from each backend's record (bench.backend.CostModel: H100 figures, anchored or
# assumed, in bench/registry.py) and each encoding's (bench.backend.Encoding.h100_ms: the positional transform
# outside the kernel, added per call at 64k tokens, 16 heads, D = 64, x D / 64).
NAIVE_BYTES_PER_SCORE = 16.0
"""Peak of explicit N x N scores (a cost model with peak_mib None): 16 bytes per score element (65824 MiB at
16k x 16 heads, docs/anchors.md)."""
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
    """ESTIMATED per-call ms and peak bytes of ``planned`` on an H100, from its backend's cost model and its
    encoding's transform cost (bench.backend)."""
    config, variant = planned.config, planned.variant
    fwd = config.pass_ == "fwd"
    cost = backend_of(variant).cost
    ref_d = 128 if config.d >= 128 else 64
    base = cost.ms[ref_d][0 if fwd else 1] * config.d / ref_d
    tokens = config.batch * config.n * config.heads / (REF_TOKENS * REF_HEADS)
    if variant.time_complexity == "quadratic":
        base *= config.batch * config.heads * config.n**2 / (REF_HEADS * cost.ref_n**2)
    else:
        base *= tokens
    pe_ms = 0.0 if cost.fuses_positions else ENCODINGS[variant.pe].h100_ms[0 if fwd else 1] * tokens * config.d / 64
    if variant.options.get("p", "identity") != "identity":
        pe_ms *= HOUSEHOLDER_FACTOR
    if cost.peak_mib is None:
        peak = NAIVE_BYTES_PER_SCORE * config.batch * config.heads * config.n**2
    else:
        peak = cost.peak_mib * 2**20 * tokens * config.d / 64 * (0.5 if fwd else 1.0)
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
    backends = {(v.family, v.backend): backend_of(v) for v in map(get_variant, spec.variants)}
    elapsed = START_S + sum(b.probe_seconds for b in backends.values())  # each backend's probe runs once
    measured = Measured()
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
            reason = budget.decide(planned, pred, measured, elapsed)
            if reason is None:
                status = "ok"
                # Triton JIT and fla autotune the first config of a series (or run) pays, as the planner counts
                config_s = (budget.config_seconds(planned, est.ms / 1e3) + HARNESS_S_PER_CONFIG
                            + budget.shared_compile_seconds(planned, measured)[0])
                n_calls = calls.total_calls(est.ms / 1e3)
                elapsed += config_s
            else:
                status = "over-budget"
        measured.add({**planned.config.as_row(), "backend": planned.variant.backend, "status": status})
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

