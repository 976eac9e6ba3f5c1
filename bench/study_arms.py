"""What each run of the Apollo-vs-scratch study trains: shared settings, arms, searched config.

Used by bench/apollo_vs_scratch.py; no torch at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What every run of the study shares on top of the preset: a fixed held-out set of 96 windows
# evaluated 12 times (crossings), one thread per worker, a checkpoint only at the end.
STUDY_OVERRIDES = {
    "eval.points": 12,
    "eval.max_tokens": 12_288,
    "runtime.threads": 1,
    "runtime.checkpoint_every": 0,
}
REFERENCE_WARMUP = 0.025
ARM_ORDER = ["searched", "apollo-ref", "apollo", "interp-none", "stacking-none", "apollo-reset",
             "apollo-rewarm", "apollo-half-lr"]  # fmt: skip
# Knobs a searched configuration does not bring along: the study sets them.
_STUDY_KNOBS = ("seed", "budget.tokens", "data.cache_dir")


def apollo_stages(n_layers: int) -> tuple[list[int], list[float]]:
    """The short-run reference schedule 1 -> L/4 -> L/2 -> L at 10/20/50 %, scaled to L layers;
    a stage whose block count equals the previous one's is merged into it."""
    ks, bounds = [1], []
    for k, b in zip(
        (max(1, n_layers // 4), max(1, n_layers // 2), n_layers), (0.1, 0.2, 0.5), strict=False
    ):
        if k > ks[-1]:
            ks.append(k)
            bounds.append(b)
    return ks, bounds


def arms(n_layers: int, best: dict, user: dict, searched: dict | None) -> dict[str, dict]:
    """Arm name -> overrides (on top of the preset, the study settings and the user's KEY=VALUE)."""
    ks, bounds = apollo_stages(n_layers)
    stages = {
        "stages.unique_layers": user.get("stages.unique_layers", ks),
        "stages.boundaries": user.get("stages.boundaries", bounds),
    }
    lr = {"lr.peak": best["lr.peak"], "lr.warmup_fraction": best["lr.warmup_fraction"]}
    apollo = {**stages, **lr, "sampling.strategy": "lvps", "growth.operator": "interpolation"}
    out = {
        "scratch": scratch_overrides(n_layers, best["lr.peak"], best["lr.warmup_fraction"]),
        "apollo-ref": {**apollo, "lr.warmup_fraction": REFERENCE_WARMUP},
        "apollo": apollo,
        "stacking-none": {**apollo, "sampling.strategy": "none", "growth.operator": "stacking"},
        "interp-none": {**apollo, "sampling.strategy": "none"},
        "apollo-reset": {**apollo, "growth.optimizer_state": "reset"},
        "apollo-rewarm": {**apollo, "lr.rewarmup_fraction": 0.05},
        "apollo-half-lr": {**apollo, "lr.peak": best["lr.peak"] / 2},
    }
    if best["lr.warmup_fraction"] == REFERENCE_WARMUP:
        del out["apollo"]  # identical to apollo-ref
    if searched is not None:
        out["searched"] = dict(searched)
    return out


def scratch_overrides(n_layers: int, lr: float, warmup: float) -> dict:
    return {
        "stages.unique_layers": [n_layers],
        "stages.boundaries": [],
        "sampling.strategy": "full",
        "lr.peak": lr,
        "lr.warmup_fraction": warmup,
    }


def searched_config(experiment: str, base_flat: dict) -> tuple[dict, str]:
    """The best configuration of a search experiment as overrides, and a one-line description."""
    from progtune.confirm_cli import _config_key, top_configs
    from progtune.errors import ProgtuneError
    from progtune.results import read_trials

    path = Path(experiment) / "trials.parquet"
    if not path.is_file():
        raise ProgtuneError(f"--searched {experiment}: no trials.parquet; pass a search folder")
    best = top_configs(read_trials(path), 1)
    if not best:
        raise ProgtuneError(f"--searched {experiment} has no completed search trial")
    knobs = {k: v for k, v in _config_key(best[0]) if k not in _STUDY_KNOBS}
    knobs = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}
    for k, v in knobs.items():
        want = base_flat.get(k)
        want = list(want) if isinstance(want, tuple) else want
        if (k.startswith("model.") or k.startswith("data.")) and v != want:
            raise ProgtuneError(
                f"--searched {experiment} trained {k}={v}, the study uses {want}; "
                "run the study with the search's preset and data"
            )
    for k in list(knobs):
        if k.startswith("eval.") or k.startswith("runtime."):
            del knobs[k]  # the study's evaluation and runtime apply
    desc = ", ".join(
        f"{k}={_show(v)}"
        for k, v in knobs.items()
        if k.startswith(("stages.", "sampling.strategy", "growth.", "lr.peak", "lr.warmup"))
        or k == "lr.rewarmup_fraction"
    )
    return knobs, desc


def _show(value: Any) -> str:
    from progtune.config import list_text

    if isinstance(value, list):
        return list_text(tuple(value))
    return format(value, ".4g") if isinstance(value, float) else str(value)


def grid_arm(lr: float, warmup: float) -> str:
    """The arm name of one point of the scratch LR sweep."""
    return f"scratch-lr{lr:g}-w{warmup:g}"
