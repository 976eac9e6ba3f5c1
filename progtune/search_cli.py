"""`progtune search`: check every input before Ray starts, dry-run, run, print the ranking.

The parser lives in search_args.py, the checks and the settings file in search_settings.py, the
dry run in dry_run.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from progtune.config import list_text
from progtune.search_settings import build_settings, save_settings


def ranking_lines(state: Any) -> list[str]:
    """Every search trial of `state` (its `trial_rows()`), best first: those that reached the
    target by FLOPs to target, then the rest by final loss (no loss last)."""
    rows = [r for r in state.trial_rows() if r["role"] != "reference"]
    reached = sorted(
        (r for r in rows if r["flops_to_target"] is not None), key=lambda r: r["flops_to_target"]
    )
    missed = sorted(
        (r for r in rows if r["flops_to_target"] is None),
        key=lambda r: (r["final_eval_loss"] is None, r["final_eval_loss"] or 0),
    )
    out = [
        f"{'rank':>4} {'trial':<18} {'status':<9} {'FLOPs to target':>15} {'saving':>7} "
        f"{'final loss':>10}  schedule"
    ]
    out += [_ranking_line(i, r) for i, r in enumerate(reached + missed, 1)]
    return out


def _ranking_line(rank: int, r: dict[str, Any]) -> str:
    ftt = f"{r['flops_to_target']:.3e}" if r["flops_to_target"] is not None else "not reached"
    sav = f"{r['saving']:.1%}" if r["saving"] is not None else "-"
    loss = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
    sched = (
        f"{list_text(r['stages.unique_layers'])} @ {list_text(r['stages.boundaries']) or '-'}, "
        f"{r['sampling.strategy']}, {r['growth.operator']}, lr {r['lr.peak']:.2g}"
    )
    return f"{rank:>4} {r['trial_id']:<18} {r['status']:<9} {ftt:>15} {sav:>7} {loss:>10}  {sched}"


def run_search(args: argparse.Namespace) -> int:
    """`progtune search`: exit 0 done, 1 when a trial or the reference run failed, 130 when
    interrupted (printing the command that resumes it); bad input raises ProgtuneError."""
    settings, preset, config_file = build_settings(args)
    if args.dry_run:
        from progtune.dry_run import dry_run

        return dry_run(settings)
    from progtune.data import prepare_data
    from progtune.local_ray import prepare_ray_env

    data = prepare_data(settings.base.data)
    print(
        f"data: {len(data.train):,} training / {len(data.val):,} held-out tokens, "
        f"fingerprint {data.fingerprint}",
        flush=True,
    )
    settings = _with_reference_to_reuse(settings, data)
    save_settings(settings, preset, config_file)
    print(
        f"experiment {settings.name}: space {settings.space.name}, "
        f"{settings.num_samples} trials + reference, results in {settings.exp_uri}",
        flush=True,
    )
    tmp_root = prepare_ray_env(settings.address)
    from progtune.tuning import run_search as tune_run  # imports ray: after the environment

    code, state = tune_run(settings, data, tmp_root)
    target, ref = state.target, state.reference
    print(
        f"\ntarget loss: {target:.4f}"
        if target is not None
        else "\ntarget loss: unknown (the reference run did not finish)"
    )
    if ref is not None and ref.status == "failed":
        from progtune.reference_run import failed_for_good_line

        print(failed_for_good_line(ref.error, target), file=sys.stderr)
    print("\n".join(ranking_lines(state)))
    print(f"\nresults: {state.trials_path}\n         {state.curves_path}")
    if code == 130:
        resume = ["progtune", "search", "--resume", "--name", settings.name]
        resume += ["--storage", settings.storage]
        print(f"\ninterrupted; continue with:\n  {shlex.join(resume)}", file=sys.stderr)
    return code


def _with_reference_to_reuse(settings: Any, data: Any) -> Any:
    """`settings` naming a matching finished reference run in the same storage, if any
    (`--reference` names one; a named one that does not match is bad input)."""
    import dataclasses

    from progtune.reference_reuse import expected_key, find_reference

    source = find_reference(settings, expected_key(settings, data))
    return dataclasses.replace(settings, reference_source=source)
