"""The fused Triton kernels (lrpe.kernels) against the torch oracle, through the Triton interpreter on CPU.

Triton decides at *definition* time (``@triton.jit``) whether a function is compiled or interpreted, reading
TRITON_INTERPRET then, and that includes triton.language's own jit functions (``tl.zeros``), defined when
triton is first imported. So the interpreter needs TRITON_INTERPRET=1 before anything imports triton, and
setting it inside a pytest process is too late (and would leak into GPU benchmarks that use compiled
kernels). This module therefore runs itself: in a normal session ``test_interpreter_run`` starts
``python -m pytest tests/test_triton_kernels.py`` with TRITON_INTERPRET=1 and asserts that it passes; the
checks below run in that child and skip in the parent.

Oracle: ``LinearAttentionCore(impl="quadratic")`` in float64 (explicit N x N scores, float64 angles) on the
same inputs. The kernels run float32 operands here (their 3xTF32 dots compute as float32 matmuls in the
interpreter). bfloat16 is not checked in the
interpreter: triton 3.9's interpreter returns garbage for ``tl.dot`` on bfloat16 operands (a plain 16 x 16
bfloat16 dot is off by ~1e10), so float16 stands in for the half-precision path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrpe.core import LinearAttentionCore

pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
in_child = pytest.mark.skipif(not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child of "
                                                       "test_interpreter_run")
KINDS = ("none", "orthogonal", "unitary", "permutation")


@pytest.mark.skipif(INTERPRETING, reason="this is the child run")
def test_interpreter_run():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                          env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.fixture(scope="module")
def kernels():
    from lrpe.kernels import function

    assert function.INTERPRETED
    return function


def _inputs(n: int, d: int, dv: int, dtype: torch.dtype, seed: int, heads: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, width, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
            for width in (d, d, dv)]


def _assert_relative_errors(got: tuple, want: tuple, tol: float) -> None:
    """(out, dq, dk, dv) against the reference's, each error relative to the reference's largest entry."""
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


def _compare(kernels, core: LinearAttentionCore, n: int, d: int, dv: int, *, offset: int = 0, chunk: int = 16,
             dtype: torch.dtype = torch.float32, seed: int = 0, tol: float = 2e-5,
             segment_chunks: int | None = None, feature_map: str = "elu1") -> None:
    """Kernel output and (dq, dk, dv) vs the float64 oracle, relative to each reference's largest entry."""
    q, k, v = _inputs(n, d, dv, dtype, seed, heads=2)
    out = kernels.fused_lrpe_linear_attention(q, k, v, core.positional, causal=core.causal, offset=offset,
                                              chunk_size=chunk, segment_chunks=segment_chunks,
                                              feature_map=feature_map)
    assert out.shape == (1, 2, n, dv) and out.dtype == dtype
    ref = core(q.double(), k.double(), v.double(), offset=offset)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.to(dtype))
    want = torch.autograd.grad(ref, (q, k, v), grad)
    _assert_relative_errors((out, *got), (ref, *want), tol)


@in_child
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("segment_chunks", [None, 2])
def test_values_and_gradients_match_oracle(kernels, kind, causal, d, segment_chunks):
    # N = 37 + ...: never a multiple of the chunk (16), so the masked tail is always exercised; 3-4 chunks.
    # segment_chunks None: the default plan, one segment at this N; 2: segments of 2 chunks, so pass 1, the
    # prefix over segments (forward and, for dv/dk, reversed) and the per-segment starting states all run,
    # with a ragged last segment at D = 64 (3 chunks) and a partial last chunk in both.
    n = 37 + d // 8
    core = LinearAttentionCore(d, positional=kind, causal=causal, impl="quadratic", seed=d)
    _compare(kernels, core, n, d, d, offset=3, seed=KINDS.index(kind) + 10 * d + causal + 7 * (segment_chunks or 0),
             segment_chunks=segment_chunks)


