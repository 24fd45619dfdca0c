"""The variant registry: names, selection, statuses, and that each entry builds what its name says.

The numerical identities of each component live in their own tests; here the wiring is held to oracles:
every linear variant's fast backend equals its quadratic oracle, every softmax/flash variant available
here equals the naive softmax oracle (with RoPE applied the same way), and LRPE/RoPE/SPE entries carry
the encoding their name promises.
"""

import dataclasses
import os

import pytest
import torch

from baselines.flash import float_tolerance
from baselines.rope import apply_rope
from baselines.softmax import softmax_attention
from bench.config import BenchConfig
from bench.registry import LRPE_KINDS, ROPE_LAYOUT, all_variants, get_variant, select_variants
from bench.variant import RUNS, Verdict
from lrpe import LRPE, P_CHOICES, get_feature_map, linear_attention
from lrpe.pmatrix import HouseholderP, IdentityP, OddEvenP

VARIANTS = all_variants()
FLEX_OPT_IN = os.environ.get("LRPE_TEST_FLEX") == "1"


def inputs(config: BenchConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (config.batch, config.heads, config.n, config.d)
    return [torch.randn(shape, generator=g, dtype=config.torch_dtype) for _ in range(3)]


def run(variant_name: str, config: BenchConfig, q, k, v, *, seed: int = 3, draw_seed: int = 11):
    """Build with ``seed`` and call with the global generator at ``draw_seed`` (SPE draws its codes there)."""
    core = get_variant(variant_name).build(config, seed=seed).to(config.torch_dtype)
    torch.manual_seed(draw_seed)
    with torch.no_grad():
        return core(q, k, v)


def test_names_follow_the_scheme_and_fields_are_consistent():
    assert len(VARIANTS) > 40
    for name, variant in VARIANTS.items():
        stem, backend = name.split("@")
        assert backend == variant.backend
        assert stem.startswith(variant.family)
        if variant.pe != "none":
            assert variant.pe in stem
        assert variant.memory_complexity in ("linear", "quadratic")
    # the three families, each encoding, and every LRPE kind with every P on the chunked backend
    assert {v.family for v in VARIANTS.values()} == {"softmax", "flash", "linear"}
    for kind in LRPE_KINDS:
        for p in P_CHOICES:
            suffix = "" if p == "identity" else f"-{p}"
            assert f"linear-lrpe-{kind}{suffix}@torch-chunked" in VARIANTS


def test_select_variants_by_name_glob_and_star():
    assert [v.name for v in select_variants("linear@torch-chunked")] == ["linear@torch-chunked"]
    lrpe = select_variants(["linear-lrpe-orthogonal*@torch-chunked"])
    assert {v.options["p"] for v in lrpe} == set(P_CHOICES)
    star = select_variants("*")
    assert all(v.in_sweeps for v in star)
    assert "softmax-ape@naive" not in {v.name for v in star}  # APE times the same kernel as softmax@naive
    assert "softmax-ape@naive" in {v.name for v in select_variants("softmax-ape@*")}
    with pytest.raises(ValueError, match="no variant matches 'nonsense\\*'"):
        select_variants("nonsense*")
    with pytest.raises(ValueError, match="unknown variant 'linear@warp'"):
        get_variant("linear@warp")


def test_unavailable_variants_give_a_reason_not_an_exception():
    reasons = {name: v.unavailable_reason() for name, v in VARIANTS.items() if name != "flash@flex"
               and not name.startswith("flash-rope@flex")}
    assert reasons["linear@torch-chunked"] is None
    assert reasons["softmax@naive"] is None
    for name, reason in reasons.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), name
        # here every probe either runs or names a missing package or device: none of them broke
        assert VARIANTS[name].availability().status in (None, "unavailable"), (name, reason)
    if not torch.cuda.is_available():
        assert "CUDA" in reasons["flash@sdpa-cudnn"]
        assert reasons["linear@fla"]


