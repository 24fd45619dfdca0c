"""Feature maps phi for linear attention (docs/math.md section 1), applied elementwise to q and k.

``1 + elu(x)`` (name "elu1", alias "1+elu") is the default of Katharopoulos et al. 2020 and keeps every
feature positive; "relu", "silu" and "identity" are the common alternatives. Every map keeps the shape and
the dtype of its input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

FeatureMap = Callable[[Tensor], Tensor]


def elu1(x: Tensor) -> Tensor:
    """``1 + elu(x)``: positive features, the linear-transformer default."""
    # In place on elu's fresh output saves one full-size allocation; elu's backward keeps its input, not its
    # output, so autograd is unaffected.
    return F.elu(x).add_(1.0)


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
