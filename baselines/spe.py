"""Stochastic positional encoding (SPE; Liutkus et al., ICML 2021), docs/math.md section 4.

SPE draws random codes Qbar_d(m, .) and Kbar_d(n, .) of R realisations per head h and feature d, whose
expected product is a learned stationary kernel: ``E[sum_r Qbar_d(m, r) Kbar_d(n, r)] ∝ P_d(m - n)``.
Applying them, ``q^_m[r] = sum_d q_md Qbar_d(m, r)`` and ``k^_n[r] = sum_d k_nd Kbar_d(n, r)``, turns
(B, H, N, D) queries and keys into (B, H, N, R) ones whose dot product is, in expectation, a relative-position
attention score; a linear attention (feature map included) then runs on q^, k^ unchanged. Nothing of size
N x N is formed, so time and memory stay linear in N.

With gating, each code is mixed with a position-independent noise shared by queries and keys,
``Qbar <- sqrt(1 - sigma) Qbar + sqrt(sigma) eps``, ``sigma = sigmoid(g)`` per (h, d), and the oracle is

    E[q^_m . k^_n] = sqrt(R / D) sum_d q_md k_nd [(1 - sigma_d) P_d(m - n) + sigma_d]

(``expected_dot``; sigma = 0 when ungated). Codes are shared across the batch.

Randomness: the codes are drawn afresh at every call, in training and at evaluation alike, so two calls on
the same input differ. Pass a ``torch.Generator`` to ``forward`` (or set the module's ``generator``
attribute, used when none is passed) to make a run reproducible; a benchmark or evaluation must seed it and
say so. Reseeding before each call reproduces the same codes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrpe.checks import check_qk
from lrpe.rotation import angle_dtype, positions


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _fft_length(n: int) -> int:
    """The smallest integer >= n with no prime factor above 5: FFTs of such lengths are fast everywhere,
    while N + k - 1 for a power-of-two N is often 2^a times a large prime."""
    best = 1 << (n - 1).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35
            while length < n:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


# Rows of the (B, H, n, D, 2K) or (H, D, n, R) intermediates one block holds: about 4M floats (16 MB in
# float32), so at long N the intermediates stay a fixed size while the outputs grow.
_BLOCK_ELEMENTS = 1 << 22


def _block_rows(n: int, per_row: int, multiple: int = 64) -> int:
    """Rows per block for intermediates of ``per_row`` elements per row: all n when they fit, else a
    multiple of ``multiple`` (64: whole cache lines of positions), at least one multiple."""
    rows = max(multiple, (_BLOCK_ELEMENTS // max(per_row, 1)) // multiple * multiple)
    return n if rows >= n else rows


def apply_codes(x: Tensor, codes: Tensor) -> Tensor:
    """``out[b, h, n, r] = sum_d x[b, h, n, d] codes[h, n, d, r]``: x (B, H, N, D), codes (H, N, D, R) ->
    (B, H, N, R).

    One batched matmul over the (h, n) pairs, (B, D) @ (D, R) each: the codes are shared by the batch, so
    they are read once per position instead of once per batch row.
    """
    out = torch.matmul(x.permute(1, 2, 0, 3), codes)  # (H, N, B, R)
    return out.permute(2, 0, 1, 3)


class _SPE(nn.Module, ABC):
    """What sineSPE and convSPE share: input checks, noise, gating, applying the codes and the oracle.

    Subclasses provide ``kernel(delta)`` and ``_positional(q, k, offset, generator)``, which applies the
    ungated, unnormalised codes: ``sum_d q_md Qbar_d(m, r)`` and ``sum_d k_nd Kbar_d(n, r)``, each
    (B, H, N, R). The gate is applied here, by linearity: ``sum_d q_md (sqrt(1 - sigma_d) Qbar_d(m, r) +
    sqrt(sigma_d) eps_dr)`` is the positional part applied to ``sqrt(1 - sigma) q`` plus ``sqrt(sigma) q``
    times eps, so no gated copy of the codes is formed.
    """

    def __init__(self, num_heads: int, head_dim: int, num_realizations: int, gated: bool) -> None:
        super().__init__()
        _check_positive(num_heads=num_heads, head_dim=head_dim, num_realizations=num_realizations)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_realizations = num_realizations
        # Random gate, as the SPE authors' code starts it: heads and features begin with different mixes.
        self.gate = nn.Parameter(torch.randn(num_heads, head_dim)) if gated else None
        self.generator: torch.Generator | None = None

    def _check(self, q: Tensor, k: Tensor) -> None:
        check_qk(q, k)
        if q.shape[1] != self.num_heads:
            raise ValueError(f"expected {self.num_heads} heads, got H={q.shape[1]} in {tuple(q.shape)}")
        if q.shape[3] != self.head_dim:
            raise ValueError(f"expected head_dim {self.head_dim}, got D={q.shape[3]} in {tuple(q.shape)}")

    @staticmethod
    def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
               dtype: torch.dtype) -> Tensor:
        """Standard normal noise, drawn on the generator's device so a CPU generator also seeds GPU runs."""
        if generator is None:
            return torch.randn(shape, device=device, dtype=dtype)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)

    @staticmethod
    def _fill_noise(out: Tensor, generator: torch.Generator | None) -> None:
        """Fills ``out`` with standard normal noise, the same draws as ``_noise(out.shape, ...)``."""
        if generator is None or generator.device == out.device:
            out.normal_(generator=generator)
        else:
            out.copy_(torch.randn(out.shape, generator=generator, device=generator.device, dtype=out.dtype))

    def sigma(self) -> Tensor:
        """The gate sigma = sigmoid(g), (H, D) float64; zeros when ungated."""
        if self.gate is None:
            return torch.zeros(self.num_heads, self.head_dim, dtype=torch.float64)
        return torch.sigmoid(self.gate.to(torch.float64))

    @abstractmethod
    def kernel(self, delta: Tensor | list[int]) -> Tensor:
        """The stationary kernel P_d(delta) at offsets delta = m - n: (H, D, len(delta)), float64."""

    @abstractmethod
    def _positional(self, q: Tensor, k: Tensor, offset: int,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """q, k (B, H, N, D) in the compute dtype -> the ungated, unnormalised codes applied, (B, H, N, R)."""

    def forward(self, q: Tensor, k: Tensor, offset: int = 0,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """q, k: raw (not feature-mapped) queries and keys (B, H, N, D) at positions ``offset + arange(N)``.

        Returns (q^, k^), each (B, H, N, R), in the inputs' dtypes; codes are computed in float32 (float64 for
        float64 inputs). ``generator`` (else the ``generator`` attribute, else torch's global generator) draws
        the codes: fresh ones at every call, in training and evaluation alike, unless it is reseeded.
        """
        self._check(q, k)
        generator = generator if generator is not None else self.generator
        dtype = angle_dtype(q.dtype)
        qc, kc = q.to(dtype), k.to(dtype)
        if self.gate is None:
            q_hat, k_hat = self._positional(qc, kc, offset, generator)
        else:
            # sqrt(sigmoid(x)) as exp(logsigmoid(x) / 2): no 0 * inf gradient when the gate saturates.
            gate = self.gate.to(dtype)[:, None, :]  # (H, 1, D)
            keep = torch.exp(0.5 * F.logsigmoid(-gate))
            mix = torch.exp(0.5 * F.logsigmoid(gate))
            q_hat, k_hat = self._positional(qc * keep, kc * keep, offset, generator)
            # One position-independent noise (H, D, R), shared by queries and keys.
            shape = (self.num_heads, self.head_dim, self.num_realizations)
            eps = self._noise(shape, generator, q.device, dtype)
            q_hat = q_hat + (qc * mix) @ eps
            k_hat = k_hat + (kc * mix) @ eps
        scale = (self.num_realizations * self.head_dim) ** -0.25
        return (q_hat * scale).to(q.dtype), (k_hat * scale).to(k.dtype)

    def expected_dot(self, q: Tensor, k: Tensor) -> Tensor:
        """The exact oracle E[q^_m . k^_n] over the codes, (B, H, N, N) float64, for q, k (B, H, N, D).

        ``sqrt(R / D) sum_d q_md k_nd [(1 - sigma_d) P_d(m - n) + sigma_d]``; builds N x N, for tests only.
        """
        self._check(q, k)
        n = q.shape[2]
        table = self.kernel(torch.arange(-(n - 1), n))
        sigma = self.sigma().to(table.device)[..., None]
        mixed = (1 - sigma) * table + sigma  # (H, D, 2N - 1)
        idx = torch.arange(n, device=table.device)
        per_pair = mixed[:, :, idx[:, None] - idx[None, :] + n - 1]  # (H, D, N, N), entry [m, n] at m - n
        dots = torch.einsum("bhmd,bhnd,hdmn->bhmn", q.to(torch.float64), k.to(torch.float64), per_pair)
        return math.sqrt(self.num_realizations / self.head_dim) * dots


def _join(blocks: list[Tensor]) -> Tensor:
    """Blocks along N (dim 2), without a copy when there is one."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)


class SineSPE(_SPE):
    """sineSPE: per (h, d), a kernel that is a sum of K learned sinusoids.

    ``P_d(delta) = (1 / 2K) sum_k lambda_dk^2 cos(2 pi f_dk delta + theta_dk)`` with frequencies
    ``f = sigmoid(param) / 2`` in (0, 1/2) cycles per token, query-side phases theta (radians) and gains
    ``lambda = softplus(param)``. Codes use Gaussian noise Z (H, D, 2K, R) of variance 1/(2K):
    ``Qbar[m] = [lambda cos(2 pi f m + theta), lambda sin(2 pi f m + theta)] Z`` and
    ``Kbar[n] = [lambda cos(2 pi f n), lambda sin(2 pi f n)] Z`` (before the (R D)^(-1/4) scale).
    Z does not depend on N, so with a generator reseeded identically, a call at ``offset=t`` reproduces row t
    of a full-sequence call (decoding). The paper's code uses K = 5..10, R = 32..64.
    """

    def __init__(self, num_heads: int, head_dim: int, *, num_sines: int = 10, num_realizations: int = 64,
                 gated: bool = True) -> None:
        _check_positive(num_sines=num_sines)
        super().__init__(num_heads, head_dim, num_realizations, gated)
        self.num_sines = num_sines
        shape = (num_heads, head_dim, num_sines)
        # sigmoid(-4 +- 1) / 2 gives periods of about 40 to 300 tokens: mostly slow sinusoids, so the kernel
        # starts smooth over the distances a model first learns from.
        self.freq = nn.Parameter(torch.randn(shape) - 4.0)
        self.phase = nn.Parameter(torch.randn(shape))
        # Gains normalised per (h, d) as in the SPE authors' code: g * 2 / sqrt(|g|), |g| over the K sines.
        gain = torch.randn(shape)
        self.gain = nn.Parameter(gain * 2 / gain.norm(dim=-1, keepdim=True).sqrt())

    def _parameters64(self) -> tuple[Tensor, Tensor, Tensor]:
        return (torch.sigmoid(self.freq.double()) / 2, F.softplus(self.gain.double()), self.phase.double())

    def kernel(self, delta: Tensor | list[int]) -> Tensor:
        f, gain, phase = self._parameters64()
        delta = torch.as_tensor(delta, dtype=torch.float64, device=f.device)
        angle = 2 * math.pi * f[..., None] * delta + phase[..., None]  # (H, D, K, L)
        return (gain[..., None] ** 2 * angle.cos()).sum(-2) / (2 * self.num_sines)

    def _positional(self, q: Tensor, k: Tensor, offset: int,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        h, d, s, r = self.num_heads, self.head_dim, self.num_sines, self.num_realizations
        b, n, dtype = q.shape[0], q.shape[2], q.dtype
        z = self._noise((h, d, 2 * s, r), generator, q.device, dtype) / math.sqrt(2 * s)
        f = 2 * math.pi * torch.sigmoid(self.freq.to(dtype)) / 2  # (H, D, K) radians per token
        gain = F.softplus(self.gain.to(dtype))
        phase = self.phase.to(dtype)
        # Two equal contractions, sum_(d, s) x_d feature_ds(n) Z_dsr. Through the codes: build
        # Qbar (H, D, n, R) = features @ Z once, then apply it to every batch row, 2 H D n R (2K + B) flops.
        # Through the product: (x_d feature_ds) as (B, H, n, D 2K) @ Z, 2 B H D n 2K R flops. The codes
        # cost fewer flops from B = 2 on; their intermediate (R per (h, n, d)) is the smaller one only when
        # R < 2K B. At B = 1 the product wins (a 1-row matmul per position is slow), so: codes iff R < 2K B.
        via_codes = r < 2 * s * b
        rows = _block_rows(n, h * d * r if via_codes else b * h * d * 2 * s)
        outs: tuple[list[Tensor], list[Tensor]] = ([], [])
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            pos = positions(stop - start, offset + start, device=q.device, dtype=dtype)
            for x, shift, out in ((q, phase, outs[0]), (k, None, outs[1])):
                if via_codes:
                    angle = f[:, :, None, :] * pos[:, None]  # (H, D, n, K)
                    if shift is not None:
                        angle = angle + shift[:, :, None, :]
                    features = torch.cat((gain[:, :, None] * angle.cos(), gain[:, :, None] * angle.sin()), -1)
                    codes = (features @ z).transpose(1, 2)  # (H, D, n, R) -> (H, n, D, R)
                    out.append(apply_codes(x[:, :, start:stop], codes))
                else:
                    angle = f[:, None] * pos[:, None, None]  # (H, n, D, K)
                    if shift is not None:
                        angle = angle + shift[:, None]
                    features = torch.cat((gain[:, None] * angle.cos(), gain[:, None] * angle.sin()), -1)
                    product = (x[:, :, start:stop, :, None] * features).flatten(-2)  # (B, H, n, D 2K)
                    out.append(product @ z.flatten(1, 2))
        return _join(outs[0]), _join(outs[1])

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, num_sines={self.num_sines}, "
                f"num_realizations={self.num_realizations}, gated={self.gate is not None}")


class ConvSPE(_SPE):
    """convSPE: per (h, d), a kernel that is the cross-correlation of two learned filters of length k.

    White noise w per (h, d, r) is filtered by the query filter a and the key filter b,
    ``Qbar[m] = sum_j a_j w[m + j]``, ``Kbar[n] = sum_j b_j w[n + j]``, so
    ``P_d(delta) = sum_j a_j b_{j + delta}``, zero for |delta| >= k. The filtering runs as a circular FFT
    correlation over a length L >= N + k - 1, O(N log N) per channel (``_positional`` says why exact).
    The codes are stationary draws over the window: ``offset`` does not change
    their distribution, and a call at ``offset=t`` does not reproduce row t of a longer call (the noise
    depends on N). The paper's code uses k = 128.
    """

    def __init__(self, num_heads: int, head_dim: int, *, kernel_size: int = 128, num_realizations: int = 64,
                 gated: bool = True) -> None:
        _check_positive(kernel_size=kernel_size)
        super().__init__(num_heads, head_dim, num_realizations, gated)
        self.kernel_size = kernel_size
        # Positive filters U[0, 1) / sqrt(k / 2), as the SPE authors' code starts them: the starting kernel
        # (their cross-correlation) is positive and peaks at delta = 0, a smooth bias towards nearby tokens.
        shape = (num_heads, head_dim, kernel_size)
        self.query_filter = nn.Parameter(torch.rand(shape) / math.sqrt(kernel_size / 2))
        self.key_filter = nn.Parameter(torch.rand(shape) / math.sqrt(kernel_size / 2))

    def kernel(self, delta: Tensor | list[int]) -> Tensor:
        k = self.kernel_size
        a, b = self.query_filter.double(), self.key_filter.double()
        # windows[..., i, j] = b[j + i - (k - 1)] (zero outside the filter): row i holds delta = i - (k - 1).
        windows = F.pad(b, (k - 1, k - 1)).unfold(-1, k, 1)  # (H, D, 2k - 1, k)
        table = (windows * a[..., None, :]).sum(-1)  # (H, D, 2k - 1)
        delta = torch.as_tensor(delta, dtype=torch.long, device=a.device)
        inside = delta.abs() < k
        values = table[..., (delta + k - 1).clamp(0, 2 * k - 2)]
        return torch.where(inside, values, torch.zeros((), dtype=values.dtype, device=values.device))

    def _positional(self, q: Tensor, k: Tensor, offset: int,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        h, n, d, r, size = self.num_heads, q.shape[2], self.head_dim, self.num_realizations, self.kernel_size
        dtype = q.dtype
        # Circular white noise of length L >= N + k - 1, filtered circularly: Qbar[m] = sum_j a_j w[(m + j)
        # mod L] for m < N. Every pair of taps (m + j, n + j') that meets modulo L meets exactly, since
        # |m - n + j - j'| <= N + k - 2 < L, so all second moments, hence the Gaussian codes' joint law, are
        # those of the linear filtering of infinite white noise (class docstring).
        length = _fft_length(n + size - 1)
        filters = torch.stack((self.query_filter, self.key_filter)).to(dtype)  # (2, H, D, k)
        # Correlation with the filter is a product with its conjugate spectrum; both filters in one pass.
        response = torch.fft.rfft(filters, n=length).conj()[:, :, :, None]  # (2, H, D, 1, F)
        # Features d in blocks, so that at long N the noise and codes of a block (2 H R L per feature) stay
        # about _BLOCK_ELEMENTS and the outputs accumulate; one block at training lengths. The noise is drawn
        # one feature at a time, so a seeded call gives the same codes whatever the blocking.
        width = _block_rows(d, 2 * h * r * length, multiple=1)
        q_hat = k_hat = None
        for start in range(0, d, width):
            stop = min(d, start + width)
            noise = torch.empty((stop - start, h, r, length), device=q.device, dtype=dtype)
            for row in noise:
                self._fill_noise(row, generator)
            spectrum = torch.fft.rfft(noise)  # (d block, H, R, F)
            block = response[:, :, start:stop].transpose(1, 2)  # (2, d block, H, 1, F)
            codes = torch.fft.irfft(spectrum * block, n=length)[..., :n]  # (2, d block, H, R, N)
            codes = codes.permute(0, 2, 4, 1, 3)  # (2, H, N, d block, R)
            q_part = apply_codes(q[..., start:stop], codes[0])
            k_part = apply_codes(k[..., start:stop], codes[1])
            q_hat = q_part if q_hat is None else q_hat + q_part
            k_hat = k_part if k_hat is None else k_hat + k_part
        return q_hat, k_hat

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}, "
                f"num_realizations={self.num_realizations}, gated={self.gate is not None}")
