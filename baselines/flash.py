"""The FlashAttention family, each backend forced: it runs its named kernel or says why it cannot.

Backends (:data:`FLASH_BACKENDS`):

- ``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``: PyTorch SDPA with one kernel enabled
  (``baselines.sdpa``);
- ``flash-attn2``, ``flash-attn3``, ``flash-attn4``: the flash-attention packages
  (``baselines.flash_attn_pkg``);
- ``xformers-cutlass``, ``xformers-flash``, ``xformers-flash3``, ``xformers-triton``: xformers'
  ``memory_efficient_attention`` with one operator family (``baselines.xformers_ops``);
- ``flex``: compiled FlexAttention with a cached causal block mask (``baselines.flex``).

Each computes ``softmax(Q K^T / sqrt(D) + mask) V`` (docs/math.md section 5) and must equal the oracle
``baselines.softmax.softmax_attention`` within its dtype's tolerance (:func:`float_tolerance`).

The registry's interface: :func:`availability` (can it run on this machine at all), :func:`unsupported_reason`
(can it take this head dim, dtype, device, causal flag: decided by running a tiny input under the forced
kernel and keeping the warnings and error torch gives), :func:`build_flash` (the attention core). Reasons are
plain text without a status word; the suite adds "unavailable" / "unsupported". Only a missing package or
device, or a refusal the kernel documents (each backend's ``refusals``), is a reason: any other exception
raised while probing propagates, so that the suite records an error instead of hiding a bug as a limit.
Nothing here ever swaps one kernel for another: a core raises when its kernel refuses an input.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import nn

from baselines import flash_attn_pkg, flex, sdpa, xformers_ops
from baselines.flash_common import BackendSpec, FlashCore, failure_text
from baselines.refusal import is_refusal

_SPECS: dict[str, BackendSpec] = {
    spec.name: spec for spec in (*sdpa.SPECS, *flash_attn_pkg.SPECS, *xformers_ops.SPECS, *flex.SPECS)
}
FLASH_BACKENDS: tuple[str, ...] = tuple(_SPECS)

# (atol, rtol) of a kernel's output against the float32 (float64 for float64) oracle on the same inputs:
# the output's own rounding (bf16 keeps 8 significant bits, fp16 11) plus the kernels' reduced-precision
# P @ V; float32 allows for kernels that accumulate tile by tile in a different order.
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-4, 1e-4),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (2e-2, 1.6e-2),
}

# the tiny input of every probe: batch 1, 2 heads, the backend's probe lengths
_PROBE_BATCH, _PROBE_HEADS, _PROBE_HEAD_DIM = 1, 2, 64


def float_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for a kernel's output in ``dtype`` against the float32 oracle, as in assert_close."""
    if dtype not in _TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; known: {[str(d) for d in _TOLERANCES]}")
    return _TOLERANCES[dtype]


def _spec(backend: str) -> BackendSpec:
    if backend not in _SPECS:
        raise ValueError(f"unknown FlashAttention backend {backend!r}; allowed: {', '.join(FLASH_BACKENDS)}")
    return _SPECS[backend]