@in_child
@pytest.mark.parametrize("kind", ["orthogonal", "unitary", "permutation"])
@pytest.mark.parametrize("p", ["householder", "householder-learned", "oddeven"])
def test_every_p_matches_oracle(kernels, kind, p):
    # P other than identity runs in torch before the kernels (fused_lrpe_linear_attention): values and
    # dq/dk/dv against the float64 oracle, causal with two segments, and the learned Householder vector's
    # gradient through the forced core against the torch path's.
    core = LinearAttentionCore(64, positional=kind, p=p, impl="quadratic", seed=5)
    _compare(kernels, core, 45, 64, 64, offset=2, seed=len(kind) + len(p), segment_chunks=2)
    if p == "householder-learned":
        fused = LinearAttentionCore(64, positional=kind, p=p, impl="triton", chunk_size=16, seed=5)
        q, k, v = _inputs(45, 64, 64, torch.float32, seed=3)
        (g_fused,) = torch.autograd.grad(fused(q, k, v).square().sum(), fused.positional.p.v)
        torch_path = LinearAttentionCore(64, positional=kind, p=p, impl="chunked", seed=5)
        (g_torch,) = torch.autograd.grad(torch_path(q, k, v).square().sum(), torch_path.positional.p.v)
        torch.testing.assert_close(g_fused, g_torch, rtol=1e-4, atol=1e-4 * g_torch.abs().max().item())


@in_child
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
def test_one_chunk_segments(kernels, kind, causal):
    # Every chunk its own segment (S = 6, the last one 2 rows): the kernels' chunk loops run once per program
    # and every state comes from the prefix over segments.
    core = LinearAttentionCore(64, positional=kind, causal=causal, impl="quadratic", seed=4)
    _compare(kernels, core, 82, 64, 64, offset=11, seed=20 + KINDS.index(kind) + causal, segment_chunks=1)


@in_child
def test_default_plan_splits_long_sequences(kernels):
    # At N = 300, C = 16 and B H = 2 the default plan cuts 19 chunks into segments of MIN_SEGMENT_CHUNKS (16):
    # S = 2 with a 3-chunk last segment, on the path every long GPU call takes.
    assert kernels.default_segment_chunks(300, 16, 2) == kernels.MIN_SEGMENT_CHUNKS == 16
    assert kernels.num_segments(300, 16, 16) == 2
    for causal in (True, False):
        core = LinearAttentionCore(64, positional="orthogonal", causal=causal, impl="quadratic", seed=6)
        _compare(kernels, core, 300, 64, 64, offset=5, seed=30 + causal)


