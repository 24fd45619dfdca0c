"""The run: bad input fails naming the value; out-of-memory and over-budget lengths become rows with that
status and the run goes on; rows land in the store's frame; a resumed run adds nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.extrapolation.run import ExtrapolationRun, tasks
from bench.extrapolation.spec import load_extrap_spec, row_key
from bench.extrapolation.table import extrapolation_table
from bench.sweep.planner import parse_shard, take_shard

BIG = 2**17  # softmax's explicit scores at this length need 2 x BIG^2 x 4 bytes = 137 GB: an allocation error


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="eval length 64 is below the train length 128"):
        load_extrap_spec("extrap-quick", lengths="64,128")
    with pytest.raises(ValueError, match="'linear-nope@somewhere'"):
        load_extrap_spec("extrap-quick", variants="linear-nope@somewhere")
    with pytest.raises(ValueError, match=r"preset must be one of \[.*'extrap-quick'.*\].*got 'extrap-huge'"):
        load_extrap_spec("extrap-huge")
    with pytest.raises(ValueError, match="device must be cpu, cuda or auto, got 'gpu'"):
        load_extrap_spec("extrap-quick", device="gpu")
    assert load_extrap_spec(device="cpu").name == "extrap-quick"  # the default follows the device asked for
    spec = load_extrap_spec("extrap-quick")
    assert spec.eval.lengths[-1] >= 16 * spec.train.train_len  # the reach, at least


@pytest.mark.slow
def test_out_of_memory_is_a_row_and_the_run_goes_on(tmp_path: Path, one_thread, tiny_extrap_preset,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.extrapolation.job as job_module

    # Scored through its own explicit-score core (its FlashAttention twin would need no N x N scores).
    monkeypatch.setattr(job_module, "eval_twin", lambda variant: None)
    spec = load_extrap_spec(str(tiny_extrap_preset(tmp_path, ["softmax@naive", "linear@torch-chunked"], [32, BIG])),
                            lengths=f"32,{BIG}")
    run = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="r", progress=False)
    frame = run.run().frame()
    rows = {(r.variant, r.eval_len): r for r in frame.itertuples()}
    assert rows["softmax@naive", BIG].status == "oom"
    assert "allocate" in rows["softmax@naive", BIG].reason
    for key in (("softmax@naive", 32), ("linear@torch-chunked", 32), ("linear@torch-chunked", BIG)):
        assert rows[key].status == "ok"
        assert rows[key].tokens_scored == BIG  # every length scores the same stream
        assert 0 < rows[key].bits_per_byte < 8.5
        assert rows[key].peak_mem_bytes > 0
    assert set(frame["task"]) == {"extrapolation"} and frame["key"].is_unique
    assert (run.store.path / "extrapolation" / "linear@torch-chunked" / "seed-0" / "loss.csv").exists()
    assert "oom" in extrapolation_table(frame)
    # Resuming the finished run trains nothing and adds no row.
    again = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="r", progress=False).run()
    assert len(again.rows()) == len(frame)


@pytest.mark.slow
def test_over_budget_is_a_row_with_the_prediction(tmp_path: Path, one_thread, tiny_extrap_preset) -> None:
    spec = load_extrap_spec(str(tiny_extrap_preset(tmp_path, ["linear@torch-chunked"], [32, 64, 128], limit=1e-6,
                                        protocols=("non-overlapping", "sliding"))), lengths="32,64,128")
    frame = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="b", progress=False).run().frame()
    by_key = {r.key: r for r in frame.itertuples()}
    for protocol in ("non-overlapping", "sliding"):
        first = by_key[row_key("linear@torch-chunked", 32, 32, protocol)]
        second = by_key[row_key("linear@torch-chunked", 32, 64, protocol)]
        third = by_key[row_key("linear@torch-chunked", 32, 128, protocol)]
        assert first.status == "ok"
        assert second.status == "over-budget" and "predicted" in second.reason
        assert third.status == "over-budget" and "length 64 of this series was over-budget" in third.reason
    assert by_key[row_key("linear@torch-chunked", 32, 32, "sliding")].stride == 16


def test_command_line_reports_bad_input(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from bench.cli import main

    assert main(["extrapolate", "--n", "64"]) == 2
    assert "eval length 64 is below the train length 128" in capsys.readouterr().err
    assert main(["extrapolate", "--corpus", "/no/such/corpus", "--variants", "linear@torch-chunked",
                 "--results-dir", str(tmp_path)]) == 2
    assert "'/no/such/corpus'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run directory for a run that could not start


def test_a_variant_the_registry_declares_non_causal_or_without_float32_is_unsupported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_extrap_preset) -> None:
    import dataclasses

    import bench.extrapolation.job as job_module

    real = job_module.get_variant("linear@torch-chunked")
    declared = {"linear@torch-chunked": dataclasses.replace(real, causal_modes=(False,)),
                "softmax@naive": dataclasses.replace(job_module.get_variant("softmax@naive"), dtypes=("bfloat16",))}
    monkeypatch.setattr(job_module, "get_variant", lambda name: declared[name])
    spec = load_extrap_spec(str(tiny_extrap_preset(tmp_path, ["linear@torch-chunked", "softmax@naive"], [32, 64])),
                            lengths="32,64")
    frame = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="u", progress=False).run().frame()
    assert set(frame["status"]) == {"unsupported"} and len(frame) == 4  # 2 variants x 2 lengths, none trained
    reasons = dict(zip(frame["variant"], frame["reason"], strict=False))
    assert "causal=True not supported" in reasons["linear@torch-chunked"]
    assert "dtype 'float32' not supported" in reasons["softmax@naive"]


def test_a_shard_is_every_nth_variant_seed_training_by_the_sweeps_rule() -> None:
    spec = load_extrap_spec("extrap-quick", variants="linear@torch-chunked,softmax@naive,softmax-rope@naive",
                            seeds=2)
    every = tasks(spec)
    assert every == [(v, s) for v in spec.variants for s in spec.seeds]  # preset order, seeds inner
    parts = [tasks(spec, parse_shard(f"{i}/4")) for i in (1, 2, 3, 4)]
    assert sorted(t for part in parts for t in part) == sorted(every)  # each training in exactly one shard
    assert parts[1] == [every[1], every[5]] == take_shard(every, (2, 4))
    first, second = spec.seeds
    assert parts[0] == [(spec.variants[0], first), (spec.variants[2], first)]
    assert (spec.variants[0], second) in parts[1]  # a variant's seeds may run on different shards
