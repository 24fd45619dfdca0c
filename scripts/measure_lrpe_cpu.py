"""Time and peak memory of chunked linear attention on CPU, without PE and with LRPE-orthogonal.

fp32, B = 1, H = 4, D = 64, causal forward, chunked (C = 64), feature map 1 + elu for both:
(a) ``LinearAttentionCore(positional="none")``, (b) ``LinearAttentionCore(positional="orthogonal")``.
Time: median (and p20/p80) of ``--repeats`` runs after ``--warmup`` runs, (a) and (b) interleaved so that
a busy machine slows both alike; torch threads as they are; under the suite's timing allocator regime
(``bench.measure.allocator``, docs/cpu-timing.md), with minor page faults per call. Peak memory:
``bench.measure.memory.measure_peak_bytes`` (the process high-water mark above the resident size just before
the call, under the memory pass's regime), in its own pass after the timing.

Run: ``python scripts/measure_lrpe_cpu.py [--lengths 16384 65536] [--repeats 7] [--warmup 2]``.
Linux only (/proc, glibc).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bench.measure.allocator import minor_faults, timing_regime
from bench.measure.memory import measure_peak_bytes
from lrpe import LinearAttentionCore


def times_ms(fns: dict[str, Callable[[], object]], warmup: int,
             repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall times in ms of each fn, the fns interleaved round by round, and minor faults per timed call."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    faults = dict.fromkeys(fns, 0)
    with timing_regime():
        for i in range(warmup + repeats):
            for name, fn in fns.items():
                before = minor_faults()
                t0 = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    out[name].append(elapsed)
                    faults[name] += minor_faults() - before
    return out, {name: count / repeats for name, count in faults.items()}


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile of xs, nearest rank."""
    ordered = sorted(xs)
    return ordered[round(q * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    b, h, d = 1, 4, 64
    cores = {
        "a: no PE": LinearAttentionCore(d, feature_map="elu1", positional="none", impl="chunked"),
        "b: LRPE-orthogonal": LinearAttentionCore(d, feature_map="elu1", positional="orthogonal",
                                                  impl="chunked"),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32, B={b} H={h} D={d}, causal "
          f"forward, chunk 64, {args.repeats} repeats after {args.warmup} warm-up")
    print(f"{'variant':<20} {'N':>6} {'median ms':>10} {'p20 ms':>8} {'p80 ms':>8} {'faults':>8} {'peak MiB':>9}")
    results: dict[tuple[str, int], tuple[float, int]] = {}
    for n in args.lengths:
        q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
        fns = {name: (lambda core=core, q=q, k=k, v=v: core(q, k, v)) for name, core in cores.items()}
        timing, faults = times_ms(fns, args.warmup, args.repeats)
        for name, fn in fns.items():
            peak = min(measure_peak_bytes(fn, "cpu") for _ in range(3))
            ts = timing[name]
            med = statistics.median(ts)
            results[name, n] = (med, peak)
            print(f"{name:<20} {n:>6} {med:>10.1f} {quantile(ts, 0.2):>8.1f} {quantile(ts, 0.8):>8.1f} "
                  f"{faults[name]:>8.0f} {peak / 2**20:>9.1f}")
        del q, k, v
    lo, hi = min(args.lengths), max(args.lengths)
    (ta, _), (tb, _) = results["a: no PE", hi], results["b: LRPE-orthogonal", hi]
    growth = results["b: LRPE-orthogonal", hi][1] / results["b: LRPE-orthogonal", lo][1]
    print(f"time (b)/(a) at N={hi}: {tb / ta:.2f} (target <= 1.5)")
    print(f"peak memory of (b), N={hi} over N={lo}: {growth:.2f}x (target <= 4.5x for 16k -> 64k)")


if __name__ == "__main__":
    main()