@in_child
def test_segment_plan(kernels):
    target, shortest = kernels.TARGET_PROGRAMS, kernels.MIN_SEGMENT_CHUNKS
    # The documented examples (C = 64).
    assert kernels.default_segment_chunks(65536, 64, 16) == 32 and kernels.num_segments(65536, 64, 32) == 32
    assert kernels.default_segment_chunks(65536, 64, 64) == 128 and kernels.num_segments(65536, 64, 128) == 8
    assert kernels.num_segments(1024, 64, kernels.default_segment_chunks(1024, 64, 16)) == 1
    assert kernels.num_segments(0, 64, kernels.default_segment_chunks(0, 64, 1)) == 1
    for n in (1, 63, 64, 1000, 4096, 30000, 65536, 131072, 1 << 20):
        for parallel in (1, 2, 16, 17, 100, 264, 1000):
            n_chunks = -(-n // 64)
            seg = kernels.default_segment_chunks(n, 64, parallel)
            segs = kernels.num_segments(n, 64, seg)
            assert seg == kernels.default_segment_chunks(n, 64, parallel)  # pure
            assert 1 <= seg <= n_chunks and (segs - 1) * seg < n_chunks <= segs * seg
            assert segs == 1 or seg >= shortest, (n, parallel, seg)
            assert seg & (seg - 1) == 0 or segs == 1, (n, parallel, seg)  # a power of two unless one segment
            if n_chunks // -(-target // parallel) >= shortest:  # long enough: the target is reached
                assert parallel * segs >= target, (n, parallel, segs)
    with pytest.raises(ValueError, match="parallel=0"):
        kernels.default_segment_chunks(100, 64, 0)


@in_child
def test_entry_point_plans_with_value_blocks(kernels, monkeypatch):
    # The entry point asks the plan for B H x the forward's value blocks: unitary at D = 64 runs BV = 32
    # (launch_config), so B 1 x H 2 x 2 blocks = 4.
    calls = []
    plan = kernels.default_segment_chunks
    monkeypatch.setattr(kernels, "default_segment_chunks", lambda *args: calls.append(args) or plan(*args))
    core = LinearAttentionCore(64, positional="unitary", impl="quadratic")
    q = torch.randn(1, 2, 20, 64)
    kernels.fused_lrpe_linear_attention(q, q, q, core.positional, chunk_size=16)
    assert kernels.launch_config(1, 64, 64, 90).block_v == 32 and calls == [(20, 16, 4)]
    q = torch.randn(1, 1, 20, 64)
    with pytest.raises(ValueError, match="segment_chunks must be >= 1, got 0"):
        kernels.fused_lrpe_linear_attention(q, q, q, chunk_size=16, segment_chunks=0)


@in_child
@pytest.mark.parametrize("kind", ["orthogonal", "permutation"])
@pytest.mark.parametrize("causal", [True, False])
def test_whole_chunks_and_value_width(kernels, kind, causal):
    # N a multiple of the chunk (no tail), the shipped chunk of 64, and DV != D; then two whole segments of
    # one chunk each (the (W, DV) state tiles with DV != W, read transposed by dq and dk).
    core = LinearAttentionCore(128, positional=kind, causal=causal, impl="quadratic")
    _compare(kernels, core, 128, 128, 64, chunk=64, seed=5)
    _compare(kernels, core, 128, 128, 64, chunk=64, seed=6, segment_chunks=1)


@in_child
@pytest.mark.parametrize("kind", ["orthogonal", "unitary"])
def test_angles_accurate_near_64k(kernels, kind):
    # Positions 60000..60040: a float32 angle s * theta is off by up to ulp(60000) ~ 4e-3 rad here; the
    # coarse x fine phasor tables keep the error at float32 rounding, against float64 angles in the oracle.
    core = LinearAttentionCore(64, positional=kind, causal=True, impl="quadratic")
    _compare(kernels, core, 41, 64, 64, offset=60000, seed=7)
    _compare(kernels, core, 41, 64, 64, offset=60000, seed=8, segment_chunks=1)


@in_child
@pytest.mark.parametrize("kind", ["unitary", "permutation"])
def test_sm80_blocks(kernels, kind, monkeypatch):
    # The blocks launched before sm_90 (BV = 32, BW = 16 for unitary, 32 for permutation): other column
    # splits of the same sums.
    monkeypatch.setattr(kernels, "_capability", lambda x: 80)
    assert kernels.launch_config(1, 128, 128, 80).block_w == 16
    core = LinearAttentionCore(128, positional=kind, causal=True, impl="quadratic")
    _compare(kernels, core, 45, 128, 128, seed=13, segment_chunks=2)


@in_child
@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize("kind", ["none", "orthogonal", "permutation"])
@pytest.mark.parametrize("causal", [True, False])
def test_float32_gpu_configuration(kernels, capability, kind, causal, monkeypatch):
    # The float32 GPU launch configuration (3xTF32 dots compute as float32 matmuls here) run by the
    # interpreter: the kernels' own chunk (32; 16 for orthogonal on sm_90) replaces the caller's 64, with
    # BV = BW = 16; N = 45 is no multiple of either, and segments of 2 chunks run pass 1 and the prefix.
    monkeypatch.setattr(kernels, "_float32_gpu", lambda x: x.dtype == torch.float32)
    monkeypatch.setattr(kernels, "_capability", lambda x: capability)
    cfg = kernels.launch_config(kernels.KIND_CODES[kind], 64, 64, capability, float32=True)
    assert (cfg.block_v, cfg.block_w, cfg.num_stages) == (16, 16, 1)
    assert cfg.chunk == (16 if kind == "orthogonal" and capability == 90 else 32)
    calls = []
    plan = kernels.default_segment_chunks
    monkeypatch.setattr(kernels, "default_segment_chunks", lambda *args: calls.append(args) or plan(*args))
    core = LinearAttentionCore(64, positional=kind, causal=causal, impl="quadratic", seed=9)
    _compare(kernels, core, 45, 64, 64, chunk=64, offset=5, seed=30 + causal + len(kind), segment_chunks=2)
    _compare(kernels, core, 45, 64, 64, chunk=64, offset=5, seed=31)
    assert calls == [(45, cfg.chunk, 2 * 4)]  # planned in the kernels' chunk: B H 2 x DV / BV = 4 value blocks


@in_child
def test_float32_gpu_refuses_other_shapes(kernels, monkeypatch):
    # Unitary and D = 128 spill in float32 (docs/kernels.md): refused by name, and "auto" falls back.
    monkeypatch.setattr(kernels, "_float32_gpu", lambda x: x.dtype == torch.float32)
    q = torch.randn(1, 1, 20, 64)
    unitary = LinearAttentionCore(64, positional="unitary", impl="quadratic")
    with pytest.raises(ValueError, match=r"float32 on a GPU takes LRPE kinds \['none', 'orthogonal', "
                                         r"'permutation'\] .* got unitary"):
        kernels.fused_lrpe_linear_attention(q, q, q, unitary.positional)
    wide = torch.randn(1, 1, 20, 128)
    with pytest.raises(ValueError, match=r"float32 on a GPU takes D, DV in \(64,\) .* got D=128, DV=128"):
        kernels.fused_lrpe_linear_attention(wide, wide, wide)
    with pytest.raises(ValueError, match="got D=64, DV=128"):
        kernels.check_supported(q, q, wide, 64, kernels.KIND_CODES["none"])
    with pytest.raises(ValueError, match="got unitary"):
        kernels.launch_config(kernels.KIND_CODES["unitary"], 64, 64, 80, float32=True)
    # Half inputs keep their blocks and the caller's chunk; float32 in the interpreter too.
    assert kernels.launch_config(kernels.KIND_CODES["none"], 64, 64, 90).chunk is None
    assert kernels.float32_reason("permutation", 64, 64) is None


@in_child
def test_per_head_parameters(kernels):
    # Per-head permutations (independent draws) and per-head theta: the tables carry a head dimension.
    perm = LinearAttentionCore(64, num_heads=2, positional="permutation", impl="quadratic", seed=3)
    assert not torch.equal(perm.positional.perm[0], perm.positional.perm[1])
    _compare(kernels, perm, 40, 64, 64, seed=8, segment_chunks=1)
    rot = LinearAttentionCore(64, num_heads=2, positional="orthogonal", theta="learned", impl="quadratic")
    with torch.no_grad():
        rot.positional.theta[1].mul_(0.5)
    rot.positional.theta.requires_grad_(False)
    _compare(kernels, rot, 40, 64, 64, seed=9, segment_chunks=1)


@in_child
@pytest.mark.parametrize("kind", ["orthogonal", "unitary"])
def test_float16_inputs(kernels, kind):
    # Half inputs: features and the state enter the dots in float16 (as on the GPU), float32 accumulation.
    core = LinearAttentionCore(64, positional=kind, causal=True, impl="quadratic")
    _compare(kernels, core, 40, 64, 64, dtype=torch.float16, seed=11, tol=2e-2)
    _compare(kernels, core, 40, 64, 64, dtype=torch.float16, seed=12, tol=2e-2, segment_chunks=1)


@in_child
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
def test_identity_feature_map(kernels, kind, causal):
    # feature_map="identity": q, k are already features (signed here), the kernels apply only the LRPE
    # transform; oracle: the quadratic core with feature map "identity". Segments of 2 chunks, ragged.
    core = LinearAttentionCore(64, feature_map="identity", positional=kind, causal=causal, impl="quadratic", seed=2)
    _compare(kernels, core, 45, 64, 64, offset=3, seed=40 + KINDS.index(kind) + causal, segment_chunks=2,
             feature_map="identity")


@in_child
def test_identity_differs_from_elu1(kernels):
    # The option reaches the kernels: on the same inputs the two feature maps give different outputs, and
    # identity on phi(q), phi(k) equals elu1 on q, k.
    gen = torch.Generator().manual_seed(50)
    q, k, v = (torch.randn(1, 2, 40, 64, generator=gen) for _ in range(3))
    pos = LinearAttentionCore(64, positional="orthogonal").positional
    elu = kernels.fused_lrpe_linear_attention(q, k, v, pos, chunk_size=16, segment_chunks=1)
    ident = kernels.fused_lrpe_linear_attention(q, k, v, pos, chunk_size=16, segment_chunks=1, feature_map="identity")
    assert (elu - ident).abs().max() > 1e-2 * elu.abs().max()
    phi = torch.nn.functional.elu(torch.stack([q, k])) + 1
    mapped = kernels.fused_lrpe_linear_attention(phi[0], phi[1], v, pos, chunk_size=16, segment_chunks=1,
                                                 feature_map="identity")
    torch.testing.assert_close(mapped, elu, rtol=1e-5, atol=1e-5 * elu.abs().max().item())
    with pytest.raises(ValueError, match=r"feature_map must be one of \['elu1', 'identity'\].*got 'relu'"):
        kernels.fused_lrpe_linear_attention(q, k, v, pos, chunk_size=16, feature_map="relu")


@in_child
@pytest.mark.parametrize("kind", KINDS)
def test_forced_impl_equals_torch_path(kernels, kind):
    # Through LinearAttentionCore, as the registry's *@triton variants call it (the permutation kind, which
    # has no theta, once raised AttributeError in the dispatch here).
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 2, 50, 64, generator=gen) for _ in range(3))
    fused = LinearAttentionCore(64, positional=kind, impl="triton", chunk_size=16)
    torch_path = LinearAttentionCore(64, positional=kind, impl="chunked", chunk_size=16)
    want = torch_path(q, k, v, offset=9)
    # Two float32 computations of sums of ~50 positive-feature products: tolerance relative to the largest.
    torch.testing.assert_close(fused(q, k, v, offset=9), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@in_child
def test_forced_impl_refuses_what_it_cannot_compute(kernels):
    q = k = v = torch.randn(1, 1, 20, 64)
    with pytest.raises(ValueError, match="learned theta needs its gradient"):
        LinearAttentionCore(64, positional="orthogonal", theta="learned", impl="triton")(q, k, v)
    with pytest.raises(ValueError, match="normalize"):
        LinearAttentionCore(64, normalize=True, impl="triton")(q, k, v)
    with pytest.raises(ValueError, match=r"D, DV in .* got D=48"):
        LinearAttentionCore(48, impl="triton")(q[..., :48], k[..., :48], v)
    with pytest.raises(ValueError, match="offset >= 0"):
        LinearAttentionCore(64, impl="triton")(q, k, v, offset=-1)


@in_child
def test_auto_keeps_cpu_tensors_on_the_torch_path(kernels):
    from lrpe.kernels.dispatch import unsupported_reason

    core = LinearAttentionCore(64, positional="orthogonal", impl="auto")
    q = k = v = torch.randn(1, 1, 20, 64)
    reason = unsupported_reason(core, q, k, v, 0, has_state=False, forced=False)
    assert reason is not None and "CUDA" in reason
    want = LinearAttentionCore(64, positional="orthogonal", impl="chunked")(q, k, v)
    torch.testing.assert_close(core(q, k, v), want, rtol=0, atol=0)


@in_child
def test_check_supported_names_the_bad_value(kernels):
    q = torch.randn(1, 1, 8, 64)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.check_supported(q, q, q.double(), 64)
    with pytest.raises(ValueError, match=r"chunk_size must be one of \(16, 32, 64\) .* got 48"):
        kernels.check_supported(q, q, q, 48)


@in_child
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("dk", "n"), [(64, 70), (128, 33)])
def test_functional_forced_impl_matches_the_oracle(kernels, causal, normalize, dk, n):
    # lrpe.linear_attention on feature-mapped q, k (positive: a denominator away from 0) through the kernels
    # (identity feature map) against its own float64 quadratic form, values and gradients; chunk 16: several
    # chunks and a masked tail.
    from lrpe import linear_attention

    gen = torch.Generator().manual_seed(dk + n + causal + 2 * normalize)
    q, k = (torch.rand(1, 2, n, dk, generator=gen, dtype=torch.float64).float().requires_grad_() for _ in range(2))
    v = torch.randn(1, 2, n, 64, generator=gen, dtype=torch.float64).float().requires_grad_()
    out = linear_attention(q, k, v, causal=causal, normalize=normalize, chunk_size=16, impl="triton")
    ref = linear_attention(q.double(), k.double(), v.double(), causal=causal, normalize=normalize,
                           impl="quadratic")
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.float())
    want = torch.autograd.grad(ref, (q, k, v), grad)
    _assert_relative_errors((out, *got), (ref, *want), 2e-5)


