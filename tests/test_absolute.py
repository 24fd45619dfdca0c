"""Sinusoidal APE and NoPE: known values, shapes, offsets and errors."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.absolute import NoPE, SinusoidalAPE, sinusoidal_embedding


def test_known_values_at_positions_zero_and_one() -> None:
    # d_model = 4, base 10000: theta = (1, 10000^(-1/2)) = (1, 0.01).
    table = sinusoidal_embedding(2, 4, dtype=torch.float64)
    expected = torch.tensor(
        [[0.0, 1.0, 0.0, 1.0], [math.sin(1.0), math.cos(1.0), math.sin(0.01), math.cos(0.01)]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-15)
    assert table[1, 0].item() == pytest.approx(0.8414709848078965)
    assert table[1, 3].item() == pytest.approx(0.9999500004166653)


def test_base_sets_the_frequencies() -> None:
    table = sinusoidal_embedding(2, 4, base=100.0, dtype=torch.float64)
    expected = torch.tensor([math.sin(0.1), math.cos(0.1)], dtype=torch.float64)
    torch.testing.assert_close(table[1, 2:], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("d_model", [1, 6, 7, 64])
def test_shape_dtype_and_odd_width(d_model: int) -> None:
    table = sinusoidal_embedding(10, d_model, dtype=torch.bfloat16)
    assert table.shape == (10, d_model) and table.dtype == torch.bfloat16
    reference = sinusoidal_embedding(10, d_model, dtype=torch.float64)
    torch.testing.assert_close(table.to(torch.float64), reference, rtol=1e-2, atol=1e-2)
    # Every coordinate is a sine (even) or a cosine (odd) of the same angle grid: sin^2 + cos^2 = 1 per pair.
    pairs = reference[:, : 2 * (d_model // 2)].reshape(10, -1, 2)
    torch.testing.assert_close((pairs**2).sum(-1), torch.ones(10, d_model // 2, dtype=torch.float64))
    assert sinusoidal_embedding(0, d_model).shape == (0, d_model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offset_equals_slicing_a_longer_table(dtype: torch.dtype) -> None:
    longer = sinusoidal_embedding(300, 32, dtype=dtype)
    shifted = sinusoidal_embedding(20, 32, offset=250, dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(shifted, longer[250:270], rtol=0, atol=atol)
    assert not torch.allclose(shifted, longer[:20])


def test_float32_table_at_offset_60000_is_float64_accurate() -> None:
    # float32 angles p * theta near p = 60000 are off by up to 6.6e-3 rad; the table must not be
    offset, d_model, n = 60_000, 64, 50
    table = sinusoidal_embedding(n, d_model, offset=offset, dtype=torch.float32)
    theta = 10000.0 ** (-torch.arange(d_model // 2, dtype=torch.float64) * 2 / d_model)
    angle = torch.arange(offset, offset + n, dtype=torch.float64)[:, None] * theta
    truth = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)
    error = (table.to(torch.float64) - truth).abs().max().item()
    assert error < 1e-6, error
    angle32 = torch.arange(offset, offset + n, dtype=torch.float32)[:, None] * theta.float()
    naive = torch.stack((angle32.sin(), angle32.cos()), dim=-1).flatten(-2)
    assert (naive.to(torch.float64) - truth).abs().max().item() > 1e-3  # the recipe this replaces


def test_ape_adds_the_table_and_follows_the_offset() -> None:
    x = torch.randn(2, 12, 16)
    ape = SinusoidalAPE(16)
    out = ape(x, offset=5)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, x + sinusoidal_embedding(12, 16, offset=5), rtol=0, atol=0)
    torch.testing.assert_close(ape(x)[:, 5:], (x + sinusoidal_embedding(17, 16)[None, :12])[:, 5:])
    assert not torch.allclose(ape(x), out)


def test_ape_keeps_low_precision_dtype() -> None:
    x = torch.zeros(1, 3, 8, dtype=torch.bfloat16)
    out = SinusoidalAPE(8)(x, offset=1000)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[0].float(), sinusoidal_embedding(3, 8, offset=1000), rtol=1e-2, atol=1e-2)


def test_nope_is_the_identity() -> None:
    x = torch.randn(2, 5, 8)
    assert NoPE()(x, offset=3) is x
    assert NoPE(8)(x) is x


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: sinusoidal_embedding(-1, 8), "-1"),
        (lambda: sinusoidal_embedding(4, 0), "0"),
        (lambda: SinusoidalAPE(0), "0"),
        (lambda: SinusoidalAPE(8, base=-2.0), "-2.0"),
        (lambda: SinusoidalAPE(8)(torch.randn(2, 5, 6)), "(2, 5, 6)"),
        (lambda: SinusoidalAPE(8)(torch.randn(5, 8)), "(5, 8)"),
        (lambda: NoPE(8)(torch.randn(2, 5, 6)), "(2, 5, 6)"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(call, named: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert named in str(info.value)


def test_ape_reuses_its_table_only_for_the_same_length_offset_and_dtype() -> None:
    """The cached table is the one a fresh computation gives, for every (N, offset, dtype) in turn, and it
    is built once per distinct key (counted), and it stays out of the state dict."""
    import baselines.absolute as absolute

    ape = SinusoidalAPE(12)
    built: list[tuple[int, int]] = []
    original = absolute.sinusoidal_embedding

    def counting(n, d_model, **kwargs):
        built.append((n, kwargs["offset"]))
        return original(n, d_model, **kwargs)

    g = torch.Generator().manual_seed(0)
    calls = [(5, 0, torch.float32), (5, 0, torch.float32), (7, 0, torch.float32), (7, 3, torch.float32),
             (7, 3, torch.float64), (7, 3, torch.float64), (5, 0, torch.float32)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(absolute, "sinusoidal_embedding", counting)
        for n, offset, dtype in calls:
            x = torch.randn(2, n, 12, generator=g, dtype=torch.float64).to(dtype)
            want = x + original(n, 12, offset=offset, dtype=dtype)
            torch.testing.assert_close(ape(x, offset), want, rtol=0, atol=0)
    assert built == [(5, 0), (7, 0), (7, 3), (7, 3), (5, 0)]
    assert list(ape.state_dict()) == []
