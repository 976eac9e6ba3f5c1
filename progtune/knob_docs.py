"""One line of documentation per knob, read from the comment beside its config field.

The dataclass fields in config_sections.py (and `seed` in config.py) carry their doc as a
trailing comment; this module reads those comments from the source, so the docs have one home
(as litgpt's config docs do) and `progtune knobs` and the README cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import tokenize

from progtune import config, config_sections


@functools.cache
def knob_docs() -> dict[str, str]:
    """Dotted knob name -> its one-line doc ("" where the field has no comment)."""
    sections = {f.name: f.default_factory().__class__ for f in _section_fields()}
    docs = {}
    for prefix, cls in sections.items():
        for name, doc in _field_comments(config_sections, cls.__name__).items():
            docs[f"{prefix}.{name}"] = doc
    for name, doc in _field_comments(config, "Config").items():
        if name not in sections:
            docs[name] = doc
    return {knob: docs.get(knob, "") for knob in config.KNOB_TYPES}


def _section_fields() -> list[dataclasses.Field]:
    return [
        f for f in dataclasses.fields(config.Config) if f.default_factory is not dataclasses.MISSING
    ]


def _field_comments(module: object, class_name: str) -> dict[str, str]:
    """Field name -> the comment on its line, for the fields of `class_name` in `module`."""
    source = inspect.getsource(module)
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                stmt.target.id: comments.get(stmt.end_lineno, "")
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
    return {}