@in_child
def test_functional_forced_impl_refuses_states_and_shapes(kernels):
    from lrpe import linear_attention

    q = k = v = torch.rand(1, 1, 20, 64)
    with pytest.raises(ValueError, match="impl='triton': initial_state / return_state are not fused"):
        linear_attention(q, k, v, impl="triton", return_state=True)
    with pytest.raises(ValueError, match=r"impl='triton': .*D, DV in .* got D=48"):
        linear_attention(q[..., :48], k[..., :48], v, impl="triton")
    # "auto" on CPU tensors is the chunked form, bit for bit.
    torch.testing.assert_close(linear_attention(q, k, v, impl="auto"), linear_attention(q, k, v, impl="chunked"),
                               rtol=0, atol=0)


@pytest.mark.skipif(INTERPRETING, reason="checks the compiled-kernel process")
def test_functional_forced_impl_on_cpu_says_it_needs_cuda():
    from lrpe import linear_attention

    q = k = v = torch.rand(1, 1, 20, 64)
    with pytest.raises(ValueError, match=r"impl='triton': the fused kernels need CUDA tensors"):
        linear_attention(q, k, v, impl="triton")
    with pytest.raises(ValueError, match=r"unknown impl 'fused'; allowed: \['quadratic', 'recurrent', 'chunked', "
                                         r"'auto', 'triton'\]"):
        linear_attention(q, k, v, impl="fused")


