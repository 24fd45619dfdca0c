"""SPE: the Monte-Carlo identity against the exact oracle, kernels, reproducibility, widths, linear memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from baselines.spe import ConvSPE, SineSPE

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
