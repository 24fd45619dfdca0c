"""The planner: statuses decided before running, predictions from smaller N, shards."""

from pathlib import Path

import pytest

from bench.config import BenchConfig
from bench.measure.flops import attention_flops
from bench.measure.timing import TIMER_DO_BENCH, TimingSettings
from bench.registry import all_variants, backend_of, get_variant
from bench.sweep.dryrun import dry_run, h100_estimate
from bench.sweep.planner import (
    Budget,
    CallModel,
    Measured,
    Planned,
    Prediction,
    first_stop,
    memory_limit,
    parse_shard,
    plan,
    repeats_for,
    take_shard,
)
from bench.sweep.presets import Limits, load_spec

TINY = Path(__file__).parent / "data" / "tiny.toml"


def planned(name: str, n: int, **kw) -> Planned:
    config = BenchConfig(variant=name, n=n, d=64, **kw)
    return Planned(config, get_variant(name))


def measured_row(name: str, n: int, ms: float, peak: float | None = 1e6, status: str = "ok", batch: int = 1):
    config = BenchConfig(variant=name, n=n, d=64, batch=batch)
    return {**config.as_row(), "status": status, "time_median_ms": ms, "peak_mem_bytes": peak}


# 1 warm-up call, 5 timed calls, 1 memory-pass call: 7 calls per config whatever the call takes
SEVEN_CALLS = CallModel(TimingSettings(warmup_min_calls=1, warmup_min_s=0.0, min_repeats=5, max_repeats=5,
                                       min_time_s=0.0, max_time_s=1e9), "perf_counter")


def budget(config_seconds=5.0, total_seconds=1e6, memory=2**40, tflops=None):
    return Budget(Limits(config_seconds=config_seconds, total_seconds=total_seconds), calls=SEVEN_CALLS,
                  memory_limit=memory, matmul_tflops={"float32": tflops} if tflops else None)


def test_prediction_scales_by_complexity_and_names_the_figure():
    rows = [measured_row("softmax@naive", 1024, 100.0), measured_row("softmax@naive", 512, 30.0)]
    reason, pred = budget().check(planned("softmax@naive", 4096), Measured(rows), elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.1 * 16)  # from the largest smaller N, time ~ N^2
    assert "predicted 11.2 s" in reason and "from N=1024" in reason and "per-config limit of 5 s" in reason
    reason, pred = budget().check(planned("linear@torch-chunked", 4096),
                                  Measured([measured_row("linear@torch-chunked", 1024, 100.0)]), elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.4)  # linear: time ~ N
    assert reason is None


def test_batch_raised_at_short_n_enters_the_prediction():
    rows = [measured_row("linear@torch-chunked", 1024, 10.0, batch=4)]
    _, pred = budget().check(planned("linear@torch-chunked", 4096, batch=1), Measured(rows), elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.01)  # batch x N constant: same work


def test_memory_prediction_over_the_limit():
    rows = [measured_row("softmax@naive", 1024, 1.0, peak=2**30)]
    reason, pred = budget(memory=8 * 2**30).check(planned("softmax@naive", 4096), Measured(rows), elapsed_s=0)
    assert pred.peak_bytes == 16 * 2**30
    assert "predicted peak memory 16.00 GiB" in reason and "limit of 8.00 GiB" in reason


def test_formula_floor_before_any_measurement():
    # 2 B H N^2 (2D) / 2 FLOPs at 1e-6 TFLOP/s: far over any limit although nothing was measured yet
    reason, pred = budget(tflops=1e-6).check(planned("softmax@naive", 8192), Measured(), elapsed_s=0)
    assert pred.basis.startswith("FLOP formula")
    assert reason is not None and "per-config limit" in reason
    # the quadratic memory floor: one float32 N x N matrix per head
    reason, pred = budget(memory=2**20).check(planned("softmax@naive", 8192), Measured(), elapsed_s=0)
    assert pred.peak_bytes == 4.0 * 4 * 8192**2
    assert "exceeds the limit" in reason


def test_total_time_limit_and_failed_smaller_n():
    rows = [measured_row("linear@torch-chunked", 1024, 100.0)]
    reason, _ = budget(total_seconds=10).check(planned("linear@torch-chunked", 2048), Measured(rows), elapsed_s=9.5)
    assert "past its total limit of 10 s" in reason
    rows = [measured_row("softmax@naive", 2048, 0, status="oom")]
    reason, _ = budget().check(planned("softmax@naive", 4096), Measured(rows), elapsed_s=0)
    assert reason == "N=2048 of this series was oom; a larger N needs more"
    # another series (other d) is not affected
    other = Planned(BenchConfig(variant="softmax@naive", n=4096, d=32), get_variant("softmax@naive"))
    assert budget().check(other, Measured(rows), elapsed_s=0)[0] is None


