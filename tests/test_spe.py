"""SPE: the Monte-Carlo identity against the exact oracle, kernels, reproducibility, widths, linear memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import baselines.spe as spe_module
from baselines.spe import ConvSPE, SineSPE, _fft_length

H, D, N, R = 2, 4, 8, 16
DRAWS = 2000
Z_LIMIT = 5.0  # standard errors: a false alarm per entry has probability ~6e-7


def _make(kind: str, gated: bool, *, seed: int = 0, num_realizations: int = R) -> SineSPE | ConvSPE:
    """A small module whose parameters give a clearly position-dependent, asymmetric kernel."""
    torch.manual_seed(seed)
    if kind == "sine":
        spe = SineSPE(H, D, num_sines=3, num_realizations=num_realizations, gated=gated)
        with torch.no_grad():
            spe.freq.normal_()  # frequencies of 0.1 to 0.4 cycles per token: visible within N = 8
    else:
        spe = ConvSPE(H, D, kernel_size=3, num_realizations=num_realizations, gated=gated)
        with torch.no_grad():
            spe.query_filter.normal_()
            spe.key_filter.normal_()
    if gated:
        with torch.no_grad():
            spe.gate.normal_(-1.0, 1.0)  # sigma spread around 0.27: both terms of the oracle matter
    return spe


def _qk(seed: int = 1, n: int = N, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, n, D, generator=g, dtype=dtype)
    return q, torch.randn(1, H, n, D, generator=g, dtype=dtype)


def _monte_carlo(spe, q, k, draws: int = DRAWS, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of q^_m . k^_n over seeded draws and its standard error (from the draws' own spread)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws_qk = (spe(q, k, generator=g) for _ in range(draws))
        samples = torch.stack([q_hat @ k_hat.mT for q_hat, k_hat in draws_qk])
    return samples.mean(0), samples.std(0) / math.sqrt(draws)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_monte_carlo_mean_matches_expected_dot(kind: str, gated: bool) -> None:
    spe, (q, k) = _make(kind, gated), _qk()
    mean, se = _monte_carlo(spe, q, k)
    with torch.no_grad():
        expected = spe.expected_dot(q, k)
        # Not vacuous: the tolerance rejects the kernel read the wrong way round, P(n - m) for P(m - n).
        reversed_kernel = spe.expected_dot(k, q).mT
    assert ((mean - expected).abs() <= Z_LIMIT * se).all()
    assert ((mean - reversed_kernel).abs() > Z_LIMIT * se).any()


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_saturated_gate_makes_the_expectation_position_independent(kind: str) -> None:
    spe, (q, k) = _make(kind, gated=True), _qk()
    with torch.no_grad():
        spe.gate.fill_(30.0)  # sigma = 1 - 1e-13
        expected = spe.expected_dot(q, k)
        ungated = copy.deepcopy(spe)
        ungated.gate = None
        positional = ungated.expected_dot(q, k)
    torch.testing.assert_close(expected, math.sqrt(R / D) * q @ k.mT, rtol=1e-9, atol=1e-9)
    mean, se = _monte_carlo(spe, q, k)
    assert ((mean - expected).abs() <= Z_LIMIT * se).all()
    assert ((mean - positional).abs() > Z_LIMIT * se).any()


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_expected_dot_equals_the_explicit_sum(kind: str) -> None:
    spe, (q, k) = _make(kind, gated=True), _qk(n=5)
    with torch.no_grad():
        got = spe.expected_dot(q, k)
        sigma = spe.sigma()
        for m in range(5):
            for n in range(5):
                weight = (1 - sigma) * spe.kernel([m - n])[..., 0] + sigma  # (H, D)
                want = math.sqrt(R / D) * (q[0, :, m] * k[0, :, n] * weight).sum(-1)
                torch.testing.assert_close(got[0, :, m, n], want, rtol=1e-12, atol=1e-12)


def test_sine_kernel_formula() -> None:
    spe = SineSPE(1, 1, num_sines=1, gated=False)
    with torch.no_grad():
        spe.freq.fill_(0.0)  # f = 1/4 cycle per token
        spe.phase.fill_(0.5)
        spe.gain.fill_(0.0)  # softplus -> lambda = log 2
        got = spe.kernel([0, 1, -3])[0, 0]
    cosines = [math.cos(0.5), math.cos(math.pi / 2 + 0.5), math.cos(-3 * math.pi / 2 + 0.5)]
    want = torch.tensor(cosines, dtype=torch.float64) * math.log(2) ** 2 / 2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_conv_kernel_is_the_cross_correlation_with_support_below_kernel_size() -> None:
    size = 5
    spe = ConvSPE(2, 3, kernel_size=size, gated=False)
    deltas = list(range(-2 * size, 2 * size + 1))
    with torch.no_grad():
        table = spe.kernel(deltas)
        a, b = spe.query_filter.double(), spe.key_filter.double()
    assert table.shape == (2, 3, len(deltas))
    for i, delta in enumerate(deltas):
        want = sum((a[..., j] * b[..., j + delta] for j in range(size) if 0 <= j + delta < size),
                   torch.zeros(2, 3, dtype=torch.float64))
        torch.testing.assert_close(table[..., i], want, rtol=0, atol=1e-12)
    outside = torch.tensor([abs(delta) >= size for delta in deltas])
    assert (table[..., outside] == 0).all()
    assert (table[..., deltas.index(size - 1)] != 0).all() and (table[..., deltas.index(1 - size)] != 0).all()


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_generator_makes_draws_reproducible(kind: str) -> None:
    spe, (q, k) = _make(kind, gated=True), _qk(dtype=torch.float32)
    first = spe(q, k, generator=torch.Generator().manual_seed(7))
    again = spe(q, k, generator=torch.Generator().manual_seed(7))
    other = spe(q, k, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    spe.generator = torch.Generator().manual_seed(7)  # the module's generator is the default
    assert all(torch.equal(x, y) for x, y in zip(spe(q, k), first, strict=True))
    spe.generator = None  # unseeded: fresh codes at every call
    assert not torch.equal(spe(q, k)[0], spe(q, k)[0])


def test_sine_codes_follow_the_offset_when_reseeded() -> None:
    spe, (q, k) = _make("sine", gated=True), _qk()
    full = spe(q, k, generator=torch.Generator().manual_seed(3))
    for t in range(N):
        one_token = (q[:, :, t : t + 1], k[:, :, t : t + 1])
        step = spe(*one_token, offset=t, generator=torch.Generator().manual_seed(3))
        for whole, one in zip(full, step, strict=True):
            torch.testing.assert_close(one, whole[:, :, t : t + 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["sine", "conv"])
@pytest.mark.parametrize("realizations", [1, 7, 32])
def test_output_width_and_dtype(kind: str, realizations: int) -> None:
    spe = _make(kind, gated=True, num_realizations=realizations)
    q, k = _qk(dtype=torch.bfloat16)
    q_hat, k_hat = spe(torch.cat((q, q)), torch.cat((k, k)))
    assert q_hat.shape == k_hat.shape == (2, H, N, realizations)
    assert q_hat.dtype == k_hat.dtype == torch.bfloat16
    # Codes are shared across the batch: equal rows in, equal codes out.
    assert torch.equal(q_hat[0], q_hat[1])


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_parameters_learn_even_with_a_saturated_gate(kind: str) -> None:
    spe, (q, k) = _make(kind, gated=True), _qk(dtype=torch.float32)
    with torch.no_grad():
        spe.gate[0].fill_(30.0)
    q_hat, k_hat = spe(q, k, generator=torch.Generator().manual_seed(0))
    (q_hat * k_hat).sum().backward()
    for name, param in spe.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_forward_memory_is_linear_in_n(kind: str) -> None:
    torch.manual_seed(0)
    spe = SineSPE(1, 2, num_sines=2, num_realizations=4) if kind == "sine" else ConvSPE(
        1, 2, kernel_size=8, num_realizations=4)
    largest = {}
    for n in (1024, 2048):
        q = torch.randn(1, 1, n, 2)
        with torch.no_grad(), _LargestTensor() as mode:
            spe(q, q)
        largest[n] = mode.numel
    assert largest[1024] >= 1024 * 4  # the mode saw the (B, H, N, R) outputs
    assert largest[1024] < 1024 * 1024 // 16  # nothing near N x N
    assert largest[2048] <= 2.1 * largest[1024]


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: SineSPE(2, 4, num_sines=0), "num_sines"),
        (lambda: SineSPE(2, 4, num_realizations=0), "num_realizations"),
        (lambda: ConvSPE(2, 4, kernel_size=0), "kernel_size"),
        (lambda: ConvSPE(2, 4, num_realizations=-3), "-3"),
        (lambda: SineSPE(0, 4), "num_heads"),
        (lambda: SineSPE(2, 4)(torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4)), "H=3"),
        (lambda: ConvSPE(2, 4)(torch.randn(1, 2, 5, 6), torch.randn(1, 2, 5, 6)), "D=6"),
        (lambda: SineSPE(2, 4)(torch.randn(2, 5, 4), torch.randn(2, 5, 4)), "(2, 5, 4)"),
        (lambda: SineSPE(2, 4)(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4)), "(1, 2, 6, 4)"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(call, named: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert named in str(info.value)


# ---- the fast paths against float64 oracles written out from the docstrings' formulas ---------------------


def _explicit_codes(spe: SineSPE | ConvSPE, n: int, offset: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Qbar, Kbar (H, D, N, R) float64 from the formulas, with the noise drawn in the module's order."""
    g = torch.Generator().manual_seed(seed)
    h, d, r = spe.num_heads, spe.head_dim, spe.num_realizations
    m = torch.arange(offset, offset + n, dtype=torch.float64)
    if isinstance(spe, SineSPE):
        s = spe.num_sines
        z = torch.randn(h, d, 2 * s, r, generator=g, dtype=torch.float64) / math.sqrt(2 * s)
        f, gain, phase = spe._parameters64()
        angle = 2 * math.pi * f[:, :, None, :] * m[:, None]  # (H, D, N, K)
        codes = []
        for shift in (phase[:, :, None, :], 0.0):
            a = angle + shift
            features = torch.cat((gain[:, :, None] * a.cos(), gain[:, :, None] * a.sin()), -1)
            codes.append(torch.einsum("hdns,hdsr->hdnr", features, z))
    else:
        size = spe.kernel_size
        length = _fft_length(n + size - 1)
        # One (H, R, L) draw per feature d, in order.
        w = torch.stack([torch.randn(h, r, length, generator=g, dtype=torch.float64) for _ in range(d)], 1)
        taps = (torch.arange(n)[:, None] + torch.arange(size)[None, :]) % length  # (N, k): m + j mod L
        windows = w[..., taps]  # (H, D, R, N, k)
        codes = [torch.einsum("hdrnj,hdj->hdnr", windows, filt.double())
                 for filt in (spe.query_filter, spe.key_filter)]
    eps = torch.randn(h, d, r, generator=g, dtype=torch.float64) if spe.gate is not None else None
    return codes[0], codes[1], eps


