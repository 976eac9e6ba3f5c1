"""smoke: a tiny space for tests and a first look (2-3 knobs, seconds per trial on `tiny`).

Budget: 2-4 trials.
"""

from __future__ import annotations

from typing import Any


def define(trial: Any) -> dict[str, Any]:
    return {
        "sampling.strategy": trial.suggest_categorical("sampling.strategy", ["lvps", "none"]),
        "lr.peak": trial.suggest_float("lr.peak", 1e-3, 1e-2, log=True),
    }
