"""Analysis of progtune results: pandas, pyarrow and matplotlib only (never torch or ray).

Modules: `load` (experiments -> DataFrames), `compute_to_target` (the target and every run's
compute to reach it), `ranking` (runs and configurations over seeds), `importance` (knobs),
`plots`, `render` and `report` (`progtune report`). The names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_experiments": "load",
    "Results": "load",
    "choose_target": "compute_to_target",
    "trial_metrics": "compute_to_target",
    "rank_trials": "ranking",
    "rank_configs": "ranking",
    "knob_importance": "importance",
    "build_report": "report",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
