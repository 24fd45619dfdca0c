"""``python -m reports render RUN_DIR [RUN_DIR ...] [--compare BASELINE_RUN_DIR] -o report.html``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.render import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description="HTML reports from stored runs")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="one self-contained HTML report from one or more run directories")
    render.add_argument("runs", nargs="+", type=Path, help="run directories (results/<run-id>), joined in one report")
    render.add_argument("--compare", action="append", type=Path, default=[], metavar="BASELINE_RUN_DIR",
                        help="a baseline run directory to compare with (repeatable: shards of one baseline)")
    render.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="default report.html")
    render.add_argument("--title", default=None, help="the report's heading")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = write_report(args.runs, args.output, args.compare, title=args.title)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
