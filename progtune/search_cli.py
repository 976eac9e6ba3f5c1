"""`progtune search`: argument parsing for the search (filled in by the search issue)."""

from __future__ import annotations

import argparse


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    return None


def run_search(args: argparse.Namespace) -> int:  # pragma: no cover - placeholder
    raise NotImplementedError
