"""The byte LM: every preset variant builds and runs; FlashAttention (SDPA) + RoPE equals softmax + RoPE;
the linear cores' training and evaluation forms agree; bad names fail with the name."""

from __future__ import annotations

import math

import pytest
import torch

from bench.extrapolation.model import ByteLM, ModelConfig, linear_impl, lm_loss
from bench.extrapolation.spec import load_extrap_spec

QUICK_VARIANTS = load_extrap_spec("extrap-quick").variants
TINY = {"n_layers": 2, "d_model": 32, "n_heads": 2}


def _tokens(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(seed))


def test_the_quick_preset_covers_the_eleven_variants() -> None:
    assert len(QUICK_VARIANTS) == 11
    pes = {name.split("@")[0] for name in QUICK_VARIANTS}
    assert {"softmax-ape", "softmax", "softmax-rope", "flash-rope", "linear", "linear-rope", "linear-spe-sine",
            "linear-spe-conv", "linear-lrpe-unitary", "linear-lrpe-orthogonal", "linear-lrpe-permutation"} == pes


@pytest.mark.parametrize("variant", QUICK_VARIANTS)
def test_every_variant_trains_a_step(variant: str) -> None:
    model = ByteLM(ModelConfig(variant, **TINY))
    tokens = _tokens(2, 33)
    logits = model(tokens[:, :-1])
    assert logits.shape == (2, 32, 256)
    loss = lm_loss(logits, tokens[:, 1:])
    assert abs(float(loss.detach()) - math.log(256)) < 0.5  # small init: near the uniform model
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    linear = variant.startswith("linear")
    assert any(isinstance(m, torch.nn.RMSNorm) for m in model.modules()) == linear  # norm-after the heads
    assert (model.ape is not None) == ("-ape" in variant)


def test_flash_rope_equals_softmax_rope() -> None:
    flash = ByteLM(ModelConfig("flash-rope@sdpa-flash", **TINY))
    softmax = ByteLM(ModelConfig("softmax-rope@naive", **TINY))
    assert all(torch.equal(a, b) for a, b in zip(flash.state_dict().values(), softmax.state_dict().values(),
                                                 strict=True))
    tokens = _tokens(2, 49, seed=1)
    outs = []
    for model in (flash, softmax):
        logits = model(tokens[:, :-1])
        lm_loss(logits, tokens[:, 1:]).backward()
        outs.append((logits, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for g_flash, g_softmax in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(g_flash, g_softmax, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["linear-lrpe-unitary@torch-chunked", "linear-rope@torch-chunked"])
def test_linear_training_form_equals_the_chunked_form(variant: str) -> None:
    model = ByteLM(ModelConfig(variant, **TINY)).double()
    tokens = _tokens(2, 150, seed=2)  # not a multiple of the chunk
    chunked = model(tokens)
    with linear_impl(model, "quadratic"):
        quadratic = model(tokens)
    torch.testing.assert_close(quadratic, chunked, rtol=1e-10, atol=1e-10)
    assert all(m.impl == "chunked" for m in model.modules() if hasattr(m, "impl"))  # restored


def test_unknown_variant_names_it() -> None:
    with pytest.raises(ValueError, match="linear-nope@chunky"):
        ModelConfig("linear-nope@chunky")


def test_spe_starts_as_the_authors_code() -> None:
    from baselines.spe import ConvSPE, SineSPE

    k = 16
    conv = ConvSPE(2, 8, kernel_size=k, num_realizations=4)
    bound = 1 / math.sqrt(k / 2)
    for f in (conv.query_filter.detach(), conv.key_filter.detach()):
        assert float(f.min()) >= 0 and float(f.max()) < bound and float(f.max()) > bound / 2
    assert (conv.kernel([0]) > 0).all()  # a positive starting kernel
    assert float(conv.gate.detach().std()) > 0.5  # random, not a constant
    torch.manual_seed(3)
    sine = SineSPE(2, 8, num_sines=5, num_realizations=4)
    torch.manual_seed(3)
    torch.randn(2, 8)  # the gate is drawn first, then frequencies, phases and gains
    freq, phase, gain = (torch.randn(2, 8, 5) for _ in range(3))
    torch.testing.assert_close(sine.freq.data, freq - 4.0)
    torch.testing.assert_close(sine.phase.data, phase)
    torch.testing.assert_close(sine.gain.data, gain * 2 / gain.norm(dim=-1, keepdim=True).sqrt())