@cache
def availability(backend: str) -> str | None:
    """None when ``backend`` can run on this machine at all, else why not (no status word). Cached.

    First the cheap requirements (package imports, operator loads, hardware present), then one tiny run
    (head dim 64, non-causal; float16 on CUDA, float32 on CPU) on each device type it has kernels for and
    this machine has: it is available when one of them works, and unavailable when each refuses as its
    kernel documents (an old GPU, a missing compiler). For ``flex`` that run is a compilation (about 20 s in
    a fresh process on 2 CPU cores). Raises ValueError for an unknown backend, and whatever the probe raised
    when it failed in an undocumented way (a bug, not a reason; see the module docstring).
    """
    spec = _spec(backend)
    missing = spec.requirement()
    if missing is not None:
        return missing
    local = [d for d in spec.devices if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    failures = []
    for device in local:
        dtype = torch.float16 if device == "cuda" else torch.float32
        failure = _trial(spec, head_dim=_PROBE_HEAD_DIM, dtype=dtype, device=device, causal=False,
                         backward=False)
        if failure is None:
            return None
        failures.append(failure)
    return "; ".join(failures) or f"no device here for its kernels (they run on: {', '.join(spec.devices)})"


def unsupported_reason(
    backend: str,
    *,
    head_dim: int,
    dtype: torch.dtype | str,
    device: str | torch.device,
    causal: bool,
    backward: bool = False,
) -> str | None:
    """None when ``backend`` can take this config, else why not (no status word). Cached per arguments.

    Decided by running the forced kernel on tiny inputs (batch 1, 2 heads, N in the backend's probe lengths,
    v as wide as q) of ``head_dim``, ``dtype`` (a torch dtype or its name, e.g. "bfloat16"), on ``device``,
    with ``causal``; with ``backward`` also a backward pass (flex has none on CPU, xformers' Triton
    operator none at all). The reason is the config followed by the warnings and error torch (or the
    package) gave. When the backend is unavailable here, the availability reason is returned.
    Raises ValueError for an unknown backend or a malformed argument, and whatever the kernel raised when it
    is not one of the backend's documented refusals (a bug; the suite records it as an error).
    """
    spec = _spec(backend)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be an integer >= 1, got {head_dim!r}")
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name")
        dtype = named
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from exc
    return _unsupported(spec.name, head_dim, dtype, str(device), bool(causal), bool(backward))


@cache
def _unsupported(
    backend: str, head_dim: int, dtype: torch.dtype, device: str, causal: bool, backward: bool
) -> str | None:
    spec = _SPECS[backend]
    device_type = torch.device(device).type
    if device_type not in spec.devices:
        return f"{backend} has no kernel for device {device!r} (it runs on: {', '.join(spec.devices)})"
    missing = availability(backend)
    if missing is not None:
        return missing
    if device_type == "cuda" and not torch.cuda.is_available():
        return f"device {device!r} asked for, but torch.cuda.is_available() is False"
    return _trial(spec, head_dim=head_dim, dtype=dtype, device=device, causal=causal, backward=backward)


def _trial(
    spec: BackendSpec, *, head_dim: int, dtype: torch.dtype, device: str, causal: bool, backward: bool
) -> str | None:
    """Run the forced kernel on tiny random inputs; None when it gives finite output of the right shape
    and dtype at every probe length, the config and the kernel's words when it refuses as documented
    (``spec.refusals``). Any other exception propagates, and wrong output raises RuntimeError: both are bugs."""
    config = (f"{spec.name} with head_dim={head_dim}, dtype={str(dtype).removeprefix('torch.')}, "
              f"device={device}, causal={causal}{', backward' if backward else ''}")
    # a private generator: probing must not move the global RNG the suite seeds
    generator = torch.Generator().manual_seed(0)
    for n in spec.probe_lengths:
        shape = (_PROBE_BATCH, _PROBE_HEADS, n, head_dim)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                core = spec.make(causal=causal, positional=None)
                q, k, v = (
                    torch.randn(shape, generator=generator).to(device, dtype).requires_grad_(backward)
                    for _ in range(3)
                )
                with torch.set_grad_enabled(backward):
                    out = core(q, k, v)
                    if backward:
                        out.float().sum().backward()
            except Exception as exc:
                if is_refusal(exc, spec.refusals):
                    return f"{config}: {failure_text(exc, caught)}"
                raise
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise RuntimeError(f"{config}: returned {tuple(out.shape)} {out.dtype}, expected {shape} {dtype}")
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError(f"{config}: returned non-finite values at N={n} on finite random inputs")
    return None


def build_flash(backend: str, *, causal: bool = True, positional: nn.Module | None = None) -> FlashCore:
    """The attention core of ``backend``: forward(q, k, v, offset=0) with q, k (B, H, N, D), v (B, H, N, Dv)
    -> (B, H, N, Dv) in v's dtype, scale 1/sqrt(D); ``positional`` (x, offset) -> x is applied to q and k
    first. Raises ValueError for an unknown backend and RuntimeError when it is unavailable here; the core
    raises when its kernel refuses an input (see :func:`unsupported_reason`)."""
    missing = availability(backend)
    if missing is not None:
        raise RuntimeError(f"{backend} is unavailable: {missing}")
    return _SPECS[backend].make(causal=causal, positional=positional)
