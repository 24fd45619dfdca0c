"""Host-side inputs of the fused kernels for one LRPE: kind code, tile width and the small position tables.

Angles (unitary, orthogonal): the phasor of position s = offset + c C + i is split into a coarse table
(chunk starts offset + c C, (N / C, W)) and a fine one (i < C, (C, W)), both from float64 angles and stored
as float32 cos and sin; the kernel multiplies the two (see ``features``). Permutation: the cycle tables of
pi as int32 (D,). Tables are shared (first dimension 1) or per head (H) as the LRPE's parameters are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lrpe.encoding import LRPE
from lrpe.kernels.features import KIND_NONE, KIND_ORTHOGONAL, KIND_PERMUTATION, KIND_UNITARY

KIND_CODES: dict[str, int] = {"none": KIND_NONE, "unitary": KIND_UNITARY, "orthogonal": KIND_ORTHOGONAL,
                              "permutation": KIND_PERMUTATION}


@dataclass(frozen=True)
class KernelTables:
    """What the kernels need of the positional transform (all tensors on the kernel's device).

    kind: a KIND_* code; width: W, the width of one feature tile; two: whether there are two tiles;
    cos_coarse, sin_coarse: (Ha, n_chunks, W) float32; cos_fine, sin_fine: (Ha, C, W) float32;
    members, start, pos, length: (Hp, D) int32. Kinds without angles or permutation get 1-element
    placeholders (never read). angle_heads = Ha, perm_heads = Hp, each 1 (shared) or H.
    """

    kind: int
    width: int
    two: bool
    cos_coarse: Tensor
    sin_coarse: Tensor
    cos_fine: Tensor
    sin_fine: Tensor
    members: Tensor
    start: Tensor
    pos: Tensor
    length: Tensor
    angle_heads: int
    perm_heads: int

    def args(self) -> tuple:
        """The table arguments in kernel order (tensors, then angle_heads, perm_heads come separately)."""
        return (self.cos_coarse, self.sin_coarse, self.cos_fine, self.sin_fine,
                self.members, self.start, self.pos, self.length)


def _phasor_tables(theta: Tensor, n_chunks: int, chunk: int, offset: int, device: torch.device
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """cos/sin of (offset + c chunk) theta for c < n_chunks and of i theta for i < chunk, float64 angles."""
    theta64 = theta.detach().to(torch.float64).reshape(-1, theta.shape[-1])  # (Ha, W)
    starts = offset + chunk * torch.arange(n_chunks, dtype=torch.float64, device=theta.device)
    inner = torch.arange(chunk, dtype=torch.float64, device=theta.device)
    coarse = starts[None, :, None] * theta64[:, None, :]
    fine = inner[None, :, None] * theta64[:, None, :]
    return tuple(t.to(device=device, dtype=torch.float32).contiguous()
                 for t in (coarse.cos(), coarse.sin(), fine.cos(), fine.sin()))


def build_tables(positional: LRPE | None, head_dim: int, n: int, offset: int, chunk: int,
                 device: torch.device) -> KernelTables:
    """The kernel inputs for ``positional`` (None or an LRPE) at positions offset + [0, n): the tables of its
    Lambda^s alone. Its P is not in them: a caller with P other than identity applies P to the features
    first (``dispatch.fused_attention``)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0 for the fused kernels, got {offset}")
    n_chunks = -(-n // chunk)
    empty_f = torch.zeros(1, dtype=torch.float32, device=device)
    empty_i = torch.zeros(1, dtype=torch.int32, device=device)
    angles = (empty_f,) * 4
    perm = (empty_i,) * 4
    angle_heads = perm_heads = 1
    kind = "none" if positional is None else positional.kind
    if kind in ("unitary", "orthogonal"):
        angles = _phasor_tables(positional.theta, n_chunks, chunk, offset, device)
        angle_heads = angles[0].shape[0]
    elif kind == "permutation":
        names = ("cycle_members", "cycle_start", "cycle_pos", "cycle_length")
        perm = tuple(getattr(positional, name).reshape(-1, head_dim).to(device=device, dtype=torch.int32)
                     .contiguous() for name in names)
        perm_heads = perm[0].shape[0]
    width = head_dim // 2 if kind == "orthogonal" else head_dim
    return KernelTables(KIND_CODES[kind], width, kind in ("unitary", "orthogonal"), *angles, *perm,
                        angle_heads, perm_heads)