def test_unsupported_configs_name_what_is_wrong():
    odd = BenchConfig(variant="linear-lrpe-orthogonal@torch-chunked", n=16, d=7)
    assert get_variant(odd.variant).verdict(odd) == Verdict("unsupported", "head dim 7 must be even for pairwise "
                                                                           "rotation")
    cpu = BenchConfig(variant="flash@sdpa-efficient", n=16, d=64, device="cpu")
    verdict = get_variant(cpu.variant).verdict(cpu)
    if torch.cuda.is_available():
        assert verdict.status == "unsupported" and "device 'cpu' not supported" in verdict.reason
    else:  # availability is decided first: no CUDA here
        assert verdict.status == "unavailable" and "CUDA" in verdict.reason
    full = BenchConfig(variant="softmax@naive", n=16, d=8, dtype="float64", causal=False, device="cpu")
    assert get_variant(full.variant).verdict(full) == RUNS


def test_declared_limits_are_unsupported_once_available():
    naive = get_variant("linear@naive")
    limited = dataclasses.replace(naive, devices=("cuda",), dtypes=("float32",), causal_modes=(True,))
    cases = {
        BenchConfig(variant="linear@naive", n=16, d=8, device="cpu"): "device 'cpu' not supported",
        BenchConfig(variant="linear@naive", n=16, d=8, device="cuda", dtype="float64"): "dtype 'float64'",
        BenchConfig(variant="linear@naive", n=16, d=8, device="cuda", causal=False): "causal=False",
    }
    for config, words in cases.items():
        verdict = limited.verdict(config)
        assert verdict.status == "unsupported" and words in verdict.reason


NAIVE_STEMS = sorted({name.split("@")[0] for name in VARIANTS if name.endswith("@naive")
                      and name.startswith("linear")})


@pytest.mark.parametrize("stem", NAIVE_STEMS)
@pytest.mark.parametrize("causal", [True, False])
def test_linear_chunked_equals_its_quadratic_oracle(stem, causal):
    config = BenchConfig(variant=f"{stem}@torch-chunked", n=70, d=8, batch=2, heads=3, dtype="float64",
                         causal=causal)
    q, k, v = inputs(config)
    fast = run(f"{stem}@torch-chunked", config, q, k, v)
    oracle = run(f"{stem}@naive", config, q, k, v)
    assert fast.shape == (2, 3, 70, 8)
    torch.testing.assert_close(fast, oracle, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.pe.startswith("lrpe-")
                                  and v.backend == "torch-chunked"])
def test_lrpe_entries_carry_their_kind_and_p(name):
    variant = get_variant(name)
    config = BenchConfig(variant=name, n=5, d=8, heads=2)
    core = variant.build(config)
    encoding = core.positional
    assert isinstance(encoding, LRPE)
    assert encoding.kind == variant.pe.removeprefix("lrpe-")
    p = variant.options["p"]
    expected = {"identity": IdentityP, "householder": HouseholderP, "householder-learned": HouseholderP,
                "oddeven": OddEvenP}[p]
    assert isinstance(encoding.p, expected)
    learned = any(param.requires_grad for param in encoding.p.parameters())
    assert learned == (p == "householder-learned")


