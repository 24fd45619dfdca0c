"""Probes cannot hide bugs: a missing package is ``unavailable``, a documented limit ``unsupported``, and
anything else an ``error`` row, through the real probes, the registry's verdict, the planner and the sweep.

The SDPA cases replace ``torch.nn.functional.scaled_dot_product_attention`` for one test: once by a function
with another signature (what an API change does: a TypeError), once by a wrapper that hands the real kernel an
input it refuses as documented (v narrower than q: "No available kernel"). The kernel, the probe code and the
sweep are the real ones.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines import flash, sdpa
from baselines.fla_linear import fla_availability
from baselines.flash import build_flash, unsupported_reason
from baselines.flash_common import import_module
from baselines.refusal import Refusal, Unsupported, causes, is_refusal
from bench.config import BenchConfig
from bench.registry import get_variant
from bench.sweep.planner import plan
from bench.sweep.presets import load_spec
from bench.sweep.session import Sweep
from bench.variant import RUNS, Verdict, _probe_once

TINY = Path(__file__).parent / "data" / "tiny.toml"
REAL_SDPA = F.scaled_dot_product_attention


@pytest.fixture
def fresh_probes():
    """Probe results are cached per process: forget them before and after a test that changes what they see."""
    caches = (flash.availability, flash._unsupported, _probe_once)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def sdpa_config(d: int = 32, **kw) -> BenchConfig:
    return BenchConfig(variant="flash@sdpa-flash", n=64, d=d, heads=2, dtype="float32", **kw)


def sweep_of(tmp_path: Path, variant: str, d: int) -> Sweep:
    spec = replace(load_spec(str(TINY)), variants=(variant,), n=(64,), d=(d,))
    return Sweep(spec, results_dir=tmp_path, run_id="probes", measure_ceilings_now=False)


# --- missing package or hardware: unavailable ----------------------------------------------------------------

def test_missing_package_is_unavailable_with_the_import_error() -> None:
    if import_module("flash_attn")[0] is not None:
        pytest.skip("flash_attn is installed here")
    verdict = get_variant("flash@flash-attn2").availability()
    assert verdict.status == "unavailable"
    assert "flash_attn" in verdict.reason and "ModuleNotFoundError" in verdict.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_fla_without_gpu_or_package_is_unavailable() -> None:
    assert fla_availability()
    config = BenchConfig(variant="linear-lrpe-unitary@fla", n=64, d=128, device="cuda")
    assert get_variant(config.variant).verdict(config).status == "unavailable"


def test_import_module_tells_a_missing_package_from_a_broken_one(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "lrpe_probe_missing_dep.py").write_text("import lrpe_probe_no_such_package\n")
    (tmp_path / "lrpe_probe_api_skew.py").write_text(textwrap.dedent("""
        def kernel(q, k, v):
            return q
        kernel(1, 2, 3, causal=True)  # an API change: a TypeError at import time
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module, why = import_module("lrpe_probe_missing_dep")
    assert module is None and "ModuleNotFoundError" in why and "lrpe_probe_no_such_package" in why
    with pytest.raises(TypeError, match="causal"):
        import_module("lrpe_probe_api_skew")
    for name in ("lrpe_probe_missing_dep", "lrpe_probe_api_skew"):
        sys.modules.pop(name, None)


# --- an API change: error ------------------------------------------------------------------------------------

def sdpa_with_new_signature(query, key, value, *, causal_mask=None):  # no is_causal: calls now raise TypeError
    return REAL_SDPA(query, key, value)


def test_api_change_is_an_error_row_never_unavailable(tmp_path: Path, monkeypatch, fresh_probes) -> None:
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa_with_new_signature)
    with pytest.raises(TypeError):
        unsupported_reason("sdpa-math", head_dim=32, dtype=torch.float32, device="cpu", causal=True)
    verdict = get_variant("flash@sdpa-flash").verdict(sdpa_config())
    assert verdict.status == "error"
    assert "TypeError" in verdict.reason and "is_causal" in verdict.reason
    sweep = sweep_of(tmp_path, "flash@sdpa-flash", 32)
    rows = [sweep.run_one(p) for p in sweep.pending()]
    assert [r["status"] for r in rows] == ["error"]
    assert "TypeError" in rows[0]["reason"]


