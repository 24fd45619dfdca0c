"""``python -m bench extrapolate``: options and the command (``bench.cli`` registers them)."""

from __future__ import annotations

import argparse
import sys
import time

from bench.sweep.store import DEFAULT_RESULTS_DIR


def add_extrapolate_options(add) -> None:
    """Options of ``python -m bench extrapolate``; ``add`` is ``ArgumentParser.add_argument`` or pytest's
    ``addoption``. Every option defaults to None (the preset's value)."""
    add("--preset", default=None, help="extrap-quick (CPU), extrap-full (GPU) or a .toml path; "
        "default: extrap-quick on CPU, extrap-full with CUDA")
    add("--device", default=None, help="cpu, cuda or auto (default: the preset's)")
    add("--variants", default=None, help="comma list of registry names or globs (default: the preset's 11)")
    add("--n", "--eval-lens", dest="n", default=None,
        help="eval lengths, e.g. 128..8k (default: L x 2^k up to the preset's max_len); under torchrun, whose "
        "parser takes --n for its own options, write --eval-lens")
    add("--steps", default=None, type=int, help="training steps (default: the preset's)")
    add("--corpus", default=None, help="'sotu', a directory of .txt files, or one with WikiText raw files")
    add("--seed", default=None, type=int, help="(first) seed of the model, data order and SPE codes")
    add("--seeds", default=None, type=int, help="trainings per variant, seeds seed, seed + 1, ...: the table "
        "and report show the spread over seeds (default: the preset's, 1)")
    add("--workers", default=None, type=int, help="trainings at once on a CPU, one process each (default: the "
        "preset's; extrap-quick: 2, one per core)")
    add("--threads", default=None, type=int, help="torch intra-op threads (default: the preset's, else torch's; "
        "on a shared, oversubscribed CPU 1 is much faster)")
    add("--run-id", dest="run_id", default=None, help="name of the run; an existing one is resumed")
    add("--results-dir", dest="results_dir", default=None,
        help=f"where runs are stored (default {DEFAULT_RESULTS_DIR}/)")
    add("--shard", default=None, help="i/n: every n-th (variant, seed) training starting at the i-th (1-based); "
        "with one seed, every n-th variant")
    add("--no-progress", dest="no_progress", action="store_true", default=False, help="no progress bar")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_extrapolate(args: argparse.Namespace) -> int:
    """Run the preset, print the table; exit 1 when a row is ``error``."""
    from bench.extrapolation.run import ExtrapolationRun
    from bench.extrapolation.spec import load_extrap_spec
    from bench.extrapolation.table import extrapolation_table

    spec = load_extrap_spec(args.preset, device=args.device, variants=args.variants, lengths=args.n,
                            steps=args.steps, corpus=args.corpus, seed=args.seed, seeds=args.seeds,
                            threads=args.threads, workers=args.workers)
    run = ExtrapolationRun(spec, results_dir=args.results_dir or DEFAULT_RESULTS_DIR, run_id=args.run_id,
                           shard=args.shard, progress=False if args.no_progress else None)
    if run.rank == 0:
        print(f"run {run.run_id}: preset {spec.name} on {run.device}, {len(run.tasks)} training(s) of "
              f"{len(run.variants)} variant(s), seeds {list(spec.seeds)}, {run.workers} worker(s) of "
              f"{spec.threads or torch_threads()} thread(s), corpus {run.corpus.name}, train length "
              f"{spec.train.train_len}, eval lengths {list(spec.eval.lengths)}", file=sys.stderr)
    started = time.perf_counter()
    store = run.run()
    if run.rank != 0:
        return 0
    frame = store.frame()
    print(extrapolation_table(frame))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    print(f"\nresults: {store.path}  (rows.jsonl, results.csv, extrapolation/<variant>/seed-<s>/loss.csv)")
    from reports.render import REPORT_FILE, write_report

    print(f"report: {write_report([store.path], store.path / REPORT_FILE).resolve()}")
    errors = frame[(frame["task"] == "extrapolation") & (frame["status"] == "error")]
    for _, row in errors.iterrows():
        print(f"error: {row['variant']} at {row['eval_len']} ({row['protocol']}): {row['reason']}", file=sys.stderr)
    return 1 if len(errors) else 0
