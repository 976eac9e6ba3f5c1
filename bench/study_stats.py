"""Statistics of the Apollo-vs-scratch study (bench/apollo_vs_scratch.py); no torch, no Ray.

Every saving is paired: a method run on seed s is compared with the scratch run on seed s.
- crossing saving: 1 - (FLOPs at which the method's held-out curve first reaches the target) /
  (the same for scratch), target = the scratch run's final held-out loss (curve evaluation);
  crossings by progtune.results.flops_to_target, the rule the product's reports use.
  An upper bound on the real saving (a point mid-way through a long schedule is not a run trained
  to that budget), so it is reported beside:
- equal-final-loss saving: 1 - F_method / F_scratch(L_method), where F_scratch(L) interpolates
  log FLOPs linearly in final loss between separately trained scratch budgets of the same seed
  (large final evaluation). Beyond the measured scratch budgets it is a bound, never extrapolated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

# Two-sided 95 % Student t quantiles by degrees of freedom (n - 1); 1.96 beyond the table.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample sd, 95 % t-interval of the mean (None below 2 values), min, max, n."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "lo": None, "hi": None, "min": None, "max": None}
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n) if sd is not None else None
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "lo": None if half is None else mean - half,
        "hi": None if half is None else mean + half,
        "min": min(xs),
        "max": max(xs),
    }


def equal_loss_flops(
    points: Sequence[tuple[float, float]], loss: float
) -> tuple[float | None, str]:
    """FLOPs scratch needs to end at `loss`, from (flops, final loss) of separately trained
    budgets: log-linear interpolation between the first bracketing pair (by FLOPs).

    Returns (flops, kind): kind "interpolated"; "beyond" when `loss` is below every scratch
    point (flops = the largest budget: scratch needs more, the saving is a lower bound);
    "short" when above every point (flops = the smallest budget: the saving is an upper bound);
    (None, "none") without points."""
    pts = sorted((f, v) for f, v in points if f and v is not None and math.isfinite(v))
    if not pts:
        return None, "none"
    if loss < min(v for _, v in pts):
        return pts[-1][0], "beyond"
    if loss > max(v for _, v in pts):
        return pts[0][0], "short"
    for (f0, l0), (f1, l1) in itertools.pairwise(pts):
        if (l0 - loss) * (l1 - loss) <= 0:
            frac = 0.0 if l0 == l1 else (l0 - loss) / (l0 - l1)
            return math.exp(math.log(f0) + frac * (math.log(f1) - math.log(f0))), "interpolated"
    return pts[0][0], "interpolated"  # loss equals a point that brackets nothing: take the first


def paired_se(a: dict | None, b: dict | None) -> float | None:
    """Standard error of (loss a - loss b) from per-batch losses of two final evaluations on the
    same batches; None when either lacks them. Content differences between batches cancel."""
    if not a or not b or "batch_losses" not in a or "batch_losses" not in b:
        return None
    da, db, w = a["batch_losses"], b["batch_losses"], a["batch_weights"]
    if len(da) != len(db) or len(da) < 2:
        return None
    diffs = [x - y for x, y in zip(da, db, strict=True)]
    total = sum(w)
    mean = sum(d * wi for d, wi in zip(diffs, w, strict=True)) / total
    var = sum(wi * (d - mean) ** 2 for d, wi in zip(diffs, w, strict=True)) / total
    return math.sqrt(var / (len(diffs) - 1))


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_interval(stats: dict, pct: bool = True) -> str:
    """'48.1 % [41.0, 55.2] (n=3)' or '-' ; intervals need 2 values."""
    if not stats or stats["mean"] is None:
        return "-"
    k = 100.0 if pct else 1.0
    spec = ".1f" if pct else ".3f"
    unit = " %" if pct else ""
    text = f"{stats['mean'] * k:{spec}}{unit}"
    if stats["lo"] is not None:
        text += f" [{stats['lo'] * k:{spec}}, {stats['hi'] * k:{spec}}]"
    return f"{text} (n={stats['n']})"
