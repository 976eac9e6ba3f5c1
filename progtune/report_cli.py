"""`progtune report`: rank runs by compute to a target loss; optionally write an HTML report."""

from __future__ import annotations

import argparse
import math
import os
import sys

from progtune.errors import ProgtuneError

DEFAULT_TOP = 5


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rank runs by compute to a target loss; write an HTML/Markdown report",
    )
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="experiment folders STORAGE/NAME (or URIs) holding trials.parquet and curves.parquet",
    )
    p.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="X",
        help="held-out loss to reach (default: the target the search used, i.e. its reference "
        "run's final loss)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write report.html (self-contained), report.md, the PNG plots, ranking.parquet and "
        "configs.parquet here (a new, empty or previous-report folder)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        metavar="K",
        help=f"runs shown in the terminal table and the plots (default {DEFAULT_TOP})",
    )


def run_report(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ProgtuneError(f"--top must be at least 1, got {args.top}")
    if args.target_loss is not None and not (
        math.isfinite(args.target_loss) and args.target_loss > 0
    ):
        raise ProgtuneError(f"--target-loss must be a positive number, got {args.target_loss}")
    from progtune.analysis.report import build_report, check_out_dir, terminal_text, write_report

    if args.out is not None:
        check_out_dir(args.out)  # fail before the work, and again when writing
    report = build_report(args.results, args.target_loss)
    _print(terminal_text(report, args.top))
    if args.out is not None:
        path = write_report(report, args.out, args.top)
        _print(f"\nreport: {path / 'report.html'}\n        {path / 'report.md'}")
    return 0


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `progtune report ... | head`: the reader left; finish quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
