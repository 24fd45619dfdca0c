"""FlashAttention family: each available backend equals the softmax oracle, forcing never falls back,
and what cannot run says why.

Compiling flex_attention costs about 15-20 s for the first config in a fresh process on 2 CPU cores and
seconds for each next one, so the flex kernel tests are opt-in: set LRPE_TEST_FLEX=1. Tests needing CUDA skip
without it.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import pytest
import torch
from torch import Tensor, nn

from baselines.flash import FLASH_BACKENDS, availability, build_flash, float_tolerance, unsupported_reason
from baselines.softmax import softmax_attention
from bench.config import BenchConfig
from bench.equivalence import compare
from bench.registry import all_variants

FLEX_OPT_IN = os.environ.get("LRPE_TEST_FLEX") == "1"
needs_flex = pytest.mark.skipif(
    not FLEX_OPT_IN, reason="compiling flex_attention takes ~15-20 s on 2 CPU cores; set LRPE_TEST_FLEX=1"
)
needs_cuda = pytest.mark.needs_gpu  # skipped without CUDA by tests/conftest.py
# backends whose availability probe is cheap here (flex's compiles)
PROBED = tuple(b for b in FLASH_BACKENDS if b != "flex" or FLEX_OPT_IN)
CUDA_ONLY = ("sdpa-efficient", "sdpa-cudnn", "flash-attn2", "flash-attn3", "flash-attn4",
             "xformers-cutlass", "xformers-flash", "xformers-flash3", "xformers-triton")
CPU_KERNELS = tuple(b for b in FLASH_BACKENDS if b not in CUDA_ONLY and b != "flex")  # flex: see needs_flex


class Rotate(nn.Module):
    """Test-local positional transform: rotates coordinate pairs (2i, 2i+1) of the token at position p by
    p * 100^(-i / (D/2)) radians (RoPE-like), p = offset + index."""

    def forward(self, x: Tensor, offset: int) -> Tensor:
        n, d = x.shape[-2], x.shape[-1]
        pos = torch.arange(offset, offset + n, device=x.device, dtype=torch.float64)
        freq = 100.0 ** (-torch.arange(d // 2, device=x.device, dtype=torch.float64) / (d // 2))
        angle = pos[:, None] * freq[None, :]
        cos, sin = angle.cos(), angle.sin()
        even, odd = x[..., 0::2].double(), x[..., 1::2].double()
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x.dtype)


def qkv(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str = "cpu", seed: int = 0,
        dv: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    q, k = (torch.randn(shape, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, dv or d, generator=g)
    return tuple(t.to(device, dtype) for t in (q, k, v))


def oracle(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """float32 oracle (float64 for float64) on the very values the kernel saw."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    return softmax_attention(q.to(compute), k.to(compute), v.to(compute), causal=causal)


def skip_unless_runs(backend: str, *, head_dim: int, dtype: torch.dtype, device: str, causal: bool) -> None:
    reason = availability(backend) or unsupported_reason(
        backend, head_dim=head_dim, dtype=dtype, device=device, causal=causal
    )
    if reason is not None:
        pytest.skip(reason)