@pytest.mark.skipif(INTERPRETING, reason="checks the registry in the parent process")
def test_registry_marks_float32_shapes_the_kernels_refuse():
    # The *@triton variants take float32; a sweep config the kernels refuse in float32 is "unsupported" with
    # the kernels' own reason (bench/registry.py asks lrpe.kernels.dispatch.float32_reason), not an error row.
    from bench.config import BenchConfig
    from bench.registry import all_variants

    variants = all_variants()
    assert "float32" in variants["linear@triton"].dtypes

    def check(name: str, d: int, dtype: str) -> str | None:
        return variants[name].check(BenchConfig(variant=name, n=1024, d=d, dtype=dtype))

    for name in ("linear@triton", "linear-lrpe-orthogonal@triton", "linear-lrpe-permutation-householder@triton"):
        assert check(name, 64, "float32") is None and check(name, 128, "bfloat16") is None
        assert "got D=128, DV=128" in check(name, 128, "float32")
    assert "got unitary" in check("linear-lrpe-unitary@triton", 64, "float32")
    assert check("linear-lrpe-unitary@triton", 64, "float16") is None


def on_gpu(test):
    """A CUDA test of the compiled kernels: ``needs_gpu`` (skipped without CUDA, tests/conftest.py), and not
    run in the interpreter child."""
    interpreted = pytest.mark.skipif(INTERPRETING, reason="the CUDA tests run compiled kernels, in the parent")
    return pytest.mark.needs_gpu(interpreted(test))


