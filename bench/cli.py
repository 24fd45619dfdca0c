"""Command line: ``python -m bench run | list | merge | extrapolate | gate | selfcheck``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.sweep.presets import preset_names
from bench.sweep.store import DEFAULT_RESULTS_DIR

SWEEP_OPTIONS = ("n", "d", "variants", "dtype", "causal", "pass", "heads", "batch", "tokens_per_batch",
                 "seed", "time_limit", "config_time_limit", "memory_limit")


def add_sweep_options(add) -> None:
    """The sweep overrides shared by ``python -m bench run`` and pytest (root conftest.py).

    ``add`` is ``ArgumentParser.add_argument`` or pytest's ``group.addoption``; every option defaults to
    None, meaning "keep the preset's value".
    """
    add("--preset", default=None, help=f"preset name ({', '.join(preset_names())}) or path to a .toml; "
        "default: quick on CPU, full on GPU")
    add("--device", default=None, help="cpu, cuda or auto (default: the preset's, auto)")
    # --seq-lens and --head-dims: torchrun refuses --n and --d as ambiguous abbreviations of its own options
    add("--n", "--seq-lens", dest="n", default=None, help="sequence lengths: 1k..64k (doubling), 1k,4k,16k, or 4096")
    add("--d", "--head-dims", dest="d", default=None, help="head dims, e.g. 64 or 64,128")
    add("--variants", default=None, help="comma list of names or globs, e.g. 'linear-lrpe-*,flash@sdpa-flash'")
    add("--dtype", default=None, help="float32, bfloat16, float16, float64 (or bf16, fp16...), comma list")
    add("--causal", default=None, help="true, false or both")
    add("--pass", dest="pass_", metavar="PASS", default=None, help="fwd, fwd+bwd or both")
    add("--heads", default=None, type=int, help="attention heads")
    add("--batch", default=None, type=int, help="batch size (ignored when tokens-per-batch is set)")
    add("--tokens-per-batch", dest="tokens_per_batch", default=None,
        help="hold batch x N constant: batch = max(1, tokens // N), e.g. 16k")
    add("--seed", default=None, type=int, help="seed for inputs and parameters")
    add("--time-limit", dest="time_limit", default=None, type=float, help="total seconds for the run")
    add("--config-time-limit", dest="config_time_limit", default=None, type=float,
        help="predicted seconds one config may take; larger ones are over-budget")
    add("--memory-limit", dest="memory_limit", default=None,
        help="peak memory one config may take, e.g. 8GiB (default: a fraction of what is free)")
    add("--run-id", dest="run_id", default=None, help="name of the run; an existing one is resumed")
    add("--results-dir", dest="results_dir", default=None,
        help=f"where runs are stored (default {DEFAULT_RESULTS_DIR}/)")
    add("--shard", default=None, help="i/n: run every n-th config starting at the i-th (1-based)")
    add("--profile", action="store_true", default=False,
        help="write a torch.profiler trace and top-kernel table per config")


def overrides_from(values: dict) -> dict:
    """The sweep overrides out of parsed options (pytest or argparse), keyed as load_spec expects."""
    out = {key: values.get(key) for key in SWEEP_OPTIONS if key != "pass"}
    out["pass"] = values.get("pass_")
    return out


def _list(args: argparse.Namespace) -> int:
    from bench.registry import all_variants, select_variants

    variants = select_variants(args.pattern) if args.pattern else list(all_variants().values())
    rows = []
    for v in variants:
        reason = v.unavailable_reason()
        rows.append({
            "variant": v.name, "family": v.family, "pe": v.pe, "backend": v.backend,
            "time": v.time_complexity, "memory": v.memory_complexity, "devices": ",".join(v.devices),
            "dtypes": ",".join(v.dtypes),
            "causal": "/".join("causal" if c else "full" for c in v.causal_modes),
            "sweeps": "yes" if v.in_sweeps else "by name",
            "available here": "yes" if reason is None else "no",
            "reason": reason or "",
        })
    frame = pd.DataFrame(rows)
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        with pd.option_context("display.max_colwidth", 90, "display.width", 250):
            print(frame.to_string(index=False))
        available = sum(r["available here"] == "yes" for r in rows)
        print(f"\n{len(rows)} variants, {available} available here")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench.sweep.presets import load_spec
    from bench.sweep.session import Sweep

    if args.dry_run:
        return _dry_run(args)
    spec = load_spec(args.preset, device=args.device, overrides=overrides_from(vars(args)))
    from bench.sweep.distributed import run_ranks, world_size

    if world_size() > 1:  # under torchrun: rank 0 gets the session holding every row, the others are done
        if args.shard:
            raise ValueError(f"--shard {args.shard} splits a sweep between separate runs; under torchrun the "
                             "ranks share the configs already: leave --shard out")
        sweep = run_ranks(spec, results_dir=args.results_dir or DEFAULT_RESULTS_DIR, run_id=args.run_id,
                          profile=args.profile, log=lambda text: print(text, file=sys.stderr))
        return 0 if sweep is None else _finish(sweep)
    sweep = Sweep(spec, results_dir=args.results_dir or DEFAULT_RESULTS_DIR, run_id=args.run_id,
                  shard=args.shard, profile=args.profile)
    pending = sweep.pending()
    skipped = len(sweep.planned) - len(pending)
    print(f"run {sweep.run_id}: preset {spec.name} on {spec.device} ({sweep.device_name}), "
          f"{len(sweep.planned)} configs" + (f", {skipped} already done (resumed)" if skipped else ""),
          file=sys.stderr)
    # disable=None: tqdm draws the bar on a terminal only, so logs and CI output stay readable.
    with sweep, tqdm(total=len(pending), unit="config", disable=True if args.no_progress else None,
                     dynamic_ncols=True) as bar:
        for planned in pending:
            bar.set_postfix_str(planned.config.key, refresh=True)
            row = sweep.run_one(planned)
            if row["status"] == "error":
                tqdm.write(f"error in {planned.config.key}: {row['reason']}", file=sys.stderr)
            bar.update(1)
    return _finish(sweep)


def _finish(sweep) -> int:
    """Write the frame and the report of a finished session, print the summary; 1 when a row is an error."""
    from reports.render import REPORT_FILE, write_report
    from reports.summary import summary_text

    frame_path = sweep.finish()
    frame = sweep.store.frame()
    print(summary_text(frame))
    print(f"\nresults: {sweep.store.path}  (rows.jsonl, {frame_path.name}, environment.json)")
    print(f"report: {write_report([sweep.store.path], sweep.store.path / REPORT_FILE).resolve()}")
    errors = int((frame["status"] == "error").sum()) if not frame.empty else 0
    if errors:
        print(f"{errors} configs ended in error (see the reasons above)", file=sys.stderr)
        return 1
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """Print the plan for an assumed device with predicted times; measures nothing, needs no GPU."""
    from bench.sweep.dryrun import dry_run, dry_run_text
    from bench.sweep.presets import load_spec

    if args.device not in (None, "cuda"):
        raise ValueError(f"--dry-run plans for the assumed GPU ({args.assume_device}); --device must be cuda "
                         f"or left out, got {args.device!r}")
    spec = load_spec(args.preset or "full", device="cuda", overrides=overrides_from(vars(args)))
    print(dry_run_text(dry_run(spec, args.assume_device), spec, args.assume_device))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from bench.sweep.store import merge_runs

    merged = merge_runs(args.runs, args.results_dir or DEFAULT_RESULTS_DIR, args.into)
    frame = merged.frame()
    print(f"merged {len(args.runs)} runs into {merged.path}: {len(frame)} rows")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from bench.extrapolation.cli import run_extrapolate

    return run_extrapolate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a sweep (preset plus overrides) and store its rows")
    add_sweep_options(run.add_argument)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", dest="dry_run", action="store_true",
                     help="print the plan with predicted times for --assume-device (default preset: full); "
                     "runs nothing and needs no GPU")
    run.add_argument("--assume-device", dest="assume_device", default="h100", choices=("h100",),
                     help="device model of --dry-run: per-call estimates from docs/anchors.md (docs/gpu-timing.md)")
    run.set_defaults(handler=_run)

    listing = commands.add_parser("list", help="the variant registry, with what can run here")
    listing.add_argument("pattern", nargs="?", default=None, help="names or globs, comma separated")
    listing.add_argument("--format", choices=("table", "csv"), default="table")
    listing.set_defaults(handler=_list)

    merge = commands.add_parser("merge", help="join the stores of several runs (e.g. shards) into one")
    merge.add_argument("runs", nargs="+", type=Path, help="run directories to merge")
    merge.add_argument("--into", required=True, help="run id of the merged run")
    merge.add_argument("--results-dir", dest="results_dir", default=None)
    merge.set_defaults(handler=_merge)

    from bench.extrapolation.cli import add_extrapolate_options

    extrapolate = commands.add_parser("extrapolate", help="train short, evaluate long: perplexity per encoding")
    add_extrapolate_options(extrapolate.add_argument)
    extrapolate.set_defaults(handler=_extrapolate)

    from bench import selfcheck

    check = commands.add_parser("selfcheck", help="tests, oracle equivalence, timer agreement, memory and NVML "
                                "checks on this machine's device, as one pass/fail/unavailable table")
    selfcheck.add_arguments(check)
    check.set_defaults(handler=selfcheck.run)

    from bench import gate as gate_module

    gate = commands.add_parser("gate", help="CI regression gate: run the gated configs, compare with the budgets")
    gate_module.add_arguments(gate)
    gate.set_defaults(handler=gate_module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as exc:  # bad input: say what and what was allowed, without a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
