"""Linearized Relative Positional Encoding (LRPE, arXiv 2307.09270; docs/math.md section 2).

A token at position s with (already feature-mapped) features x becomes ``M_s x = Lambda^s P x``, so the
score of query s and key t is ``(M_s q)^T (M_t k) = q^T W_{t-s} k`` with ``W_r = P^T Lambda^r P``: a relative
encoding that any linear-attention algorithm can use unchanged on the transformed features.

Kinds (the real form of Lambda):
- "unitary": Lambda = diag(exp(i theta_j)), j < D, realised by doubling the width:
  ``concat(x' cos(theta s), x' sin(theta s))`` with x' = P x, so ``W_r = P^T diag(cos(theta r)) P``.
- "orthogonal": block-diagonal rotation of the interleaved pairs (2i, 2i+1) by theta_i s, i < D/2 (RoPE
  applied after P); ``W_r = P^T R(r) P``. D must be even.
- "permutation": ``(Pi x)_j = x_{pi(j)}`` for a fixed random permutation pi; ``W_r = P^T Pi^r P``. Pi^s is
  computed for any integer s from the cycle decomposition of pi, so no length limit exists.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lrpe.attention import FrameCarry
from lrpe.checks import check_pair
from lrpe.pmatrix import P_CHOICES, make_p
from lrpe.rotation import angle_dtype, inverse_frequencies, position_phasors, rotate_interleaved

KINDS: tuple[str, ...] = ("unitary", "orthogonal", "permutation")
THETA_CHOICES: tuple[str, ...] = ("fixed", "learned")
SPACINGS: tuple[str, ...] = ("paper", "rope-range")
# Rows of the pi^r table of the permutation kind, and of a block of its in-place gather: 1024 rows x D = 64
# is 512 KiB of int64 indices, and a block of q (H = 4) 1 MiB, both cache-sized.
_PERMUTATION_TABLE_ROWS = 1024
FRAME_ROWS = 512
"""Default frame length of ``LRPE.frame_pair``: its table of pi^r, r < 512, is 256 KiB of int64 per head, and
a 64k-token sequence has 128 frames, so the carries between them (one (Dk, Dv) row gather per head each) stay
far below the features' gather. (Per (1, 4, 16384, 64) tensor, one thread, one gather by a broadcast table of
16-1,024 rows measured 3.1-3.5 ms, with no trend in the table's length.)"""


def _choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {list(allowed)}")


def unitary_frequencies(head_dim: int, base: float, spacing: str) -> Tensor:
    """The D angles of LRPE-unitary, float64 (D,).

    "paper": ``theta_j = base^(-2j/D)`` for j < D, the paper's code; the upper half of the coordinates gets
    angles below base^-1 and carries almost no position. "rope-range": ``theta_j = base^(-j/D)``, the same
    range [base^-1, 1] that RoPE's D/2 angles span, sampled twice as densely, so every coordinate rotates.
    """
    _choice("spacing", spacing, SPACINGS)
    span = head_dim if spacing == "paper" else 2 * head_dim
    return inverse_frequencies(head_dim, span, base)


