"""`--snap surrogate`: a proposal is scored at its own point, not at its nearest recorded one.

Nearest snapping (replay_strategies.SnapTable) credits a proposal with its nearest recorded
configuration, so TPE's local proposals collapse onto the incumbent and teach the study nothing;
`--snap untried` credits a possibly far neighbour. The two bracket the truth; YAHPO Gym's answer
is a surrogate fitted on the recorded configurations, which this module supplies:

- A proposal still trains its nearest recorded configuration's run: its cost (the simulated
  clock, the budget), its curve (ASHA's rung decisions, a pruned trial's reported losses) and
  its status (a failed run is FAIL, as with nearest snapping) are that run's.
- The objective it is told (on the selection seed) and scored with (on the scoring seed) is
  predicted at the proposal's exact point by inverse-distance-weighted k-nearest neighbours
  (k = 8, weight 1 / d^2) over every searchable configuration recorded on that seed, in the
  SnapTable's own normalised coordinates (categorical mismatch 1, floats by log distance over the
  landscape's span), on ln(objective) - the objective is FLOPs to the target (a miss: the
  product's surrogate, above a whole budget), so savings interpolate multiplicatively. A failed
  run (objective inf) is left out of its seed's fit. A proposal exactly on a recorded
  configuration (distance 0) gets that configuration's recorded value, bitwise.
- Ceilings stay the recorded ones (replay_metrics.ceilings): `best` is the best recorded
  configuration's saving on the scoring seed, `selector` the selection seed's best recorded
  configuration scored there. A prediction is a convex combination of recorded ln-objectives,
  so it never beats the best recorded configuration on its seed (a proposal can at most reach the
  `best` ceiling; it may still beat `selector`, as a recorded configuration can); the clip in
  `saving` only guards rounding.

An off-grid incumbent is named `<nearest config id>~<trial number>` in the trace (a recorded
one keeps its id); `score_series` adds each such name's predicted saving on the scoring seed to
the recorded savings, so replay_metrics' regret and compute-to-within read it unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from replay_metrics import Landscape
from replay_strategies import SnapTable

from progtune.results import flops_to_target, saving

K_NEIGHBOURS = 8
POWER = 2.0  # inverse-distance weight 1 / d**POWER


class Surrogate:
    """Per-seed IDW k-NN on ln(objective) over the SnapTable's configurations."""

    def __init__(self, land: Landscape, snap: SnapTable, k: int = K_NEIGHBOURS):
        self.land, self.snap, self.k = land, snap, k
        self.objectives = {
            s: np.array([land.objective(c, s) for c in snap.ids]) for s in land.seeds
        }
        self.c_ref = {
            s: flops_to_target(land.reference(s).rows(), land.reference(s).final_loss)
            for s in land.seeds
        }
        self.best = {s: max(land.saving(c, s) for c in snap.ids) for s in land.seeds}

    def point(
        self, overrides: dict[str, Any], tried: frozenset[str] = frozenset()
    ) -> tuple[str, float, dict[int, float]]:
        """The nearest configuration (`tried` plays no part), its distance, and the predicted
        objective on each seed."""
        d = self.snap.distances(overrides)
        i = int(np.argmin(d))
        values = {s: self.predict(d, s) for s in self.land.seeds}
        return self.snap.ids[i], float(d[i]), values

    def predict(self, d: np.ndarray, seed: int) -> float:
        """Predicted objective on `seed` at a point at distances `d` from the configurations."""
        obj = self.objectives[seed]
        ok = np.isfinite(obj)
        exact = np.flatnonzero(d <= 1e-12)
        if len(exact):
            return float(obj[exact[0]])  # on a recorded configuration: its value (even inf)
        if not ok.any():
            return math.inf
        idx = np.flatnonzero(ok)
        near = idx[np.argsort(d[idx], kind="stable")[: self.k]]
        w = 1.0 / d[near] ** POWER
        return float(np.exp(np.sum(w * np.log(obj[near])) / np.sum(w)))

    def saving(self, objective: float, seed: int) -> float:
        """The saving of a predicted objective on `seed`, at most the best recorded one."""
        value = saving(objective, self.c_ref[seed])
        if value is None:
            return -math.inf
        return min(value, self.best[seed])

    def score_series(self, score: pd.Series, trials: list, seed: int) -> pd.Series:
        """Recorded savings on `seed` plus each off-grid trial's predicted saving (by its key)."""
        extra = {
            t.key: self.saving(t.values[seed], seed)
            for t in trials
            if t.values is not None and t.key not in score.index
        }
        return pd.concat([score, pd.Series(extra, dtype=float)]) if extra else score
