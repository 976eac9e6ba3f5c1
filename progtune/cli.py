"""`progtune train | search | report | knobs`: parse arguments and delegate; no logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from progtune.errors import ProgtuneError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"progtune: error: {message}; see `{self.prog} --help`\n")


def _common_config_args(p: argparse.ArgumentParser) -> None:
    from progtune.config import DEFAULT_PRESET, PRESETS

    p.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        metavar="NAME",
        help=f"starting point: {', '.join(PRESETS)} (default {DEFAULT_PRESET})",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of knobs (nested or dotted)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="knob overrides, e.g. lr.peak=1e-3"
    )


def build_parser() -> argparse.ArgumentParser:
    from progtune import __version__

    parser = _Parser(prog="progtune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"progtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="run one progressive (or from-scratch) training")
    _common_config_args(t)
    t.add_argument("--out", metavar="DIR", help="results + checkpoint folder (default runs/NAME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--export", metavar="DIR", help="also save the final model (save_pretrained)")
    t.add_argument("--quiet", action="store_true", help="print only the summary")
    t.add_argument(
        "--workers-per-trial",
        type=int,
        default=1,
        metavar="N",
        help="train the run data-parallel on N local CPU processes (gloo) splitting each "
        "micro-batch; budget.batch_size must be a multiple of N (default 1)",
    )
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="prepare the data and print planned FLOPs, time and epochs; do not train",
    )
    from progtune.tracking import add_log_flags

    add_log_flags(t)

    k = sub.add_parser("knobs", help="list every knob: its value in the preset, type and doc")
    k.add_argument("--preset", default=None, metavar="NAME", help="show this preset's values")

    from progtune.search_args import add_search_parser

    add_search_parser(sub)
    from progtune.confirm_cli import add_confirm_parsers

    add_confirm_parsers(sub)
    from progtune.report_cli import add_report_parser

    add_report_parser(sub)
    return parser


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_knobs(args: argparse.Namespace) -> int:
    from progtune.config import KNOB_TYPES, flatten, list_text, resolve
    from progtune.knob_docs import knob_docs

    values, docs = flatten(resolve(args.preset)), knob_docs()
    width = max(map(len, KNOB_TYPES))
    for name, tp in KNOB_TYPES.items():
        value = values[name]
        shown = (list_text(value) or "-") if isinstance(value, tuple) else _fmt(value)
        kind = getattr(tp, "__name__", str(tp)).replace("tuple", "list")
        print(f"{name:<{width}}  {shown:<14} {kind:<6} {docs[name]}".rstrip())
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        from progtune.dry_run import train_dry_run

        return train_dry_run(args)
    from progtune.train_cli import run_train

    return run_train(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "knobs": cmd_knobs}
    try:
        if args.command == "search":
            from progtune.search_cli import run_search

            return run_search(args)
        if args.command == "report":
            from progtune.report_cli import run_report

            return run_report(args)
        if args.command in ("confirm", "export"):
            from progtune import confirm_cli

            run = confirm_cli.run_confirm if args.command == "confirm" else confirm_cli.run_export
            return run(args)
        return handlers[args.command](args)
    except ProgtuneError as exc:
        print(f"progtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("progtune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
