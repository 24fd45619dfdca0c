"""No forward of a positional encoding makes a tensor off the input's device, and none syncs with the host.

On CPU the check runs every op of the forward under a TorchDispatchMode with the module and its inputs on the
"meta" device: an index or table built on the host (``torch.arange(n)`` then ``.to(device)``) shows up as an
op with a CPU tensor among its arguments or results, which on a GPU is a blocking host-to-device copy inside
the timed region. The meta device has no data, so nothing the forward does can hide behind a CPU fallback,
and a host sync (``.item()``, ``.tolist()``, a data-dependent shape) raises there.
On CUDA the same forwards run under ``torch.cuda.set_sync_debug_mode("error")``, which raises at any
synchronising call (a blocking copy, ``.item()``, ``nonzero``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from baselines.absolute import SinusoidalAPE
from baselines.rope import RoPE
from baselines.spe import ConvSPE, SineSPE
from bench.config import BenchConfig
from bench.registry import all_variants
from lrpe import LRPE, P_CHOICES

B, H, N, D = 2, 3, 70, 8


class DeviceRecorder(TorchDispatchMode):
    """Records every aten op run inside it with the devices of its tensor arguments and results."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        self.ops.append((str(func), devices))
        return out

    def off_device(self, device: str) -> list[str]:
        return [f"{op} touched {sorted(devices)}" for op, devices in self.ops if devices - {device}]


def lrpe_modules() -> list[tuple[str, nn.Module]]:
    out = []
    for kind in ("unitary", "orthogonal", "permutation"):
        for p in P_CHOICES:
            out.append((f"lrpe-{kind}-{p}", LRPE(kind, D, p=p)))
            out.append((f"lrpe-{kind}-{p}-per-head", LRPE(kind, D, p=p, num_heads=H, theta="learned")))
    return out


POSITIONAL = [*lrpe_modules(), ("rope-half", RoPE(D, layout="half")),
              ("rope-interleaved", RoPE(D, layout="interleaved"))]


def linear_variants() -> list[str]:
    return [name for name, v in all_variants().items() if v.family == "linear" and v.backend == "torch-chunked"]


def run_recorded(call) -> DeviceRecorder:
    recorder = DeviceRecorder()
    with recorder:
        call()
    assert recorder.ops, "nothing was recorded: the check would pass vacuously"
    return recorder


@pytest.mark.parametrize("name, module", POSITIONAL, ids=[name for name, _ in POSITIONAL])
def test_positional_forward_stays_on_the_input_device(name: str, module: nn.Module) -> None:
    module = module.to("meta")
    x = torch.randn(B, H, N, D, device="meta")
    recorder = run_recorded(lambda: module(x, 60_000))
    assert recorder.off_device("meta") == []


@pytest.mark.parametrize("spe", [SineSPE(H, D, num_sines=3, num_realizations=16),
                                 ConvSPE(H, D, kernel_size=16, num_realizations=16)], ids=["sine", "conv"])
def test_spe_forward_stays_on_the_input_device(spe: nn.Module) -> None:
    spe = spe.to("meta")
    q, k = (torch.randn(B, H, N, D, device="meta") for _ in range(2))
    recorder = run_recorded(lambda: spe(q, k, 5))
    assert recorder.off_device("meta") == []


def test_sinusoidal_ape_stays_on_the_input_device() -> None:
    x = torch.randn(B, N, 16, device="meta")
    recorder = run_recorded(lambda: SinusoidalAPE(16)(x, 60_000))
    assert recorder.off_device("meta") == []


@pytest.mark.parametrize("name", linear_variants())
def test_linear_variant_forward_and_backward_stay_on_the_input_device(name: str) -> None:
    """The whole attention core the sweep times (SPE, phi, positions, chunked attention), fwd and bwd."""
    config = BenchConfig(variant=name, n=N, d=D, heads=H, batch=B, dtype="float32")
    core = all_variants()[name].build(config).to("meta")
    q, k, v = (torch.randn(B, H, N, D, device="meta", requires_grad=True) for _ in range(3))
    recorder = run_recorded(lambda: core(q, k, v, 7).sum().backward())
    assert recorder.off_device("meta") == []


def test_the_recorder_catches_a_host_built_index() -> None:
    # the pattern the permutation LRPE had: positions made on the host, then moved to the module's device
    table = torch.randn(N, D, device="meta")
    recorder = run_recorded(lambda: table[torch.arange(N).to("meta")])
    assert any("arange" in op for op in recorder.off_device("meta"))


needs_cuda = pytest.mark.needs_gpu  # skipped without CUDA by tests/conftest.py


@needs_cuda
@pytest.mark.parametrize("name, module", POSITIONAL, ids=[name for name, _ in POSITIONAL])
def test_cuda_positional_forward_does_not_sync(name: str, module: nn.Module) -> None:
    module = module.to("cuda")
    x = torch.randn(B, H, N, D, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module(x, 60_000)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("name", linear_variants())
def test_cuda_linear_variant_forward_does_not_sync(name: str) -> None:
    config = BenchConfig(variant=name, n=N, d=D, heads=H, batch=B, dtype="float32", device="cuda")
    core = all_variants()[name].build(config)
    q, k, v = (torch.randn(B, H, N, D, device="cuda") for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            core(q, k, v, 7)
    finally:
        torch.cuda.set_sync_debug_mode("default")
