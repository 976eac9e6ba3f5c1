"""The CLI describes itself: `--version`, a doc line for every knob, help text on every flag."""

from __future__ import annotations

import argparse

import pytest

from progtune import __version__, cli
from progtune.config import KNOB_TYPES, flatten, list_text, resolve
from progtune.knob_docs import knob_docs


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"progtune {__version__}"


def test_every_knob_has_a_doc_line_from_its_field_comment():
    docs = knob_docs()
    assert list(docs) == list(KNOB_TYPES)
    assert [k for k, d in docs.items() if not d] == []
    # The comment beside the field is the doc (one source): spot-check two of them.
    assert docs["sampling.lvps_low"] == "lvps/edge: smallest y is this offset (reference 0.6)"
    assert docs["model.d_model"] == "hidden width h"


def test_knobs_prints_name_value_type_and_doc_per_line(capsys):
    assert cli.main(["knobs", "--preset", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values, docs = flatten(resolve("tiny")), knob_docs()
    assert len(lines) == len(KNOB_TYPES)
    for line, name in zip(lines, KNOB_TYPES, strict=True):
        knob, shown, kind, doc = line.split(maxsplit=3)
        value = values[name]
        assert knob == name
        if isinstance(value, tuple):
            assert (shown, kind) == (list_text(value) or "-", "list")
        elif isinstance(value, str):
            assert shown == (value or '""')
        assert doc == docs[name]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_every_flag_of_every_subcommand_has_help_text():
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert {"train", "search", "knobs", "report", "confirm", "export"} <= set(commands)
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
