"""progtune: search for the cheapest progressive (Apollo) training schedule with Ray Tune + Optuna.

Kept light: importing progtune (or progtune.analysis) loads neither torch nor ray; the public
names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "Config": "progtune.config",
    "resolve": "progtune.config",
    "with_overrides": "progtune.config",
    "train": "progtune.train",
    "flops_to_target": "progtune.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'progtune' has no attribute {name!r}")


__all__ = ["Config", "__version__", "flops_to_target", "resolve", "train", "with_overrides"]