def assert_matches_oracle(out: Tensor, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    assert out.shape == v.shape and out.dtype == v.dtype
    atol, rtol = float_tolerance(v.dtype)
    torch.testing.assert_close(out.to(torch.float64), oracle(q, k, v, causal).to(torch.float64),
                               atol=atol, rtol=rtol)


# --- names, availability, building -------------------------------------------------------------------------

def test_backend_names() -> None:
    assert set(FLASH_BACKENDS) == {"sdpa-flash", "sdpa-math", "flex", *CUDA_ONLY}
    assert len(FLASH_BACKENDS) == len(set(FLASH_BACKENDS))


@pytest.mark.parametrize("call", [
    lambda: availability("flash-attn"),
    lambda: unsupported_reason("sdpa", head_dim=64, dtype=torch.float32, device="cpu", causal=True),
    lambda: build_flash("xformers"),
], ids=["availability", "unsupported_reason", "build_flash"])
def test_unknown_backend_raises_listing_allowed(call) -> None:
    with pytest.raises(ValueError, match="unknown FlashAttention backend") as info:
        call()
    assert all(name in str(info.value) for name in FLASH_BACKENDS)


@pytest.mark.parametrize("backend", PROBED)
def test_availability_is_a_reason_or_none(backend: str) -> None:
    reason = availability(backend)
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        assert "unavailable" not in reason.lower()  # the suite adds the status word
    assert availability(backend) is reason  # cached


def test_cpu_kernels_are_available() -> None:
    assert availability("sdpa-math") is None
    assert availability("sdpa-flash") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("backend", CUDA_ONLY)
def test_cuda_only_backends_are_unavailable_without_cuda(backend: str) -> None:
    reason = availability(backend)
    assert reason is not None
    if backend.startswith("sdpa"):
        assert "CUDA" in reason


@pytest.mark.parametrize("backend", PROBED)
def test_unavailable_backend_gives_reasons_and_refuses_to_build(backend: str) -> None:
    reason = availability(backend)
    if reason is None:
        pytest.skip(f"{backend} is available here")
    assert unsupported_reason(backend, head_dim=64, dtype=torch.float16, device="cuda", causal=True)
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        build_flash(backend)


# --- equality with the oracle ------------------------------------------------------------------------------

SHAPES = [(2, 3, 37, 32), (1, 2, 1, 64), (1, 2, 100, 128)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", CPU_KERNELS)
def test_cpu_backend_matches_oracle(backend: str, dtype: torch.dtype, shape: tuple, causal: bool) -> None:
    skip_unless_runs(backend, head_dim=shape[-1], dtype=dtype, device="cpu", causal=causal)
    q, k, v = qkv(shape, dtype, seed=sum(shape))
    assert_matches_oracle(build_flash(backend, causal=causal)(q, k, v), q, k, v, causal)


def variant_of(backend: str) -> str:
    """The registry's name of ``backend`` without positions (sdpa-math is registered as a softmax backend)."""
    return next(name for name, v in all_variants().items() if v.backend == backend and v.pe == "none")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", CPU_KERNELS)
def test_cpu_backend_gradients_match_oracle(backend: str, dtype: str, shape: tuple, causal: bool) -> None:
    """dq, dk, dv of the forced CPU kernel against autograd through the float64 softmax oracle, for one
    dense random output gradient (bench.equivalence.compare); float32 to 1e-5 of the largest entry."""
    b, h, n, d = shape
    config = BenchConfig(variant=variant_of(backend), n=n, d=d, batch=b, heads=h, dtype=dtype, causal=causal,
                         pass_="fwd+bwd")
    skip_unless_runs(backend, head_dim=d, dtype=config.torch_dtype, device="cpu", causal=causal)
    row = compare(all_variants()[config.variant], config)
    assert row.status == "pass", row.describe()
    assert None not in (row.dq_error, row.dk_error, row.dv_error)
    if dtype == "float32":
        assert max(row.errors().values()) < 1e-5, row.describe()


@pytest.mark.parametrize("offset", [0, 7])
@pytest.mark.parametrize("backend", CPU_KERNELS)
def test_positional_module_is_applied_to_q_and_k(backend: str, offset: int) -> None:
    skip_unless_runs(backend, head_dim=64, dtype=torch.float32, device="cpu", causal=True)
    q, k, v = qkv((2, 2, 45, 64), torch.float32, seed=3)
    rotate = Rotate()
    out = build_flash(backend, causal=True, positional=rotate)(q, k, v, offset=offset)
    assert_matches_oracle(out, rotate(q, offset), rotate(k, offset), v, causal=True)
    plain = build_flash(backend, causal=True)(q, k, v)
    assert (out - plain).abs().max() > 1e-2  # the transform changed the result, so it was applied


# --- what cannot run, and forcing --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sdpa-efficient", "sdpa-cudnn", "flash-attn2", "xformers-cutlass"])
def test_cuda_kernel_on_cpu_is_unsupported_naming_the_device(backend: str) -> None:
    reason = unsupported_reason(backend, head_dim=64, dtype=torch.float16, device="cpu", causal=True)
    assert reason is not None and "'cpu'" in reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("head_dim", [32, 100, 256])
def test_cpu_flash_kernel_takes_every_float_dtype_and_head_dim(head_dim: int, dtype: torch.dtype) -> None:
    # found on torch 2.13: unlike CUDA's, the CPU flash kernel accepts float32/float64 and any head dim
    assert unsupported_reason("sdpa-flash", head_dim=head_dim, dtype=dtype, device="cpu", causal=True) is None


def test_forced_flash_raises_where_math_would_run() -> None:
    # the CPU flash kernel needs v as wide as q and k; the math kernel does not
    q, k, v = qkv((1, 2, 24, 64), torch.float32, dv=32)
    assert_matches_oracle(build_flash("sdpa-math")(q, k, v), q, k, v, causal=True)
    flash = build_flash("sdpa-flash")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="No available kernel"):
            flash(q, k, v)
    assert any("same last dimension" in str(w.message) for w in caught)


@pytest.mark.parametrize("kwargs, message", [
    ({"head_dim": 0}, "head_dim"),
    ({"dtype": "int32"}, "floating"),
    ({"dtype": "float33"}, "not a torch dtype"),
    ({"device": "banana"}, "not a torch device"),
])
def test_unsupported_reason_rejects_malformed_arguments(kwargs: dict, message: str) -> None:
    args = {"head_dim": 64, "dtype": torch.float32, "device": "cpu", "causal": True} | kwargs
    with pytest.raises(ValueError, match=message):
        unsupported_reason("sdpa-math", **args)


def test_dtype_may_be_named() -> None:
    assert unsupported_reason("sdpa-math", head_dim=16, dtype="bfloat16", device="cpu", causal=False) is None


def test_probe_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    reason = unsupported_reason("sdpa-math", head_dim=24, dtype=torch.float32, device="cpu", causal=False)
    assert reason is None
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_core_validates_inputs() -> None:
    q = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match=r"\(B, H, N, D\)"):
        build_flash("sdpa-math")(q, q, q)