def test_plan_marks_unsupported_and_unavailable_before_running():
    spec = load_spec(str(TINY), overrides={"variants": "linear@fla,linear-lrpe-orthogonal@torch-chunked",
                                           "d": "7,8"})
    statuses = {(p.config.variant, p.config.d): (p.status, p.reason) for p in plan(spec)}
    # linear@fla on this CPU spec: unavailable where its package or driver is missing (the probe's reason),
    # else unsupported for the device; never runnable, on any machine.
    fla_missing = get_variant("linear@fla").unavailable_reason()
    if fla_missing:
        assert statuses[("linear@fla", 8)] == ("unavailable", fla_missing)
    else:
        assert statuses[("linear@fla", 8)] == ("unsupported", "device 'cpu' not supported (supports ['cuda'])")
    assert statuses[("linear-lrpe-orthogonal@torch-chunked", 7)][0] == "unsupported"
    assert statuses[("linear-lrpe-orthogonal@torch-chunked", 8)] == (None, None)


def test_plan_without_probes_keeps_only_the_registrys_static_limits():
    spec = load_spec(str(TINY), device="cuda", overrides={"variants": "linear@fla", "dtype": "float64"})
    assert {(p.status, p.reason) for p in plan(spec, probe=False)} == {
        ("unsupported", "dtype 'float64' not supported (supports ['float32', 'bfloat16', 'float16'])")}


def test_plan_counts_flops_once_per_config():
    spec = load_spec(str(TINY), overrides={"pass": "both"})
    for p in plan(spec):
        expected = attention_flops(p.variant.flop_shape(p.config), time_complexity=p.variant.time_complexity,
                                   causal=p.config.causal, pass_=p.config.pass_, chunk_size=p.variant.chunk_size)
        assert p.flops == expected > 0


def test_configs_are_interleaved_by_n_and_series_grow():
    spec = load_spec(str(TINY), overrides={"n": "256,64,128", "d": "16,32"})
    ns = [c.n for c in spec.configs()]
    assert ns == sorted(ns) and ns[0] == 64  # every variant at the smallest N first
    first_block = {c.variant for c in spec.configs() if c.n == 64}
    assert first_block == set(spec.variants)


def test_planner_predicts_from_the_smaller_n_measured_before_it_in_plan_order():
    spec = load_spec(str(TINY), overrides={"variants": "linear@torch-chunked", "n": "64,128,256"})
    rows = []
    for p in plan(spec):
        _reason, pred = budget().check(p, Measured(rows), elapsed_s=0)
        if rows:
            assert pred.basis.startswith(f"from N={rows[-1]['n']}")
        rows.append(measured_row(p.config.variant, p.config.n, 1.0 * p.config.n / 64) | {"d": p.config.d,
                                                                                          "heads": p.config.heads})


def test_call_model_counts_warmup_timer_and_memory_calls():
    cpu = CallModel(TimingSettings(warmup_min_calls=1, warmup_min_s=0.05, min_repeats=5, max_repeats=100,
                                   min_time_s=0.1, max_time_s=1.0), "perf_counter")
    assert cpu.calls(0.01) == {"warmup": 5, "untimed": 0, "timed": 10, "memory": 1}
    assert repeats_for(cpu.settings, 0.5) == 2  # the call crossing max_time_s is the last
    gpu_settings = TimingSettings.for_device("cuda")
    gpu = CallModel(gpu_settings, TIMER_DO_BENCH)
    calls = gpu.calls(0.002)  # rep = max(100 ms, 10 x 2 ms) = 100 ms: 50 timed calls
    assert calls == {"warmup": 13, "untimed": 8, "timed": 50, "memory": 1}
    assert gpu.seconds(0.002) == pytest.approx(0.002 * 72)
    flushed = CallModel(gpu_settings, TIMER_DO_BENCH, flush_s=0.0001)
    assert flushed.calls(0.002)["timed"] == 47  # do_bench sizes its calls by the call plus the flush
    assert flushed.seconds(0.002) == pytest.approx(0.002 * 69 + 0.0001 * (47 + 5))