def test_linear_rope_is_rope_on_feature_maps_without_denominator():
    config = BenchConfig(variant="linear-rope@torch-chunked", n=33, d=8, heads=2, dtype="float64")
    q, k, v = inputs(config)
    out = run(config.variant, config, q, k, v)
    phi = get_feature_map("elu1")
    rq, rk = apply_rope(phi(q), layout=ROPE_LAYOUT), apply_rope(phi(k), layout=ROPE_LAYOUT)
    expected = linear_attention(rq, rk, v, causal=True, impl="quadratic")
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("layout, lrpe_variant", [
    ("interleaved", "linear-lrpe-orthogonal@torch-chunked"),
    ("half", "linear-lrpe-orthogonal-oddeven@torch-chunked"),
])
def test_rope_is_lrpe_orthogonal_with_the_p_of_its_pairing(layout, lrpe_variant):
    """docs/fairness.md's premise, held on numbers: RoPE on the features in the registry's (RoFormer's)
    interleaved pairing is LRPE-orthogonal with P = identity, and in the half-split pairing it is
    LRPE-orthogonal with the odd-even P, up to the coordinate order, which dot products do not see. (Not to
    the last bit: LRPE keeps theta as a float32 buffer, RoPE uses float64 angles; 1.5e-6 apart here.)"""
    config = BenchConfig(variant=lrpe_variant, n=37, d=8, heads=2, dtype="float64")
    q, k, v = inputs(config)
    phi = get_feature_map("elu1")
    rq, rk = apply_rope(phi(q), layout=layout), apply_rope(phi(k), layout=layout)
    expected = linear_attention(rq, rk, v, causal=True, impl="quadratic")
    torch.testing.assert_close(run(lrpe_variant, config, q, k, v), expected, atol=1e-5, rtol=1e-5)
    assert ROPE_LAYOUT == "interleaved"
    other = "half" if layout == "interleaved" else "interleaved"
    rq, rk = apply_rope(phi(q), layout=other), apply_rope(phi(k), layout=other)
    assert not torch.allclose(run(lrpe_variant, config, q, k, v),
                              linear_attention(rq, rk, v, causal=True, impl="quadratic"), atol=1e-3, rtol=1e-3)


def test_spe_entries_draw_from_the_seeded_global_generator():
    config = BenchConfig(variant="linear-spe-sine@torch-chunked", n=20, d=8, heads=2, dtype="float64")
    q, k, v = inputs(config)
    first = run(config.variant, config, q, k, v, draw_seed=5)
    again = run(config.variant, config, q, k, v, draw_seed=5)
    other = run(config.variant, config, q, k, v, draw_seed=6)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.allclose(first, other)


def _exact_variants() -> list[str]:
    names = []
    for name, variant in VARIANTS.items():
        if variant.backend == "flex" and not FLEX_OPT_IN:
            continue  # its probe compiles: ~20 s on 2 CPU cores; LRPE_TEST_FLEX=1 runs it
        if variant.family == "linear" or variant.unavailable_reason() is not None:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", _exact_variants())
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_exact_attention_variants_equal_the_softmax_oracle(name, dtype):
    variant = get_variant(name)
    config = BenchConfig(variant=name, n=45, d=32, heads=2, batch=2, dtype=dtype)
    if not (verdict := variant.verdict(config)).runs:
        assert verdict.status != "error", verdict.reason
        pytest.skip(f"{verdict.status} here: {verdict.reason}")
    q, k, v = inputs(config)
    out = run(name, config, q, k, v)
    if variant.pe == "rope":
        q, k = apply_rope(q, layout=ROPE_LAYOUT), apply_rope(k, layout=ROPE_LAYOUT)
    expected = softmax_attention(q.float(), k.float(), v.float(), causal=True)
    atol, rtol = float_tolerance(config.torch_dtype)
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)


def test_a_backend_s_probe_cost_and_self_check_exemption_live_in_its_record():
    """The dry run's probe charge and the CPU self-check's skip list read the record, not a name list:
    FlexAttention (compiles in its probe and per shape) says so in its record, and no other backend does."""
    from bench.registry import backend_of

    records = {(v.family, v.backend): backend_of(v) for v in all_variants().values()}
    flex = records[("flash", "flex")]
    assert flex.probe_seconds > 0 and not flex.cpu_selfcheck
    others = [r for key, r in records.items() if key != ("flash", "flex")]
    assert all(r.probe_seconds == 0 and r.cpu_selfcheck for r in others)
    with pytest.raises(ValueError, match="probe_seconds must be >= 0, got -1"):
        dataclasses.replace(flex, probe_seconds=-1)
