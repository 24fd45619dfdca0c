"""Plan a sweep: statuses known before running (unavailable, unsupported, error) and the budget check
(over-budget).

The budget check predicts a config's per-call time and peak memory from the largest smaller config of the
same series already measured in this run, scaled by the variant's complexity class (time ~ batch N^a,
memory ~ batch N^b, a and b 2 for quadratic and 1 for linear), and never below what the FLOP formula at the
measured matmul ceiling allows (time) or one float32 N x N matrix per head (memory of quadratic variants).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import BenchConfig
from bench.measure.flops import attention_flops
from bench.registry import get_variant
from bench.sweep.presets import Limits, SweepSpec
from bench.variant import Variant

EXPONENT = {"quadratic": 2, "linear": 1}


@dataclass(frozen=True)
class Planned:
    """A config with what is known before running it: status None means "run it"."""

    config: BenchConfig
    variant: Variant
    status: str | None = None
    reason: str | None = None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): the second of four shards (1-based). None -> None."""
    if text is None:
        return None
    try:
        index_text, count_text = str(text).split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"shard must look like i/n with integers, e.g. 1/4, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard i/n needs n >= 1 and 1 <= i <= n, got {text!r}")
    return index, count


def plan(spec: SweepSpec, shard: tuple[int, int] | None = None) -> list[Planned]:
    """Every config of ``spec`` (every n-th of them for a shard), with unavailable/unsupported decided."""
    configs = spec.configs()
    if shard is not None:
        index, count = shard
        configs = configs[index - 1 :: count]
    planned = []
    for config in configs:
        variant = get_variant(config.variant)
        verdict = variant.verdict(config)  # unavailable, unsupported, or error when a probe raised
        planned.append(Planned(config, variant, verdict.status, verdict.reason))
    return planned


def series_key(config: BenchConfig) -> tuple:
    """Configs that differ only in N (and the batch tied to it) form a series."""
    return (config.variant, config.device, config.dtype, config.pass_, config.causal, config.d, config.heads)


@dataclass(frozen=True)
class Prediction:
    seconds_per_call: float | None
    peak_bytes: float | None
    basis: str


class Budget:
    """Decides ``over-budget`` before a config runs.

    calls_per_config: how many calls one config makes (warm-up, timed repeats at least, memory pass).
    memory_limit: bytes one config may take at its peak. matmul_tflops: the measured ceiling (or None).
    """

    def __init__(self, limits: Limits, *, calls_per_config: int, memory_limit: int,
                 matmul_tflops: float | None) -> None:
        self.limits = limits
        self.calls_per_config = calls_per_config
        self.memory_limit = memory_limit
        self.matmul_tflops = matmul_tflops

    def predict(self, planned: Planned, measured: list[dict]) -> Prediction:
        """Per-call seconds and peak bytes of ``planned`` from ``measured`` rows of smaller N (same series)."""
        config, variant = planned.config, planned.variant
        key = series_key(config)
        smaller = [r for r in measured if r.get("status") == "ok" and r["n"] < config.n
                   and series_key(_row_config(r)) == key]
        time_exp = EXPONENT[variant.time_complexity]
        mem_exp = EXPONENT[variant.memory_complexity]
        flops = attention_flops(variant.flop_shape(config), time_complexity=variant.time_complexity,
                                causal=config.causal, pass_=config.pass_, chunk_size=variant.chunk_size)
        floor_s = flops / (self.matmul_tflops * 1e12) if self.matmul_tflops else None
        floor_bytes = (4.0 * config.batch * config.heads * config.n**2
                       if variant.memory_complexity == "quadratic" else None)
        if not smaller:
            return Prediction(floor_s, floor_bytes, "FLOP formula at the measured matmul ceiling"
                              if floor_s else "no measurement yet")
        base = max(smaller, key=lambda r: r["n"])
        scale_t = (config.batch / base["batch"]) * (config.n / base["n"]) ** time_exp
        scale_m = (config.batch / base["batch"]) * (config.n / base["n"]) ** mem_exp
        seconds = base["time_median_ms"] / 1e3 * scale_t
        peak = base["peak_mem_bytes"] * scale_m if base.get("peak_mem_bytes") is not None else None
        if floor_s is not None:
            seconds = max(seconds, floor_s)
        if peak is not None and floor_bytes is not None:
            peak = max(peak, floor_bytes)
        basis = (f"from N={base['n']} measured at {base['time_median_ms']:.3g} ms, time ~ N^{time_exp}, "
                 f"memory ~ N^{mem_exp}")
        return Prediction(seconds, peak, basis)

    def check(self, planned: Planned, measured: list[dict], elapsed_s: float) -> tuple[str | None, Prediction]:
        """(reason, prediction): reason is None when the config fits the limits."""
        pred = self.predict(planned, measured)
        failed = [r for r in measured if r.get("status") in ("oom", "over-budget") and r["n"] < planned.config.n
                  and series_key(_row_config(r)) == series_key(planned.config)]
        if failed:
            first = min(failed, key=lambda r: r["n"])
            return (f"N={first['n']} of this series was {first['status']}; a larger N needs more", pred)
        if pred.peak_bytes is not None and pred.peak_bytes > self.memory_limit:
            return (f"predicted peak memory {pred.peak_bytes / 2**30:.2f} GiB ({pred.basis}) exceeds the "
                    f"limit of {self.memory_limit / 2**30:.2f} GiB", pred)
        if pred.seconds_per_call is not None:
            config_s = pred.seconds_per_call * self.calls_per_config
            if config_s > self.limits.config_seconds:
                return (f"predicted {config_s:.1f} s for this config ({self.calls_per_config} calls of "
                        f"{pred.seconds_per_call * 1e3:.3g} ms; {pred.basis}) exceeds the per-config limit "
                        f"of {self.limits.config_seconds:g} s", pred)
            if elapsed_s + config_s > self.limits.total_seconds:
                return (f"predicted {config_s:.1f} s for this config would end the run after "
                        f"{elapsed_s + config_s:.0f} s, past its total limit of "
                        f"{self.limits.total_seconds:g} s", pred)
        elif elapsed_s > self.limits.total_seconds:
            return (f"the run has used {elapsed_s:.0f} s of its total limit of "
                    f"{self.limits.total_seconds:g} s", pred)
        return None, pred


def _row_config(row: dict) -> BenchConfig:
    return BenchConfig(variant=row["variant"], n=row["n"], d=row["d"], batch=row["batch"], heads=row["heads"],
                       dtype=row["dtype"], causal=bool(row["causal"]), pass_=row["pass"], device=row["device"])
