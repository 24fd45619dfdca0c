"""FLOP and byte counts of one attention call (docs/math.md section 7). Every report prints ``FORMULAS``.

A FLOP is a multiply or an add (a multiply-add is 2). Counts are of the algorithm the backend runs:
softmax and naive (quadratic) linear attention count the two N x N matmuls; chunked linear attention counts
its intra-chunk matmuls and its state updates. Elementwise work (softmax, feature maps, positional
transforms) is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

SOFTMAX_BACKWARD_FACTOR = 2.5
"""Backward of softmax attention as a multiple of its forward (FlashAttention recomputes Q K^T)."""

LINEAR_BACKWARD_FACTOR = 2.0
"""Backward of linear attention as a multiple of its forward: each matmul's gradient is two matmuls of
its size."""

FORMULAS = {
    "softmax / quadratic fwd": "2 B H N^2 (Dk + Dv), halved when causal  (= 4 B H N^2 D for Dk = Dv = D)",
    "chunked linear fwd, causal": "2 B H N C (Dk + Dv) / 2 (intra-chunk) + 4 B H N Dk Dv (states and inter-chunk)",
    "linear fwd, non-causal": "4 B H N Dk Dv  (phi(K)^T V, then phi(Q) times it)",
    "fwd+bwd": f"fwd x (1 + {SOFTMAX_BACKWARD_FACTOR}) for softmax, fwd x (1 + {LINEAR_BACKWARD_FACTOR}) for linear",
    "minimum bytes fwd": "B H N (2 D + 2 Dv) x bytes per element (read q, k, v, write o once)",
    "minimum bytes fwd+bwd": "B H N (6 D + 5 Dv) x bytes per element (fwd, then read q, k, v, dO, write dq, dk, dv)",
    "Dk": "the width the kernel sees: 2 D for LRPE-unitary, R for SPE, D otherwise",
}


@dataclass(frozen=True)
class Shape:
    """The sizes that enter the formulas. n: sequence length; dk: width of q and k as the kernel sees
    them; dv: width of v; d_in: width of the q, k inputs before any positional widening."""

    batch: int
    heads: int
    n: int
    dk: int
    dv: int
    d_in: int


def quadratic_forward_flops(s: Shape, causal: bool) -> float:
    """Q K^T and P V with an explicit N x N matrix; halved when causal."""
    flops = 2.0 * s.batch * s.heads * s.n * s.n * (s.dk + s.dv)
    return flops / 2 if causal else flops


def linear_forward_flops(s: Shape, causal: bool, chunk_size: int) -> float:
    """Chunked linear attention with chunk ``chunk_size`` (causal), or the two-matmul form (non-causal)."""
    bh = s.batch * s.heads
    state = 4.0 * bh * s.n * s.dk * s.dv
    if not causal:
        return state
    chunk = min(chunk_size, s.n)
    intra = 2.0 * bh * s.n * chunk * (s.dk + s.dv) / 2
    return intra + state


def attention_flops(s: Shape, *, time_complexity: str, causal: bool, pass_: str,
                    chunk_size: int | None) -> float:
    """FLOPs of one call: quadratic formula for ``time_complexity == "quadratic"``, else chunked linear."""
    if time_complexity == "quadratic":
        forward, backward = quadratic_forward_flops(s, causal), SOFTMAX_BACKWARD_FACTOR
    else:
        forward, backward = linear_forward_flops(s, causal, chunk_size or 64), LINEAR_BACKWARD_FACTOR
    return forward * (1 + backward) if pass_ == "fwd+bwd" else forward


def minimum_bytes(s: Shape, *, pass_: str, bytes_per_element: int) -> float:
    """Bytes that any implementation must move: read the inputs and write the outputs once."""
    per_token = 2 * s.d_in + 2 * s.dv if pass_ == "fwd" else 6 * s.d_in + 5 * s.dv
    return float(s.batch * s.heads * s.n * per_token * bytes_per_element)