def test_flex_compile_time_enters_the_config_cost():
    p = Planned(BenchConfig(variant="flash@flex", n=1024, d=64, device="cuda"), get_variant("flash@flex"))
    seconds = budget().config_seconds(p, 0.001)
    assert seconds == pytest.approx(backend_of(p.variant).compile_seconds[("cuda", "fwd")] + 0.007)
    reason = budget(config_seconds=5.0).decide(p, Prediction(0.001, None, "test"), Measured(), elapsed_s=0)
    assert reason is not None and "per-config limit of 5 s" in reason


def test_dry_run_of_the_full_preset_covers_every_family_and_encoding_within_its_budget():
    spec = load_spec("full", device="cuda")
    frame = dry_run(spec, "h100")
    ok = frame[frame["status"] == "ok"]
    assert frame["elapsed_s"].max() <= spec.limits.total_seconds
    assert set(ok["family"]) == {"softmax", "flash", "linear"}
    for pe in ("none", "rope", "spe-sine", "spe-conv", "lrpe-unitary", "lrpe-orthogonal", "lrpe-permutation"):
        assert ok[(ok["family"] == "linear") & (ok["pe"] == pe)]["n"].max() == 65536, pe
    assert ok[ok["family"] == "flash"]["n"].max() == 65536
    # explicit N x N softmax stops where its scores exceed the memory limit, and says so
    over = frame[(frame["family"] == "softmax") & (frame["status"] == "over-budget")]
    assert len(over) and over["reason"].str.contains("peak memory|a larger N needs more").all()


def test_shards_partition_the_plan():
    spec = load_spec(str(TINY))
    full = [p.config.key for p in plan(spec)]
    parts = [[p.config.key for p in plan(spec, parse_shard(f"{i}/3"))] for i in (1, 2, 3)]
    assert sorted(key for part in parts for key in part) == sorted(full)
    assert all(set(a).isdisjoint(b) for a in parts for b in parts if a is not b)


