"""An English prose corpus available offline: the King James Bible from Debian's bible-kjv.

    apt-get install -y bible-kjv          # Debian main: the `bible` reader + bible-kjv-text, 2.5 MB
    .venv/bin/python bench/prose_corpus.py [--install] [--dest FOLDER]

Debian's bible-kjv-text ships the text compressed in its own format; its `bible` program prints
it. This exports it once, one chapter per file (1,189 files, 4.2 MB of prose without the verse
references), to FOLDER (default: <progtune cache>/corpora/kjv), so `data.corpus=FOLDER` reads it
and every 20th chapter is held out. Export is deterministic: same package, same files, same
data fingerprint. bench/landscape.py's `--corpus kjv` calls this.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from progtune.atomic import write_text_atomic

_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
_DONE = ".complete"  # written last: a folder without it is an interrupted export


def default_dest() -> Path:
    """<progtune cache>/corpora/kjv (the cache the token data uses: $PROGTUNE_CACHE or ~/.cache)."""
    root = os.environ.get("PROGTUNE_CACHE") or Path.home() / ".cache" / "progtune"
    return Path(root).expanduser() / "corpora" / "kjv"


def chapters(text: str) -> list[tuple[str, list[str]]]:
    """`bible` output -> [(book+chapter, [verse text, ...])] in order, references dropped."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = _VERSE.match(line)
        if m:
            key = f"{m.group(1)}{int(m.group(2)):03d}"
            if not out or out[-1][0] != key:
                out.append((key, []))
            out[-1][1].append(m.group(4).strip())
        elif line.strip() and out:  # a wrapped verse continues
            out[-1][1][-1] += " " + line.strip()
    return out


def ensure_kjv(dest: Path | None = None, install: bool = False) -> Path:
    """The exported folder; exported now if missing (installing bible-kjv with apt when asked)."""
    dest = dest or default_dest()
    if (dest / _DONE).exists():
        return dest
    if shutil.which("bible") is None:
        if not install:
            raise SystemExit(
                "error: the English corpus needs Debian's bible-kjv: run "
                "`apt-get install -y bible-kjv` (or pass --install), then retry"
            )
        subprocess.run(["apt-get", "install", "-y", "-q", "bible-kjv"], check=True)
    env = {**os.environ, "COLUMNS": "100000"}  # one verse per line
    text = subprocess.run(
        ["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True, env=env
    ).stdout
    found = chapters(text)
    if len(found) != 1189:
        raise SystemExit(f"error: expected 1189 chapters from `bible`, got {len(found)}")
    for i, (key, verses) in enumerate(found):
        write_text_atomic(dest / f"{i:04d}-{key}.txt", "\n".join(verses) + "\n")
    write_text_atomic(dest / _DONE, f"{len(found)} chapters\n")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dest", type=Path, default=None, help="export folder")
    p.add_argument("--install", action="store_true", help="apt-get install bible-kjv if missing")
    args = p.parse_args(argv)
    dest = ensure_kjv(args.dest, args.install)
    files = sorted(dest.glob("*.txt"))
    size = sum(f.stat().st_size for f in files)
    print(f"{dest}: {len(files)} chapters, {size / 1e6:.2f} MB (data.corpus={dest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
