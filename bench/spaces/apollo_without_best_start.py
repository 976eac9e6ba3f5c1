"""The shipped `apollo` space without its first starting point (the landscape's best).

For replays on the landscape that starting point was chosen from: with it, every strategy
"finds" the best configuration with its first trial, which says nothing about the search. This
space keeps the shipped ranges and the classic start (growth without depth sampling at the
reference boundaries, the preset's LR), so a replay measures what the sampler and scheduler add.
"""

from __future__ import annotations

from typing import Any

from progtune.config import Config
from progtune.search_spaces import apollo

define = apollo.define


def starts(base: Config, pinned: dict[str, Any]) -> list[dict[str, Any]]:
    return apollo.starts(base, pinned)[1:]