def _cycle_tables(perm: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Cycle decomposition of a permutation of range(D), as four lists of length D.

    ``members`` lists the cycles one after another, each as j, pi(j), pi(pi(j)), ...; coordinate j sits at
    ``members[start[j] + pos[j]]`` in a cycle of length ``length[j]``, so
    ``pi^m(j) = members[start[j] + (pos[j] + m) mod length[j]]`` for every integer m.
    """
    d = len(perm)
    members: list[int] = []
    start, pos, length = [0] * d, [0] * d, [0] * d
    seen = [False] * d
    for j in range(d):
        if seen[j]:
            continue
        cycle = []
        i = j
        while not seen[i]:
            seen[i] = True
            cycle.append(i)
            i = perm[i]
        for place, i in enumerate(cycle):
            start[i], pos[i], length[i] = len(members), place, len(cycle)
        members.extend(cycle)
    return members, start, pos, length


class LRPE(nn.Module):
    """LRPE transform of feature-mapped queries or keys: ``x~_s = Lambda^s P x_s``.

    Args:
        kind: "unitary", "orthogonal" or "permutation".
        head_dim: D, the width of the features it receives.
        p: the P matrix, one of P_CHOICES ("identity", "householder", "householder-learned", "oddeven").
        theta: "fixed" (a buffer) or "learned" (an nn.Parameter initialised to the same values); ignored by
            "permutation". Frequencies are ``base^(-2j/D)``: j < D/2 for orthogonal, and for unitary as
            ``spacing`` says.
        base: frequency base, 10000 by default.
        num_heads: None shares every parameter across heads; an int H gives each head its own learned theta
            (equal at initialisation; a fixed theta stays shared, being equal anyway), Householder v and
            permutation (independent draws), and the input must then be (..., H, N, D).
        seed: seeds the Householder vector and the permutation.
        spacing: unitary only: "paper" (default, the paper's one angle per coordinate, ``base^(-2j/D)`` for
            j < D) or "rope-range" (``base^(-j/D)``); see ``unitary_frequencies``.

    forward(x, offset=0): x (..., N, D) -> (..., N, D'), D' = 2D for unitary and D otherwise, in x's dtype;
    token n is at position ``offset + n``. Angles are computed in float64 and the transform in float32
    (float64 for float64 input), whatever the input dtype. Keep the module in float32 or float64:
    ``.half()`` would round theta itself.
    """

    def __init__(self, kind: str, head_dim: int, *, p: str = "identity", theta: str = "fixed",
                 base: float = 10000.0, num_heads: int | None = None, seed: int = 0,
                 spacing: str = "paper") -> None:
        super().__init__()
        _choice("kind", kind, KINDS)
        _choice("p", p, P_CHOICES)
        _choice("theta", theta, THETA_CHOICES)
        _choice("spacing", spacing, SPACINGS)
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        if kind == "orthogonal" and head_dim % 2:
            raise ValueError(f"orthogonal LRPE rotates pairs and needs an even head_dim, got {head_dim}")
        self.kind, self.head_dim, self.num_heads = kind, head_dim, num_heads
        self.p_name, self.theta_mode, self.spacing = p, theta, spacing
        self.p = make_p(p, head_dim, num_heads=num_heads, seed=seed)
        if kind == "permutation":
            self._init_permutation(seed)
        else:
            freqs = unitary_frequencies(head_dim, base, spacing) if kind == "unitary" else (
                inverse_frequencies(head_dim // 2, head_dim, base))
            freqs = freqs.to(torch.float32)
            if num_heads is not None and theta == "learned":
                # Per head only when learned: fixed angles are equal across heads, and one shared table of
                # phasors is H times smaller to build per call.
                freqs = freqs.expand(num_heads, -1).clone()
            if theta == "learned":
                self.theta = nn.Parameter(freqs)
            else:
                self.register_buffer("theta", freqs)

    def _init_permutation(self, seed: int) -> None:
        """Draw pi (one per head when per head) and store it with its cycle tables as long buffers."""
        gen = torch.Generator().manual_seed(seed)
        heads = 1 if self.num_heads is None else self.num_heads
        perms = [torch.randperm(self.head_dim, generator=gen) for _ in range(heads)]
        tables = [_cycle_tables(pi.tolist()) for pi in perms]
        columns = [perms] + [[torch.tensor(t[i], dtype=torch.long) for t in tables] for i in range(4)]
        names = ("perm", "cycle_members", "cycle_start", "cycle_pos", "cycle_length")
        for name, rows in zip(names, columns, strict=True):
            # Shape (D,) shared or (H, D) per head, like every other parameter.
            table = torch.stack(rows) if self.num_heads is not None else rows[0]
            # Persistent, tables included, so that a loaded state cannot pair one pi with another's cycles.
            self.register_buffer(name, table)

    @property
    def out_dim(self) -> int:
        """Width of the output features: 2D for unitary, D otherwise."""
        return 2 * self.head_dim if self.kind == "unitary" else self.head_dim

    def permutation_index(self, s: Tensor) -> Tensor:
        """``pi^s(j)`` for every position in s (N,) long: (N, D), or (H, N, D) per head.

        So that ``(Pi^s x)_j = x[idx[s, j]]``. Exact for any int64 s, negative or huge.
        """
        if self.kind != "permutation":
            raise ValueError(f"permutation_index needs kind 'permutation', this LRPE is {self.kind!r}")
        s = s.to(device=self.cycle_pos.device, dtype=torch.long)[:, None]
        start, pos, length = self.cycle_start, self.cycle_pos, self.cycle_length
        if self.num_heads is not None:
            start, pos, length, s = start[:, None], pos[:, None], length[:, None], s[None]
        flat = start + torch.remainder(pos + s, length)
        members = self.cycle_members
        if self.num_heads is None:
            return members[flat]
        return torch.gather(members[:, None, :].expand_as(flat), -1, flat)

    def permutation_period(self) -> int:
        """The order of pi (of every head's pi together): the least T > 0 with pi^T = identity, the lcm of the
        cycle lengths. pi^s depends on s mod T only."""
        if self.kind != "permutation":
            raise ValueError(f"permutation_period needs kind 'permutation', this LRPE is {self.kind!r}")
        return math.lcm(*set(self.cycle_length.flatten().tolist()))

    def _periodic_rows(self, offset: int, count: int) -> int | None:
        """Rows R of a block whose index ``pi^(offset + r)``, r < R, serves every block of rows (R a multiple
        of the period, at most ``_PERMUTATION_TABLE_ROWS``), or None when the period is longer than that."""
        if self.cycle_length.is_meta:  # no values to read the period from (shape propagation)
            return None
        period = self.permutation_period()
        if period > _PERMUTATION_TABLE_ROWS:
            return None
        return min(count, period * (_PERMUTATION_TABLE_ROWS // period))

    def _permutation_table(self, rows: int) -> Tensor:
        """``permutation_index(arange(rows))`` with a head dim always: (1 or H, rows, D)."""
        table = self._permutation_table_at(0, rows)
        return table[None] if self.num_heads is None else table

    def _permutation_table_at(self, offset: int, rows: int, sign: int = 1) -> Tensor:
        """``permutation_index(sign * (offset + arange(rows)))``: (rows, D), or (H, rows, D) per head."""
        positions = torch.arange(offset, offset + rows, device=self.cycle_pos.device)
        return self.permutation_index(positions if sign > 0 else -positions)

    def _gather_rows(self, x: Tensor, out: Tensor, offset: int, sign: int) -> None:
        """``out[..., s, j] = x[..., s, pi^(sign * (offset + s))(j)]`` block by block of rows, from one block's
        int64 index built once, so that no index of x's size exists. ``out`` may be x: each block is gathered
        into a block-sized buffer first.

        When the period is short, every block is a whole number of periods and one gather by the block's
        index does it. Otherwise each block of rows from s0 takes two gathers, by pi^(sign r) (the shared
        block index) and by pi^(sign s0) (one row, broadcast), since pi^(s0 + r) = pi^(s0) o pi^r. Two
        float gathers cost less than composing the block's int64 index (a gather of twice the bytes) and then
        gathering once; both write into one block-sized buffer made once per call. Per (1, 4, 16384, 64)
        tensor, one thread, in the timing regime (``bench.measure.allocator``): 8.8 ms, against 9.7-10.5 with
        the composed index; the two gathers alone take 6.4 ms and a single gather by a prebuilt index of x's
        size 3.5 ms, against 0.8-1.1 ms for LRPE-orthogonal's rotation in place. (A shared pi of D = 64 from
        seed 0 has period 63; the registry's per-head pis together have 3,423,420 at 4 heads.)"""
        n = x.shape[-2]
        periodic = self._periodic_rows(offset, n)
        step = min(n, periodic if periodic is not None else _PERMUTATION_TABLE_ROWS)
        table = self._permutation_table_at(offset if periodic is not None else 0, step, sign)
        buffer = x.new_empty((*x.shape[:-2], step, x.shape[-1]))
        for first in range(0, n, step):
            rows = slice(first, min(n, first + step))
            block, into = x[..., rows, :], out[..., rows, :]
            count = rows.stop - rows.start
            idx, scratch = table[..., :count, :].expand(block.shape), buffer[..., :count, :]
            if periodic is None:  # pi^(sign r) first, then pi^(sign s0): (1, D) or (H, 1, D), broadcast
                torch.gather(block, -1, idx, out=scratch)
                block, idx = scratch, self._permutation_table_at(offset + first, 1, sign).expand(block.shape)
            if block is scratch or out is not x:
                torch.gather(block, -1, idx, out=into)
            else:  # in place with one gather: through the buffer
                into.copy_(torch.gather(block, -1, idx, out=scratch))

    def _permutation_rows(self, offset: int, rows: slice, table: Tensor) -> Tensor:
        """``permutation_index`` of the positions ``offset + arange(rows.start, rows.stop)``: (R, D), or
        (H, R, D) per head, given ``table = _permutation_table(block)``.

        Built as ``pi^(s0 + r)(j) = pi^r(pi^s0(j))``: the table of pi^r for r < block and pi^s0 at each block
        start s0 combine by one gather of int64 indices, instead of the remainder and the three indexings per
        entry of ``permutation_index`` (measured 4-5x faster at N = 64k).
        """
        heads, block, d = table.shape
        count = rows.stop - rows.start
        starts = self.permutation_index(torch.arange(offset + rows.start, offset + rows.stop, block,
                                                     device=table.device))
        starts = starts[None] if self.num_heads is None else starts  # (1 or H, blocks, D)
        blocks = starts.shape[1]
        idx = torch.gather(table[:, None].expand(heads, blocks, block, d), -1,
                           starts[:, :, None, :].expand(heads, blocks, block, d))
        idx = idx.reshape(heads, blocks * block, d)[:, :count]
        return idx[0] if self.num_heads is None else idx

    def _check_input(self, x: Tensor) -> None:
        if not x.is_floating_point():
            raise ValueError(f"x must have a floating dtype, got {x.dtype}")
        min_dim = 2 if self.num_heads is None else 3
        if x.dim() < min_dim or x.shape[-1] != self.head_dim:
            want = "(..., N, D)" if self.num_heads is None else "(..., H, N, D)"
            raise ValueError(f"x must have shape {want} with D = head_dim = {self.head_dim}, "
                             f"got {tuple(x.shape)}")
        if self.num_heads is not None and x.shape[-3] != self.num_heads:
            raise ValueError(
                f"x must have H = num_heads = {self.num_heads} at dim -3, got shape {tuple(x.shape)}"
            )

    def position_factors(self, n: int, offset: int, dtype: torch.dtype) -> Tensor:
        """Lambda^s for the positions s = offset + arange(n), in the form ``transform`` takes.

        unitary: cos and sin, (n, 2, D) (per head (H, n, 2, D)); orthogonal: the complex phasors
        exp(i theta_j s), (n, D/2) (per head (H, n, D/2)), both from ``rotation.position_phasors``;
        permutation: the index pi^s(j), (n, D) long (per head (H, n, D)). ``dtype`` is the compute dtype
        (float32 or float64). Computing them once and applying
        them to q and to k halves the trigonometry (``forward_pair``).
        """
        if self.kind == "permutation":
            rows = self._periodic_rows(offset, n)
            if rows is not None:  # one period's rows, repeated (a copy, no index arithmetic per entry)
                base = self._permutation_table_at(offset, rows)  # (rows, D) or (H, rows, D)
                return base.repeat(*[1] * (base.dim() - 2), -(-n // rows), 1)[..., :n, :]
            table = self._permutation_table(min(n, _PERMUTATION_TABLE_ROWS))
            return self._permutation_rows(offset, slice(0, n), table)
        phasors = position_phasors(self.theta, n, offset, dtype)
        if self.kind == "orthogonal":
            return phasors
        # (..., n, F, 2) (cos, sin) viewed as (..., n, 2, F): no copy.
        return torch.view_as_real(phasors).transpose(-1, -2)

    def transform(self, x: Tensor, factors: Tensor | int, *, inplace: bool = False) -> Tensor:
        """``Lambda^s P x_s`` with the factors of ``position_factors``: x (..., N, D) -> (..., N, D').
        The permutation also takes the offset (an int) instead of its index: then the index is built block by
        block and its backward permutes the gradient back (``_PermuteRows``), saving nothing of x's size.

        inplace: the caller gives up x (a temporary it owns, outside autograd), so the orthogonal rotation
        may overwrite it instead of allocating a new tensor; the other kinds change the width or gather and
        ignore it.
        """
        self._check_input(x)
        xp = self.p(x.to(angle_dtype(x.dtype)))
        if self.kind == "permutation" and isinstance(factors, int):  # the offset: forward and forward_pair
            out = _PermuteRows.apply(xp, self, factors)
        elif self.kind == "permutation":
            out = torch.gather(xp, -1, factors.expand(xp.shape))
        elif self.kind == "orthogonal":
            out = rotate_interleaved(xp, factors, inplace=inplace)
        else:
            # (..., N, 1, D) * (N, 2, D): the cos half then the sin half in one product, then a free reshape.
            out = (xp.unsqueeze(-2) * factors).flatten(-2)
        return out.to(x.dtype)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        self._check_input(x)
        return self.transform(x, self._factors(x.shape[-2], offset, angle_dtype(x.dtype)))

    def _factors(self, n: int, offset: int, dtype: torch.dtype) -> Tensor | int:
        """What ``transform`` takes from ``forward``: the position factors, except for the permutation, which
        takes the offset and builds its index block by block (``_PermuteRows``)."""
        return offset if self.kind == "permutation" else self.position_factors(n, offset, dtype)

    def forward_pair(self, q: Tensor, k: Tensor, offset: int = 0, *, inplace: bool = False) -> tuple[Tensor, Tensor]:
        """``(forward(q, offset), forward(k, offset))`` for q, k of one shape, computing Lambda^s once.

        inplace: q and k are temporaries the caller gives up (see ``transform``)."""
        check_pair(q, k)
        self._check_input(q)
        if self.kind == "permutation" and inplace:
            return self._permute_pair_in_place(q, k, offset)
        factors = self._factors(q.shape[-2], offset, angle_dtype(q.dtype))
        return self.transform(q, factors, inplace=inplace), self.transform(k, factors, inplace=inplace)

    def frame_pair(self, q: Tensor, k: Tensor, rows: int = FRAME_ROWS) -> tuple[Tensor, Tensor, FrameCarry]:
        """Permutation kind: q, k (..., N, D) as ``Pi^(n - b) P x_n`` for row n of the frame of ``rows`` rows
        that starts at row b, with the ``FrameCarry`` that ``lrpe.linear_attention`` needs to read them.

        Every score inside a frame equals that of ``forward_pair``'s features, and the carry takes a state
        from one frame to the next (``Pi^(-rows)`` on its rows), so the causal numerator is unchanged, for any
        offset (LRPE scores depend on t - s only). Why: one table of pi^r, r < rows, serves every frame in
        one ``torch.gather`` per tensor, where the global features need pi^s for every position s (two gathers
        per block of rows when pi's order exceeds a block; docs/fairness.md). Outputs are new tensors in q's
        dtype; the backward gathers by pi^(-r) and saves nothing of q's size.
        """
        if self.kind != "permutation":
            raise ValueError(f"frame_pair needs kind 'permutation', this LRPE is {self.kind!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be an int >= 1, got {rows!r}")
        check_pair(q, k)
        self._check_input(q)
        table, back, index, inverse = self._frame_tables(rows)
        n = q.shape[-2]
        table, back = table[..., :n, :], back[..., :n, :]  # a sequence shorter than one frame
        compute = angle_dtype(q.dtype)
        qp, kp = (_FrameGather.apply(self.p(x.to(compute)), table, back).to(x.dtype) for x in (q, k))
        return qp, kp, FrameCarry(rows, index, inverse)

    def _frame_tables(self, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What ``frame_pair`` needs for frames of ``rows`` rows: ``permutation_index`` of ``arange(rows)`` and
        of ``-arange(rows)``, each (rows, D) or (H, rows, D), and pi^(-rows) and pi^rows, each (D,) or (H, D).

        Kept from the last call while the cycle buffers stay the same tensors, unchanged (a load or ``.to()``
        changes them), as an APE keeps its table: at 4 heads x 512 rows x D = 64 they hold 2 MiB, and building
        them costs 1.3 ms (one thread), a fifth of the two gathers of (1, 4, 16384, 64) q and k they serve."""
        buffers = (self.cycle_members, self.cycle_start, self.cycle_pos, self.cycle_length)
        # Inference tensors (a module built under torch.inference_mode) keep no version counter: never cached.
        key = None if any(t.is_inference() for t in buffers) else (
            rows, *((t.device, t.data_ptr(), t._version) for t in buffers))
        cached = self.__dict__.get("_frame_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        steps = self.permutation_index(torch.tensor([-rows, rows], device=self.cycle_pos.device))
        tables = (self._permutation_table_at(0, rows), self._permutation_table_at(0, rows, -1),
                  steps[..., 0, :], steps[..., 1, :])
        if key is not None:
            self.__dict__["_frame_cache"] = (key, tables)
        return tables

    def _permute_pair_in_place(self, q: Tensor, k: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """``Pi^s P`` of q and k block by block of rows, each block gathered into a small temporary and copied
        back, so that, as the orthogonal rotation in place, nothing of q's size is made (a full per-head index
        is (H, N, D) int64, twice q's float32 bytes)."""
        compute = angle_dtype(q.dtype)
        qp, kp = self.p(q.to(compute)), self.p(k.to(compute))
        for x in (qp, kp):
            self._gather_rows(x, x, offset, 1)
        return qp.to(q.dtype), kp.to(k.dtype)

    def relative_matrix(self, r: int) -> Tensor:
        """W_r with ``forward(x)[s] . forward(y)[t] = x_s^T W_{t-s} y_t``: (D, D) float64, (H, D, D) per head.

        Built explicitly from P.matrix() and Lambda^r (unitary: diag(cos(theta r)); orthogonal: the block
        rotation R(r); permutation: Pi^r), as the oracle for tests. Not differentiable.
        """
        p = self.p.matrix().to(torch.float64)
        d = self.head_dim
        if self.kind == "permutation":
            idx = self.permutation_index(torch.tensor([r]))[..., 0, :].cpu()
            lam = torch.zeros((*idx.shape, d), dtype=torch.float64)
            lam.scatter_(-1, idx[..., None], 1.0)
        else:
            angle = self.theta.detach().to(device="cpu", dtype=torch.float64) * r
            if self.kind == "unitary":
                lam = torch.diag_embed(angle.cos())
            else:
                c, s = angle.cos(), angle.sin()
                lam = torch.zeros((*angle.shape[:-1], d, d), dtype=torch.float64)
                i = torch.arange(d // 2)
                lam[..., 2 * i, 2 * i] = c
                lam[..., 2 * i, 2 * i + 1] = -s
                lam[..., 2 * i + 1, 2 * i] = s
                lam[..., 2 * i + 1, 2 * i + 1] = c
        w = p.transpose(-1, -2).cpu() @ lam @ p.cpu()
        if self.num_heads is not None and w.dim() == 2:  # every part shared: still one matrix per head
            w = w.expand(self.num_heads, d, d)
        return w

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, head_dim={self.head_dim}, p={self.p_name!r}, "
                f"theta={self.theta_mode!r}, num_heads={self.num_heads}, spacing={self.spacing!r}")


class _PermuteRows(torch.autograd.Function):
    """``Pi^s x`` for the positions ``offset + arange(N)`` of x (..., N, D), with a backward that applies the
    transpose, ``Pi^(-s)`` (``(Pi^s)^T = Pi^(-s)``: (Pi^s x)_j = x_(pi^s(j)), so the gradient of x_i is
    g_(pi^(-s)(i))). Nothing of x's size is saved for the backward, where ``torch.gather`` saves its int64
    index: (N, D), per head (H, N, D), half to twice x's float32 bytes."""

    @staticmethod
    def forward(ctx, x: Tensor, encoding: LRPE, offset: int) -> Tensor:
        ctx.encoding, ctx.offset = encoding, offset
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        encoding._gather_rows(x.contiguous(), out, offset, 1)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        ctx.encoding._gather_rows(grad.contiguous(), out, ctx.offset, -1)
        return out, None, None


def _frame_gather(x: Tensor, table: Tensor) -> Tensor:
    """``out[..., n, j] = x[..., n, table[..., n mod R, j]]`` for x (..., N, D) and table (R, D) or (H, R, D)
    (x then (..., H, N, D)): the whole frames in one ``torch.gather`` by the broadcast table, the last partial
    frame in a second. A new contiguous tensor."""
    n, frame = x.shape[-2], table.shape[-2]
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    whole = n - n % frame
    if whole:
        frames = x[..., :whole, :].unflatten(-2, (whole // frame, frame))
        torch.gather(frames, -1, table.unsqueeze(-3).expand(frames.shape),
                     out=out[..., :whole, :].unflatten(-2, (whole // frame, frame)))
    if whole < n:
        tail = x[..., whole:, :]
        torch.gather(tail, -1, table[..., : n - whole, :].expand(tail.shape), out=out[..., whole:, :])
    return out


class _FrameGather(torch.autograd.Function):
    """``_frame_gather(x, table)`` with the backward ``_frame_gather(grad, back)``, back holding pi^(-r) where
    table holds pi^r: the transpose of a permutation is its inverse. Saves only the two small tables (where
    ``torch.gather`` would save its index expanded to x's shape, and scatter-add in the backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, back: Tensor) -> Tensor:
        ctx.back = back
        return _frame_gather(x, table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return _frame_gather(grad, ctx.back), None, None