def test_float_tolerance_orders_dtypes() -> None:
    tolerances = [float_tolerance(d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)]
    assert tolerances == sorted(tolerances)
    with pytest.raises(ValueError, match="no tolerance"):
        float_tolerance(torch.int8)


# --- flex ---------------------------------------------------------------------------------------------------

def visible(block_mask, n: int, side: str) -> Tensor:
    """(N, N) bool: which keys each query sees under ``block_mask``, read from its kv-side (rows are query
    tiles) or q-side (rows are key tiles) block lists: full tiles wholly, partial tiles through mask_mod."""
    from baselines.flex import BLOCK_SIZE

    tiles = -(-n // BLOCK_SIZE)
    kinds = []
    for prefix in ("", "full_"):
        counts = getattr(block_mask, f"{prefix}{side}_num_blocks").flatten().tolist()
        indices = getattr(block_mask, f"{prefix}{side}_indices").flatten(0, -2)
        kind = torch.zeros(tiles, tiles, dtype=torch.bool)
        for row, count in enumerate(counts):
            kind[row, indices[row, :count].long()] = True
        kinds.append(kind if side == "kv" else kind.T)
    tile = torch.arange(n) // BLOCK_SIZE
    partial, full = (kind[tile][:, tile] for kind in kinds)
    idx = torch.arange(n)
    return full | (partial & block_mask.mask_mod(0, 0, idx[:, None], idx[None, :]))


@pytest.mark.parametrize("n", [1, 37, 128, 200, 300])
def test_causal_block_mask_is_causal_like_create_block_mask(n: int) -> None:
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention")
    from baselines.flex import causal_block_mask, causal_mask_mod

    ours = causal_block_mask(n, torch.device("cpu"))
    theirs = flex_attention.create_block_mask(causal_mask_mod, None, None, n, n, device="cpu")
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    assert ours.seq_lengths == theirs.seq_lengths == (n, n)
    for mask in (ours, theirs):
        for side in ("kv", "q"):  # the forward reads the kv side, the backward the q side
            assert torch.equal(visible(mask, n, side), causal)
    # both skip the same tiles; in a ragged last query tile ours marks the tiles below the diagonal full
    # (no mask_mod call) where create_block_mask, padding rows with False, calls them partial
    torch.testing.assert_close(ours.kv_num_blocks + ours.full_kv_num_blocks,
                               theirs.kv_num_blocks + theirs.full_kv_num_blocks)
    assert causal_block_mask(n, torch.device("cpu")) is ours  # built once per (N, device)


@needs_flex
@pytest.mark.parametrize("shape, causal, dtype", [
    ((2, 3, 37, 32), True, torch.float32),
    ((1, 2, 1, 64), False, torch.float32),
    ((1, 2, 200, 128), True, torch.float32),
    ((2, 2, 150, 64), True, torch.bfloat16),
], ids=str)
def test_flex_matches_oracle(shape: tuple, causal: bool, dtype: torch.dtype) -> None:
    skip_unless_runs("flex", head_dim=shape[-1], dtype=dtype, device="cpu", causal=causal)
    q, k, v = qkv(shape, dtype, seed=sum(shape))
    assert_matches_oracle(build_flash("flex", causal=causal)(q, k, v), q, k, v, causal)


@needs_flex
def test_flex_applies_positional_module() -> None:
    skip_unless_runs("flex", head_dim=64, dtype=torch.float32, device="cpu", causal=True)
    q, k, v = qkv((2, 2, 45, 64), torch.float32, seed=3)
    rotate = Rotate()
    out = build_flash("flex", causal=True, positional=rotate)(q, k, v, offset=5)
    assert_matches_oracle(out, rotate(q, 5), rotate(k, 5), v, causal=True)


@needs_flex
def test_flex_cpu_limits_are_reasons() -> None:
    if availability("flex") is not None:
        pytest.skip(availability("flex"))
    float64 = unsupported_reason("flex", head_dim=64, dtype=torch.float64, device="cpu", causal=True)
    assert float64 is not None and "float64" in float64
    backward = unsupported_reason("flex", head_dim=64, dtype=torch.float32, device="cpu", causal=True,
                                  backward=True)
    assert backward is not None and "backward" in backward


# --- CUDA (run on a GPU machine) ---------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", PROBED)
def test_cuda_backend_matches_oracle(backend: str, dtype: torch.dtype, causal: bool) -> None:
    skip_unless_runs(backend, head_dim=64, dtype=dtype, device="cuda", causal=causal)
    q, k, v = qkv((2, 4, 77, 64), dtype, device="cuda", seed=1)
    assert_matches_oracle(build_flash(backend, causal=causal)(q, k, v), q, k, v, causal)


@needs_cuda
@pytest.mark.parametrize("shape", [(2, 4, 1024, 64), (1, 2, 333, 128)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("backend", PROBED)
def test_cuda_backend_gradients_match_oracle(backend: str, dtype: str, causal: bool, shape: tuple,
                                             assert_matches_oracle) -> None:
    b, h, n, d = shape
    config = BenchConfig(variant=variant_of(backend), n=n, d=d, batch=b, heads=h, dtype=dtype, causal=causal,
                         pass_="fwd+bwd", device="cuda")
    assert_matches_oracle(all_variants()[config.variant], config)


@needs_cuda
def test_cuda_flash_rejects_float32_naming_the_dtype() -> None:
    reason = unsupported_reason("sdpa-flash", head_dim=64, dtype=torch.float32, device="cuda", causal=True)
    assert reason is not None and "dtype" in reason.lower()
    q, k, v = qkv((1, 2, 16, 64), torch.float32, device="cuda")
    with pytest.raises(RuntimeError):
        build_flash("sdpa-flash")(q, k, v)


def test_oracle_scale_is_one_over_sqrt_d() -> None:
    # the cores rely on every kernel's default scale; pin what the oracle does with it
    q, k, v = qkv((1, 1, 5, 16), torch.float64)
    scores = (q @ k.mT) / math.sqrt(16)
    expected = torch.softmax(scores, dim=-1) @ v
    torch.testing.assert_close(oracle(q, k, v, causal=False), expected)