def _oracle(spe: SineSPE | ConvSPE, q: torch.Tensor, k: torch.Tensor, offset: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """SPE's forward written out: sum_d x_d (sqrt(1 - sigma) Qbar_d + sqrt(sigma) eps_d) (R D)^(-1/4)."""
    qbar, kbar, eps = _explicit_codes(spe, q.shape[2], offset, seed)
    outs = []
    for x, codes in ((q, qbar), (k, kbar)):
        if spe.gate is None:
            out = torch.einsum("bhnd,hdnr->bhnr", x, codes)
        else:
            sigma = torch.sigmoid(spe.gate.double())  # (H, D)
            mixed = (1 - sigma).sqrt()[:, :, None, None] * codes + sigma.sqrt()[:, :, None, None] * eps[:, :, None]
            out = torch.einsum("bhnd,hdnr->bhnr", x, mixed)
        outs.append(out * (spe.num_realizations * spe.head_dim) ** -0.25)
    return outs[0], outs[1]


@pytest.mark.parametrize("kind", ["sine", "conv"])
@pytest.mark.parametrize(("batch", "n", "offset", "gated", "block_elements"), [
    (1, 9, 0, True, None),  # sine: R = 16 >= 2K B = 6, the (x feature) product path
    (6, 9, 5, True, None),  # sine: R < 2K B, the codes path
    (3, 130, 17, False, None),
    (6, 200, 3, True, 64 * 40),  # tiny blocks: several along N (sine), along D (conv), a partial last one
    (1, 200, 1000, False, 64 * 40),
    (2, 40, 0, True, 3 * 2 * H * R * 45),  # conv: blocks of 3 and 1 features (D = 4, L = 45)
])
def test_forward_and_gradients_match_the_float64_oracle(kind, batch, n, offset, gated, block_elements,
                                                        monkeypatch) -> None:
    if block_elements is not None:
        monkeypatch.setattr(spe_module, "_BLOCK_ELEMENTS", block_elements)
    spe = _make(kind, gated).double()
    g = torch.Generator().manual_seed(11 + n)
    q = torch.randn(batch, H, n, D, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, H, n, D, generator=g, dtype=torch.float64, requires_grad=True)
    grads = [torch.randn(batch, H, n, R, generator=g, dtype=torch.float64) for _ in range(2)]
    params = [q, k, *spe.parameters()]

    got = spe(q, k, offset=offset, generator=torch.Generator().manual_seed(5))
    want = _oracle(spe, q, k, offset, seed=5)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    got_grads = torch.autograd.grad(got, params, grads)
    want_grads = torch.autograd.grad(want, params, grads)
    for param, x, y in zip(params, got_grads, want_grads, strict=True):
        assert y.abs().max() > 0, param.shape  # every parameter matters: the comparison is not vacuous
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_sine_paths_agree_in_float32() -> None:
    """The product path (B = 1) and the codes path (B = 8) give each batch row the same result."""
    spe = _make("sine", gated=True)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, H, 300, D, generator=g), torch.randn(8, H, 300, D, generator=g)
    batched = spe(q, k, generator=torch.Generator().manual_seed(1))
    single = spe(q[3:4], k[3:4], generator=torch.Generator().manual_seed(1))
    for x, y in zip(batched, single, strict=True):
        torch.testing.assert_close(x[3:4], y, rtol=1e-4, atol=1e-4)
