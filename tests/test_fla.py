"""linear@fla and every encoding on fla against the torch chunked path, values and gradients (CUDA with fla).

The comparison is ``bench.equivalence.compare``: the fla variant and its torch-chunked twin built with the same
seed, on the same rounded inputs and the same SPE draw, output and dq, dk, dv within the dtype's tolerance.
On CPU the same comparison runs with the quadratic oracle (``@naive``) in place of fla, so the pairing, the
seeded SPE draws and the gradient plumbing are tested here; the fla tests skip without CUDA and fla.
"""

from __future__ import annotations

import pytest
import torch

from baselines.fla_linear import fla_availability
from bench.config import BenchConfig
from bench.equivalence import TOLERANCE, compare, equivalence_rows, kernel_variants, oracle_name
from bench.registry import all_variants, get_variant

FLA_VARIANTS = [name for name, v in all_variants().items() if v.backend == "fla"]
NAIVE_LINEAR = [name for name, v in all_variants().items() if v.family == "linear" and v.backend == "naive"]


def test_every_fla_variant_is_checked_against_its_torch_chunked_twin() -> None:
    checked = {v.name for v in kernel_variants()}
    assert set(FLA_VARIANTS) <= checked
    encodings = {all_variants()[name].pe for name in FLA_VARIANTS}
    assert {"none", "rope", "spe-sine", "spe-conv", "lrpe-unitary", "lrpe-orthogonal", "lrpe-permutation"} <= encodings
    for name in FLA_VARIANTS:
        assert oracle_name(get_variant(name)) == name.replace("@fla", "@torch-chunked")
        assert oracle_name(get_variant(name)) in all_variants()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAIVE_LINEAR)
def test_the_linear_comparison_holds_on_cpu_with_the_quadratic_oracle(name: str, dtype: str) -> None:
    """The comparison fla gets, run here with the quadratic oracle as the "kernel": SPE's seeded codes match
    across dtypes, and forward and gradients agree."""
    config = BenchConfig(variant=name, n=150, d=16, batch=2, heads=2, dtype=dtype, pass_="fwd+bwd")
    row = compare(get_variant(name), config)
    assert row.status == "pass", row.describe()
    assert None not in (row.forward_error, row.dq_error, row.dk_error, row.dv_error)
    if dtype == "float32":
        assert max(row.errors().values()) < 1e-5, row.describe()


def test_the_comparison_fails_when_the_pair_differs() -> None:
    # The variant claims RoPE (so its oracle is softmax-rope@naive) but its core applies none: the check must
    # see it. (flash-rope against the plain softmax oracle was the pair once; its oracle now has RoPE too.)
    import dataclasses

    plain = get_variant("flash@sdpa-flash")
    claims_rope = dataclasses.replace(get_variant("flash-rope@sdpa-flash"), builder=plain.builder)
    config = BenchConfig(variant="flash-rope@sdpa-flash", n=64, d=16, heads=2, dtype="float32", pass_="fwd+bwd")
    row = compare(claims_rope, config)
    assert row.status == "fail" and row.forward_error > 10 * TOLERANCE["float32"]
    assert "exceeds the tolerance" in row.reason
    assert compare(get_variant("flash-rope@sdpa-flash"), config).status == "pass"  # the real one holds


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_gpu_fla_rows_say_unavailable() -> None:
    rows = equivalence_rows("cpu", dtypes=("float32",), shapes=((1, 2, 64, 16),), names=FLA_VARIANTS)
    assert [r.name for r in rows] == FLA_VARIANTS
    assert all(r.status == "unavailable" and r.reason for r in rows)


def needs_fla(test):
    """needs_gpu (skipped without CUDA by tests/conftest.py, counted as such by selfcheck), and fla importable."""
    fla_missing = pytest.mark.skipif(fla_availability() is not None, reason=f"needs fla: {fla_availability()}")
    return pytest.mark.needs_gpu(fla_missing(test))


@needs_fla
@pytest.mark.parametrize("shape", [(2, 4, 1024, 64), (1, 2, 333, 128)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", FLA_VARIANTS)
def test_fla_matches_torch_chunked_values_and_gradients(name: str, dtype: str, shape: tuple,
                                                        assert_matches_oracle) -> None:
    b, h, n, d = shape
    config = BenchConfig(variant=name, n=n, d=d, batch=b, heads=h, dtype=dtype, pass_="fwd+bwd", device="cuda")
    assert_matches_oracle(get_variant(name), config)


def test_equivalence_table_on_cpu(capsys) -> None:
    from bench.equivalence import main, markdown

    names = ["flash@sdpa-flash", "softmax@sdpa-math", "linear@fla"]
    rows = equivalence_rows("cpu", dtypes=("float32", "bfloat16"), shapes=((1, 2, 70, 32),), names=names)
    by_name: dict[str, list[str]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row.status)
    assert by_name["flash@sdpa-flash"] == by_name["softmax@sdpa-math"] == ["pass", "pass"]
    if not torch.cuda.is_available():
        assert by_name["linear@fla"] == ["unavailable"]
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| flash@sdpa-flash | bfloat16 | 1x2x70x32 | pass |" in table
    assert main(["--device", "cpu", "--dtypes", "float32", "--shapes", "1x2x40x16",
                 "--variants", "flash@sdpa-flash"]) == 0
    assert "| flash@sdpa-flash | float32 | 1x2x40x16 | pass |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="float33"):
        equivalence_rows("cpu", dtypes=("float33",))
