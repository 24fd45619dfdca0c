"""Re-measure issue 11's tables: how much of a CPU time is page faults, by glibc setting and by run history.

(a) ``linear@torch-chunked`` at N = 16384 (fp32, B = 1, H = 4, D = 64, causal forward) as ``python -m bench
    run`` reports it: alone, after N = 4096, in a two-variant run, and in the quick preset's order (each a
    fresh ``python -m bench run`` process; median and minor faults per call from its rows).
(b) Per glibc setting, each in a fresh process (glibc's dynamic thresholds cannot be restored once set):
    median and minor faults per call of the same config at N = 16384 and 65536.
(c) In the same processes, LRPE-unitary / plain at N = 65536, the two timed interleaved.

Run: ``python scripts/page_fault_table.py [--repeats 9] [--skip-quick-preset]``; Linux with glibc. Times
are wall clock (perf_counter) with the process's torch threads; on a shared machine compare rows, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
TARGET = "linear@torch-chunked"
UNITARY = "linear-lrpe-unitary@torch-chunked"
HISTORIES = {  # name -> `python -m bench run` arguments
    "alone": ["--variants", TARGET, "--n", "16k"],
    "after N = 4096": ["--variants", TARGET, "--n", "4k,16k"],
    "two-variant run": ["--variants", f"flash@sdpa-flash,{TARGET}", "--n", "4k,16k"],
    "quick preset": ["--preset", "quick"],
}
# name -> (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) set with mallopt at the start, or None
SETTINGS = {
    "glibc default (dynamic thresholds)": None,
    "mmap 32 MiB, trim 64 MiB (what a memory pass used to leave)": (32 * MiB, 64 * MiB),
    "mmap 128 KiB (the memory pass's)": (128 * 2**10, 128 * 2**10),
    "mmap 256 MiB, trim 512 MiB": (256 * MiB, 512 * MiB),
    "the suite's timing regime (bench.measure.allocator.TIMING)": "timing-regime",
}


def _child_env() -> dict:
    """This process's environment with the checkout prepended to PYTHONPATH, never replacing it (an offline
    machine may carry extra wheels there)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_history(args: list[str]) -> dict:
    """One ``python -m bench run`` in a fresh process; the target's row at N = 16384."""
    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "bench", "run", *args, "--results-dir", results, "--run-id", "t",
               "--no-progress", "--config-time-limit", "60", "--time-limit", "900"]
        subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                       check=False)
        rows = [json.loads(line) for line in (Path(results) / "t" / "rows.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["variant"] == TARGET and r["n"] == 16384)
    return {"median_ms": row.get("time_median_ms"), "faults": row.get("minor_faults_per_call"),
            "status": row["status"], "regime": row.get("alloc_regime")}


def worker(setting: str, repeats: int) -> dict:
    """Runs in a fresh process: apply ``setting``, time the target at 16k and 64k and LRPE-unitary at 64k."""
    import ctypes
    from contextlib import nullcontext

    import torch

    from bench.config import BenchConfig
    from bench.measure.allocator import minor_faults, timing_regime
    from bench.registry import get_variant
    from bench.sweep.executor import make_inputs, make_workload

    value = SETTINGS[setting]
    regime = timing_regime() if value == "timing-regime" else nullcontext()
    if isinstance(value, tuple):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        accepted = libc.mallopt(-3, value[0]) == 1 and libc.mallopt(-1, value[1]) == 1
        if not accepted:
            return {"error": "glibc rejected the setting"}

    def workload(variant: str, n: int):
        config = BenchConfig(variant=variant, n=n, d=64, heads=4)
        core = get_variant(variant).build(config, seed=0)
        return make_workload(core, *make_inputs(config, seed=0), "fwd")

    out: dict = {}
    with regime:
        for n, variants in ((16384, [TARGET]), (65536, [TARGET, UNITARY])):
            fns = {v: workload(v, n) for v in variants}
            times: dict[str, list[float]] = {v: [] for v in variants}
            faults: dict[str, int] = dict.fromkeys(variants, 0)
            for i in range(2 + repeats):  # two warm-up rounds, then the variants interleaved call by call
                for v, fn in fns.items():
                    before = minor_faults()
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    if i >= 2:
                        times[v].append(elapsed * 1e3)
                        faults[v] += minor_faults() - before
            for v in variants:
                out[f"{v} {n}"] = {"median_ms": statistics.median(times[v]), "faults": faults[v] / repeats}
            del fns
    out["threads"] = torch.get_num_threads()
    return out


def run_worker(setting: str, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", setting, "--repeats", str(repeats)]
    result = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per config in (b) and (c)")
    parser.add_argument("--skip-quick-preset", action="store_true", help="leave out (a)'s quick-preset run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return

    print(f"(a) {TARGET}, N = 16384, fp32, B=1 H=4 D=64, causal fwd, as `python -m bench run` reports it")
    print(f"{'how it was run':<28} {'median ms':>10} {'faults/call':>12}  regime")
    for name, run_args in HISTORIES.items():
        if args.skip_quick_preset and name == "quick preset":
            continue
        r = run_history(run_args)
        faults = "-" if r["faults"] is None else f"{r['faults']:.0f}"
        median = "-" if r["median_ms"] is None else f"{r['median_ms']:.1f}"
        print(f"{name:<28} {median:>10} {faults:>12}  {r['status']}, {r['regime']}", flush=True)

    print(f"\n(b) {TARGET}, per glibc setting, fresh process each, {args.repeats} timed calls after 2 warm-up")
    print("(c) LRPE-unitary / plain at N = 65536, timed interleaved in the same process")
    print(f"{'glibc setting':<60} {'16k ms':>8} {'faults':>8} {'64k ms':>8} {'faults':>8} {'unitary/plain':>14}")
    for setting in SETTINGS:
        r = run_worker(setting, args.repeats)
        if "error" in r:
            print(f"{setting:<60} {r['error']}")
            continue
        a, b, u = r[f"{TARGET} 16384"], r[f"{TARGET} 65536"], r[f"{UNITARY} 65536"]
        print(f"{setting:<60} {a['median_ms']:>8.1f} {a['faults']:>8.0f} {b['median_ms']:>8.1f} "
              f"{b['faults']:>8.0f} {u['median_ms'] / b['median_ms']:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