def test_take_shard_deals_tasks_round_robin_and_none_keeps_all():
    tasks = list("abcdefg")
    assert take_shard(tasks, None) == tasks
    assert take_shard(tasks, (1, 3)) == ["a", "d", "g"]
    assert take_shard(tasks, (3, 3)) == ["c", "f"]
    assert take_shard(tasks, (2, 8)) == ["b"]  # more shards than tasks: some are empty
    assert take_shard(tasks, (8, 8)) == []


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "1/0"])
def test_bad_shard_is_named(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_shard(text)


def _cuda(name: str, n: int, pass_: str = "fwd", d: int = 64) -> BenchConfig:
    return BenchConfig(variant=name, n=n, d=d, device="cuda", dtype="bfloat16", pass_=pass_)


def test_triton_jit_and_fla_autotune_count_once_against_the_total_limit():
    jit = backend_of(get_variant("linear@triton")).shared_compile[("cuda", "fwd")][0].seconds
    autotune, fla_jit = (e.seconds for e in backend_of(get_variant("linear@fla")).shared_compile[("cuda", "fwd+bwd")])
    calls_s = 0.007  # SEVEN_CALLS of 1 ms
    pred = Prediction(0.001, None, "test")
    # The first config of a fused-kernel series pays the JIT: over a total limit its calls alone would fit.
    first = Planned(_cuda("linear-lrpe-orthogonal@triton", 4096), get_variant("linear-lrpe-orthogonal@triton"))
    tight = budget(total_seconds=jit / 2)
    reason = tight.decide(first, pred, Measured(), elapsed_s=0)
    assert reason is not None and f"plus Triton JIT {jit:g} s (estimate)" in reason
    assert budget(total_seconds=jit + 1).decide(first, pred, Measured(), elapsed_s=0) is None
    # The next N of the series reuses the process's compiled kernels (they do not specialise on N).
    done = [{**_cuda("linear-lrpe-orthogonal@triton", 1024).as_row(), "status": "ok"}]
    assert tight.decide(first, pred, Measured(done), elapsed_s=0) is None
    assert tight.shared_compile_seconds(first, Measured(done)) == (0.0, [])
    # Another D is another series: compiled again.
    wide = Planned(_cuda("linear-lrpe-orthogonal@triton", 4096, d=128), first.variant)
    assert tight.shared_compile_seconds(wide, Measured(done))[0] == jit
    # fla autotunes once per run and pass, whatever the variant or D; each series still compiles its choice.
    fla = Planned(_cuda("linear@fla", 4096, "fwd+bwd"), get_variant("linear@fla"))
    assert budget().shared_compile_seconds(fla, Measured())[0] == autotune + fla_jit
    other_fla = [{**_cuda("linear-lrpe-orthogonal@fla", 1024, "fwd+bwd", d=128).as_row(), "status": "ok"}]
    assert budget().shared_compile_seconds(fla, Measured(other_fla))[0] == fla_jit
    not_ok = [{**other_fla[0], "status": "error"}]  # a config that failed compiled nothing to reuse
    assert budget().shared_compile_seconds(fla, Measured(not_ok))[0] == autotune + fla_jit
    # The per-config limit is for a config's calls: the shared compile does not make it over-budget.
    assert budget(config_seconds=calls_s * 2).decide(fla, pred, Measured(), elapsed_s=0) is None


def test_call_model_of_the_pytest_timer_counts_the_call_that_sizes_its_rounds():
    settings = TimingSettings(warmup_min_calls=1, warmup_min_s=0.05, min_repeats=5, max_repeats=100,
                              min_time_s=0.1, max_time_s=1.0)
    pytest_timer = CallModel(settings, "pytest-benchmark:time.perf_counter")
    assert pytest_timer.calls(0.1)["warmup"] == 2  # one warm-up call, then one after it (steady_call_seconds)
    assert pytest_timer.calls(0.01)["warmup"] == 5  # five warm-up calls: their median after the first
    assert CallModel(settings, "perf_counter").calls(0.1)["warmup"] == 1


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("d", [32, 64, 128, 256])
def test_every_registered_variant_has_the_facts_the_planner_and_dry_run_need(pass_, d):
    # A record lacking a fact (no backend record, no cost for a head dim, an unknown encoding) raises here,
    # as --dry-run would; the predictions must be positive numbers the budget can use.
    for name, variant in all_variants().items():
        config = BenchConfig(variant=name, n=2048, d=d, heads=16, device="cuda", dtype="bfloat16", pass_=pass_)
        p = Planned(config, variant, flops=variant.flops(config))
        estimate = h100_estimate(p)
        assert estimate.ms > 0 and estimate.peak_bytes > 0, name
        assert budget().config_seconds(p, estimate.ms / 1e3) > 0, name
        assert budget().shared_compile_seconds(p, Measured())[0] >= 0, name
        assert variant.flops(config) > 0, name


def test_measured_indexes_each_row_once_and_leaves_other_tasks_out(monkeypatch):
    import bench.sweep.planner as planner_module

    indexed = []
    real = planner_module._row_series_key
    monkeypatch.setattr(planner_module, "_row_series_key", lambda row: indexed.append(row["n"]) or real(row))
    speed = [measured_row("softmax@naive", n, n / 1024) for n in (256, 512, 1024)]
    other = [measured_row("linear@torch-chunked", 1024, 1.0)]
    # an extrapolation row shares the store but has no N: the planner must not read it
    extrap = {"task": "extrapolation", "key": "extrapolation|softmax@naive|L64|128|sliding", "status": "ok",
              "variant": "softmax@naive"}
    measured = Measured([*speed, *other, extrap])
    assert indexed == [256, 512, 1024, 1024]
    assert [r["n"] for r in measured.series(planned("softmax@naive", 4096).config)] == [256, 512, 1024]
    for n in (2048, 4096, 8192):  # checks read the index: no row is looked at again
        _, pred = budget().check(planned("softmax@naive", n), measured, elapsed_s=0)
        assert pred.basis.startswith("from N=1024")
    assert len(indexed) == 4


def test_first_stop_is_the_shortest_oom_or_over_budget_length_of_a_series():
    rows = [{"n": 1024, "status": "ok"}, {"n": 4096, "status": "over-budget"}, {"n": 2048, "status": "oom"},
            {"n": 512, "status": "error"}]
    assert first_stop(rows, "n") == {"n": 2048, "status": "oom"}
    assert first_stop(rows[:1] + rows[3:], "n") is None  # an error says nothing about longer lengths
    assert first_stop([{"eval_len": 256, "status": "over-budget"}], "eval_len")["eval_len"] == 256


def test_memory_limit_is_the_fixed_one_or_a_fraction_of_what_is_free_split_between_workers(monkeypatch):
    import bench.sweep.planner as planner_module

    monkeypatch.setattr(planner_module, "available_memory_bytes", lambda device: 1000)
    assert memory_limit("cpu", 0.6) == 600
    assert memory_limit("cpu", 0.5, share=2) == 250  # two extrapolation workers at once
    assert memory_limit("cpu", 0.6, fixed=123) == 123  # --memory-limit / the preset's memory_bytes
