"""Feature maps: values against their formulas, names and aliases, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrpe import FEATURE_MAPS, get_feature_map

FORMULAS = {
    "elu1": lambda x: 1.0 + torch.where(x > 0, x, torch.exp(x) - 1.0),
    "relu": lambda x: torch.clamp(x, min=0.0),
    "silu": lambda x: x / (1.0 + torch.exp(-x)),
    "identity": lambda x: x,
}


def _x(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_the_four_maps_are_registered() -> None:
    assert set(FEATURE_MAPS) == set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_map_matches_its_formula_and_keeps_shape_and_dtype(name: str) -> None:
    x = _x()
    out = get_feature_map(name)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, FORMULAS[name](x), rtol=0, atol=1e-12)


def test_elu1_is_positive_and_its_alias_is_the_same_map() -> None:
    # Positive while exp(x) survives 1 + (exp(x) - 1) in float64, i.e. for x above about -36.
    x = _x() * 5
    assert (get_feature_map("elu1")(x) > 0).all()
    assert get_feature_map("1+elu") is get_feature_map("elu1")


def test_elu1_does_not_modify_its_input_and_has_the_right_gradient() -> None:
    x = _x().requires_grad_()
    before = x.detach().clone()
    get_feature_map("elu1")(x).sum().backward()
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.where(before > 0, 1.0, torch.exp(before)), rtol=0, atol=1e-12)


def test_callable_passes_through() -> None:
    def square(x: torch.Tensor) -> torch.Tensor:
        return x * x

    assert get_feature_map(square) is square
    assert get_feature_map(F.gelu) is F.gelu


def test_unknown_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown feature map 'softplus'.*'1\+elu'.*'elu1'.*'identity'"):
        get_feature_map("softplus")