def test_a_check_that_raises_is_an_error_not_a_limit(fresh_probes, monkeypatch) -> None:
    # availability (head dim 64) works; the support probe at head dim 32 meets the new signature
    def new_signature_below_64(query, key, value, **kwargs):
        if query.shape[-1] < 64:
            return sdpa_with_new_signature(query, key, value, **kwargs)
        return REAL_SDPA(query, key, value, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", new_signature_below_64)
    variant = get_variant("flash@sdpa-flash")
    assert variant.availability() == RUNS
    assert variant.verdict(sdpa_config(d=64)) == RUNS
    verdict = variant.verdict(sdpa_config(d=32))
    assert verdict.status == "error" and verdict.reason.startswith("support check raised TypeError")


def test_wrong_output_from_a_probe_is_an_error(fresh_probes, monkeypatch) -> None:
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: REAL_SDPA(q, k, v, **kw)[..., :1, :])
    verdict = get_variant("softmax@sdpa-math").availability()
    assert verdict.status == "error" and "expected" in verdict.reason


# --- a documented limit: unsupported -------------------------------------------------------------------------

def narrow_v_below_64(query, key, value, **kwargs):
    """Hands the real kernel a v narrower than q when D < 64: the CPU flash kernel refuses that."""
    if query.shape[-1] < 64:
        value = value[..., : query.shape[-1] // 2]
    return REAL_SDPA(query, key, value, **kwargs)


def test_documented_refusal_is_unsupported_with_the_kernels_words(tmp_path: Path, monkeypatch,
                                                                    fresh_probes) -> None:
    monkeypatch.setattr(F, "scaled_dot_product_attention", narrow_v_below_64)
    variant = get_variant("flash@sdpa-flash")
    assert variant.availability() == RUNS
    verdict = variant.verdict(sdpa_config(d=32))
    assert verdict.status == "unsupported"
    assert "head_dim=32" in verdict.reason and "No available kernel" in verdict.reason
    planned = plan(replace(load_spec(str(TINY)), variants=("flash@sdpa-flash",), n=(64,), d=(32, 64)))
    assert [(p.config.d, p.status) for p in planned] == [(32, "unsupported"), (64, None)]
    sweep = sweep_of(tmp_path, "flash@sdpa-flash", 32)
    rows = [sweep.run_one(p) for p in sweep.pending()]
    assert [r["status"] for r in rows] == ["unsupported"]


def test_declared_limit_is_unsupported() -> None:
    config = BenchConfig(variant="linear-rope@torch-chunked", n=64, d=7)
    assert get_variant(config.variant).verdict(config) == Verdict(
        "unsupported", "head dim 7 must be even for pairwise rotation")


# --- the classification itself ---------------------------------------------------------------------------------

def test_real_sdpa_refusal_matches_and_a_type_error_does_not() -> None:
    q, k = torch.randn(2, 1, 2, 16, 32)
    v = torch.randn(1, 2, 16, 16)
    with pytest.raises(RuntimeError) as info, pytest.warns(UserWarning, match="same last dimension"):
        build_flash("sdpa-flash")(q, k, v)
    refusals = next(s for s in sdpa.SPECS if s.name == "sdpa-flash").refusals
    assert is_refusal(info.value, refusals)
    assert not is_refusal(TypeError("scaled_dot_product_attention() got an unexpected keyword"), refusals)
    assert not is_refusal(RuntimeError("CUDA error: an illegal memory access was encountered"), refusals)


def test_own_unsupported_and_triton_out_of_resources_always_count() -> None:
    assert is_refusal(Unsupported("forward-only"), ())
    triton_errors = pytest.importorskip("triton.runtime.errors")
    exc = triton_errors.OutOfResources(232448, 101376, "shared memory")
    assert is_refusal(exc, ())
    # wrapped the way torch.compile wraps a compiler pass's exception (inner_exception, raised from None)
    wrapper = RuntimeError("backend='inductor' raised: OutOfResources")
    wrapper.inner_exception = exc
    assert [type(e) for e in causes(wrapper)] == [RuntimeError, type(exc)]
    assert is_refusal(wrapper, ())


def test_refusal_by_class_name_and_pattern() -> None:
    by_name = Refusal("builtins.ValueError", r"does not support inputs")
    assert by_name.matches(ValueError("Operator `memory_efficient_attention` does not support inputs:"))
    assert not by_name.matches(ValueError("shape mismatch"))
    assert not by_name.matches(TypeError("does not support inputs"))
    chained = RuntimeError("outer")
    chained.__cause__ = NotImplementedError("no kernel")
    assert is_refusal(chained, (Refusal(NotImplementedError),))
    assert not is_refusal(RuntimeError("outer"), (Refusal(NotImplementedError),))