@on_gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(("segment_chunks", "feature_map"), [(None, "elu1"), (4, "elu1"), (4, "identity")])
def test_cuda_bfloat16_matches_oracle(kind, causal, d, segment_chunks, feature_map):
    # The compiled kernels at the shipped chunk (64), N = 1000 (a masked tail), bfloat16 operands: the default
    # plan (one segment at this N), then 4 segments of 4 chunks (the last ragged), and the identity map.
    from lrpe.kernels.function import fused_lrpe_linear_attention

    core = LinearAttentionCore(d, feature_map=feature_map, positional=kind, causal=causal, impl="quadratic").cuda()
    gen = torch.Generator(device="cuda").manual_seed(d + causal)
    q, k, v = (torch.randn(1, 2, 1000, d, device="cuda", generator=gen).bfloat16().requires_grad_()
               for _ in range(3))
    out = fused_lrpe_linear_attention(q, k, v, core.positional, causal=causal, offset=60000,
                                      segment_chunks=segment_chunks, feature_map=feature_map)
    ref = core(q.double(), k.double(), v.double(), offset=60000)
    grad = torch.randn(ref.shape, device="cuda", generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.bfloat16())
    want = torch.autograd.grad(ref, (q, k, v), grad)
    _assert_relative_errors((out, *got), (ref, *want), 3e-2)


