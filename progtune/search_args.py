"""The `progtune search` command line: its flags, grouped by concern, in their `--help` order."""

from __future__ import annotations

import argparse

# Early stopping by ASHA: rungs in cumulative FLOPs, or in FLOPs after a trial's last growth.
ASHA_SCHEDULERS = ("asha", "asha-after-growth")

DEFAULT_SPACE = "apollo"
DEFAULT_STORAGE = "results"


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    """Add `search` to the subcommands. The groups run in this order so `--help` lists the flags
    as it always has."""
    p = sub.add_parser("search", help="search progressive schedules with Ray Tune + Optuna")
    _what_to_search(p)
    _where_to_run(p)
    _stopping(p)
    _resources(p)
    _search_control(p)
    from progtune.tracking import add_log_flags

    add_log_flags(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="pin knobs for every trial; a pinned knob is not searched",
    )


def _what_to_search(p: argparse.ArgumentParser) -> None:
    """The space, the configuration every trial starts from, and how many trials."""
    from progtune.config import PRESETS

    p.add_argument(
        "--space",
        default=None,
        metavar="NAME|FILE",
        help="apollo (default), methods, smoke, or a .py file with define(trial)",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        metavar="NAME",
        help="starting point for every trial (default cpu-small)",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of knobs applied to all")
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        metavar="N",
        help="trials besides the reference run (default 8; fixed-point spaces: one per point)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        metavar="K",
        help="trials at once (default: as many as the resources allow)",
    )


def _where_to_run(p: argparse.ArgumentParser) -> None:
    """Where results go, which Ray runs the trials, and whether this run starts, resumes or only
    plans."""
    p.add_argument(
        "--storage",
        default=None,
        metavar="PATH|URI",
        help=f"results root: a folder (default ./{DEFAULT_STORAGE}) or s3://, gs://",
    )
    p.add_argument("--name", default=None, help="experiment name (default SPACE-PRESET-TIME)")
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="join a running Ray cluster (`auto` on a cluster head); default: a "
        "private local Ray on 127.0.0.1",
    )
    p.add_argument(
        "--optuna-storage",
        default=None,
        metavar="URL",
        help="Optuna study in this database (sqlite:///FILE, postgresql://, mysql://) for "
        "optuna-dashboard URL; default: a journal file in the experiment folder",
    )
    p.add_argument("--resume", action="store_true", help="continue experiment --name")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the configurations, their FLOPs and time; start nothing",
    )


def _stopping(p: argparse.ArgumentParser) -> None:
    """The target, and when a trial or the whole search stops."""
    p.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="X",
        help="target held-out loss (default: the reference run's final loss)",
    )
    p.add_argument(
        "--stop-at-target",
        action="store_true",
        help="end a trial once it reaches the target (objective unchanged)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="stop starting/continuing trials after S seconds",
    )


def _resources(p: argparse.ArgumentParser) -> None:
    """What one trial holds while it runs."""
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs per trial; also its torch threads (default 1); with --workers-per-trial, "
        "per worker",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per trial: a fraction or 1 trains in one process; G > 1 trains on G "
        "data-parallel workers of one GPU each (default 1 when the cluster has or can add "
        "GPUs, else 0)",
    )
    p.add_argument(
        "--workers-per-trial",
        type=int,
        default=None,
        metavar="N",
        help="train each trial on N data-parallel workers (Ray Train, DDP; gloo on CPU, one GPU "
        "each on GPUs) that split its global batch (default 1: one process)",
    )


def _search_control(p: argparse.ArgumentParser) -> None:
    """Early stopping, the sampler's seed and retries of failed trials."""
    p.add_argument(
        "--scheduler",
        choices=["none", *ASHA_SCHEDULERS],
        default="none",
        help="early stopping: asha measured in cumulative FLOPs; asha-after-growth in FLOPs "
        "after a trial's last growth, so no schedule is stopped in its cheap early stages "
        "(default none)",
    )
    p.add_argument(
        "--sampler",
        choices=["tpe", "random", "qmc", "gp"],
        default=None,
        help="Optuna sampler proposing the trials (default tpe, or the resumed search's; "
        "gp needs scipy)",
    )
    p.add_argument("--search-seed", type=int, default=0, help="seed of Optuna's sampler")
    p.add_argument(
        "--reference",
        default=None,
        metavar="EXPERIMENT",
        help="reuse the finished reference run of EXPERIMENT (a name in --storage, or its "
        "folder/URI); default: any matching one in --storage, else train one",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a failed trial from its last checkpoint (default 2)",
    )
