"""Feature maps phi for linear attention (docs/math.md section 1), applied elementwise to q and k.

``1 + elu(x)`` (name "elu1", alias "1+elu") is the default of Katharopoulos et al. 2020 and keeps every
feature positive; "relu", "silu" and "identity" are the common alternatives. Every map keeps the shape and
the dtype of its input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FeatureMap = Callable[[Tensor], Tensor]


class _Elu1(torch.autograd.Function):
    """``1 + elu(x) = exp(min(x, 0)) + max(x, 0)``, with derivative ``min(y, 1)`` read off the output y.

    Why not ``F.elu(x) + 1``: on CPU, aten::elu costs about 1.6x ``clamp, exp, relu, add`` together
    (one thread, float32, (16, 4, 128, 32): 0.70 ms against 0.45 ms, forward; forward and backward 1.15
    against 0.87 ms; docs/fairness.md), and it is shared by every linear variant, so the saving is fair.
    The derivative is exp(x) = y for x <= 0 and 1 for x > 0, and y <= 1 exactly when x <= 0, so
    ``min(y, 1)``: 1 at x = 0, as elu's. Saving y, not x: the cores keep phi(q), phi(k) anyway.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.clamp(x, max=0.0).exp_().add_(torch.relu(x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * y.clamp(max=1.0)


def elu1(x: Tensor) -> Tensor:
    """``1 + elu(x)``: positive features, the linear-transformer default. Same shape and dtype as x."""
    return _Elu1.apply(x)


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``."""
    return F.relu(x)


def silu(x: Tensor) -> Tensor:
    """``x * sigmoid(x)``."""
    return F.silu(x)


def identity(x: Tensor) -> Tensor:
    """``x`` unchanged (the features are the projections themselves)."""
    return x


FEATURE_MAPS: dict[str, FeatureMap] = {"elu1": elu1, "relu": relu, "silu": silu, "identity": identity}
"""Canonical name -> feature map."""

_ALIASES: dict[str, str] = {"1+elu": "elu1"}


def get_feature_map(name_or_callable: str | FeatureMap) -> FeatureMap:
    """The feature map named ``name_or_callable`` (a key of FEATURE_MAPS or an alias), or the callable itself.

    Raises ValueError naming the unknown name and the allowed ones.
    """
    if callable(name_or_callable):
        return name_or_callable
    name = _ALIASES.get(name_or_callable, name_or_callable)
    if name not in FEATURE_MAPS:
        allowed = sorted([*FEATURE_MAPS, *_ALIASES])
        raise ValueError(f"unknown feature map {name_or_callable!r}; allowed: {allowed} or a callable")
    return FEATURE_MAPS[name]