@on_gpu
@pytest.mark.parametrize("kind", ["none", "orthogonal", "permutation"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("segment_chunks", "feature_map"), [(None, "elu1"), (4, "elu1"), (4, "identity")])
def test_cuda_float32_matches_oracle(kind, causal, segment_chunks, feature_map):
    # float32 inputs at D = 64 (the shapes float32 runs on a GPU), 3xTF32 dots at the kernels' own chunk (32,
    # or 16), N = 1000. Tolerance 1e-4 relative to the largest entry: 3xTF32 drops only the lo x lo term
    # (~2^-22 relative per product) and keeps float32 accumulation, so it should sit near the 2e-5 the IEEE
    # float32 interpreter runs meet; 5x that leaves room for the longer sums at N = 1000 but stays 100x below
    # one pass of TF32 (~1e-3) or bfloat16 (3e-2 above). Not yet run on a GPU: unverified.
    from lrpe.kernels.function import fused_lrpe_linear_attention

    core = LinearAttentionCore(64, feature_map=feature_map, positional=kind, causal=causal, impl="quadratic").cuda()
    gen = torch.Generator(device="cuda").manual_seed(64 + causal)
    q, k, v = (torch.randn(1, 2, 1000, 64, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    out = fused_lrpe_linear_attention(q, k, v, core.positional, causal=causal, offset=60000,
                                      segment_chunks=segment_chunks, feature_map=feature_map)
    assert out.dtype == torch.float32
    ref = core(q.double(), k.double(), v.double(), offset=60000)
    grad = torch.randn(ref.shape, device="cuda", generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.float())
    want = torch.autograd.grad(ref, (q, k, v), grad)
    _assert_relative_errors((out, *got), (ref, *want), 1e-4)
    unitary = LinearAttentionCore(64, positional="unitary", impl="quadratic").cuda()
    with pytest.raises(ValueError, match="float32 on a GPU takes LRPE kinds"):
        fused_lrpe_linear_attention(q, k, v, unitary.positional)


@on_gpu
def test_auto_keeps_the_torch_path_on_cuda_and_triton_opts_in():
    # Until a GPU run has checked the kernels (lrpe.kernels.dispatch.AUTO_TAKES_FUSED), "auto" is the chunked
    # torch path on CUDA; impl="triton" takes the kernels.
    from lrpe.kernels.dispatch import AUTO_REASON, AUTO_TAKES_FUSED, unsupported_reason
    from lrpe.kernels.function import fused_lrpe_linear_attention

    assert not AUTO_TAKES_FUSED
    auto = LinearAttentionCore(64, positional="orthogonal", impl="auto").cuda()
    q, k, v = (torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert unsupported_reason(auto, q, k, v, 0, has_state=False, forced=False) == AUTO_REASON
    chunked = LinearAttentionCore(64, positional="orthogonal", impl="chunked").cuda()
    torch.testing.assert_close(auto(q, k, v), chunked(q, k, v), rtol=0, atol=0)
    forced = LinearAttentionCore(64, positional="orthogonal", impl="triton").cuda()
    torch.testing.assert_close(forced(q, k, v), fused_lrpe_linear_attention(q, k, v, forced.positional),
                               rtol=0, atol=0)


@on_gpu
@pytest.mark.parametrize("normalize", [False, True])
def test_functional_auto_is_chunked_on_cuda_and_triton_takes_the_kernels(normalize):
    from lrpe import LinearAttention, linear_attention
    from lrpe.kernels.dispatch import fused_numerator

    q, k = (torch.rand(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
    assert fused_numerator(q, k, v, causal=True, chunk_size=64, has_state=False, forced=False) is None
    num = fused_numerator(q, k, v, causal=True, chunk_size=64, has_state=False, forced=True)
    torch.testing.assert_close(linear_attention(q, k, v, normalize=normalize),  # impl="auto" is the default
                               linear_attention(q, k, v, normalize=normalize, impl="chunked"), rtol=0, atol=0)
    got = linear_attention(q, k, v, normalize=normalize, impl="triton")
    want = linear_attention(q.double(), k.double(), v.double(), normalize=normalize, impl="quadratic")
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 3e-2
    if not normalize:
        torch.testing.assert_close(got, num, rtol=0, atol=0)
    layer = LinearAttention(128, 2, positional="orthogonal").cuda().bfloat16()  # impl="auto" by default
    x = torch.randn(1, 300, 128, device="cuda", dtype=torch.bfloat16)
    for impl in ("chunked", "triton"):
        other = LinearAttention(128, 2, positional="orthogonal", impl=impl).cuda().bfloat16()
        other.load_state_dict(layer.state_dict())
        if impl == "chunked":
            torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        else:
            assert ((layer(x) - other(x)).abs().max() / layer(x).abs().max()).item() < 3e-2
