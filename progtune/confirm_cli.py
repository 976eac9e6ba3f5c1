"""`progtune confirm` and `progtune export`: re-run the winners on fresh seeds; save a model."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from progtune.config import KNOB_TYPES, from_flat, list_text
from progtune.errors import ProgtuneError

# Knobs that say where or how a run executes, not what it trains: never part of a "config".
_NOT_CONFIG = ("seed", "data.cache_dir")


def add_confirm_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("confirm", help="re-run the top K configurations on N fresh seeds")
    c.add_argument("results", metavar="RESULTS", help="an experiment folder or URI")
    c.add_argument("--top", type=int, default=3, metavar="K", help="configurations (default 3)")
    c.add_argument("--seeds", type=int, default=3, metavar="N", help="fresh seeds (default 3)")
    c.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs per run; also its torch threads (default 1)",
    )
    c.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per run (default 1 when the cluster has or can add GPUs, else 0)",
    )
    c.add_argument(
        "--max-concurrent", type=int, default=0, metavar="K", help="runs at once (default: all fit)"
    )
    c.add_argument("--address", default=None, metavar="ADDR", help="join a running Ray cluster")
    c.add_argument(
        "--scratch-budgets",
        default=None,
        metavar="M,M,...",
        help="instead of the top configurations, train the reference run's scratch configuration "
        "to the end at these multiples of its token budget (e.g. 0.5,2; its seed, role confirm): "
        "the report's saving at equal final loss against scratch budgets",
    )

    e = sub.add_parser("export", help="write a trial's final model as a transformers checkpoint")
    e.add_argument("results", metavar="RESULTS", help="an experiment folder")
    e.add_argument("--trial", default="best", metavar="ID|best", help="trial id (default best)")
    e.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")


def _experiment(results: str) -> tuple[str, str, str]:
    """(experiment URI, storage, name) of an experiment folder or URI."""
    uri = results.rstrip("/")
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    storage, _, name = uri.rpartition("/")
    return uri, storage, name


def _config_key(row: dict) -> tuple:
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v)
        for k in KNOB_TYPES
        if k not in _NOT_CONFIG and not k.startswith("runtime.") and (v := row.get(k)) is not None
    )


def top_configs(trials: Any, k: int) -> list[dict]:
    """The K best distinct configurations (search and confirm rows), by objective."""
    rows = [
        r
        for r in trials.to_dict("records")
        if r["role"] in ("search", "confirm")
        and r["status"] == "completed"
        and r["objective"] is not None
        and not (isinstance(r["objective"], float) and math.isnan(r["objective"]))
    ]
    rows.sort(key=lambda r: r["objective"])
    chosen: dict[tuple, dict] = {}
    for r in rows:
        chosen.setdefault(_config_key(r), r)
        if len(chosen) == k:
            break
    return list(chosen.values())


def run_confirm(args: argparse.Namespace) -> int:
    from progtune.results import read_trials
    from progtune.search_state import SearchSettings
    from progtune.spaces import Space

    if args.top < 1 or args.seeds < 1:
        raise ProgtuneError("--top and --seeds must be >= 1")
    exp_uri, storage, name = _experiment(args.results)
    trials = read_trials(f"{exp_uri}/trials.parquet")
    ref = trials[(trials["role"] == "reference") & (trials["status"] == "completed")]
    if args.scratch_budgets is not None:
        best, seeds = scratch_budget_points(ref, args.scratch_budgets, args.results)
    else:
        best = top_configs(trials, args.top)
        if not best:
            raise ProgtuneError(f"{args.results} has no completed search trial to confirm")
        first_fresh = int(trials["seed"].max()) + 1
        seeds = list(range(first_fresh, first_fresh + args.seeds))
    target = None if len(ref) else trials["target_loss"].dropna().max()
    if not len(ref) and (target is None or math.isnan(target)):
        raise ProgtuneError(f"{args.results} has no finished reference run or target loss")
    points = [dict(_config_key(r)) for r in best]
    base = from_flat(dict(_config_key(best[0])))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    settings = SearchSettings(
        space=Space("confirm", "confirm", "", lambda trial: {}, None, "top configurations"),
        base=base,
        pinned={},
        name=name,
        storage=storage,
        num_samples=len(points) * len(seeds),
        max_concurrent=args.max_concurrent,
        address=args.address,
        target_loss=None if len(ref) else float(target),
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        points=points,
        point_seeds=seeds,
        role="confirm",
        tune_subdir=f"confirm-{stamp}",
    )
    return _run(settings, best, seeds)


def scratch_budget_points(ref: Any, text: str, results: str) -> tuple[list[dict], list[int]]:
    """The reference run's row at each budget multiple in `text` ("0.5,2"), and its seed."""
    try:
        multiples = [float(m) for m in text.split(",") if m.strip()]
    except ValueError:
        multiples = []
    if not multiples or not all(math.isfinite(m) and m > 0 and m != 1 for m in multiples):
        raise ProgtuneError(
            f"--scratch-budgets {text!r}: give positive multiples of the reference's budget "
            "other than 1, comma-separated (e.g. 0.5,2)"
        )
    if not len(ref):
        raise ProgtuneError(f"{results} has no finished reference run to train at other budgets")
    row = ref.to_dict("records")[0]
    tokens = int(row["budget.tokens"])
    rows = [
        {**row, "trial_id": f"reference x{m:g}", "budget.tokens": max(1, round(tokens * m))}
        for m in multiples
    ]
    return rows, [int(row["seed"])]


def _run(settings: Any, best: list[dict], seeds: list[int]) -> int:
    from progtune.data import prepare_data
    from progtune.local_ray import prepare_ray_env

    data = prepare_data(settings.base.data)
    print(f"confirming {len(best)} configuration(s) of {settings.name} on seeds {seeds} "
          f"({len(best) * len(seeds)} runs, role confirm)", flush=True)  # fmt: skip
    tmp_root = prepare_ray_env(settings.address)
    from progtune.tuning import run_search

    code, state = run_search(settings, data, tmp_root)
    rows = [r for r in state.trial_rows() if r["role"] == "confirm"]
    print(f"\n{'configuration':<60} {'reached':>8} {'mean FLOPs to target':>21}")
    for source in best:
        key = _config_key(source)
        runs = [r for r in rows if _config_key(r) == key]
        reached = [r["flops_to_target"] for r in runs if r["flops_to_target"] is not None]
        mean = f"{sum(reached) / len(reached):.3e}" if reached else "-"
        label = (f"{source['trial_id']}: {list_text(tuple(source['stages.unique_layers']))}, "
                 f"{source['sampling.strategy']}, lr {source['lr.peak']:.2g}")  # fmt: skip
        print(f"{label:<60} {len(reached):>3}/{len(runs):<4} {mean:>21}")
    print(f"results: {state.trials_path} (role confirm)")
    if code == 130:
        print("interrupted; confirm runs are not resumable: run progtune confirm again",
              file=sys.stderr)  # fmt: skip
    return code


def run_export(args: argparse.Namespace) -> int:
    import pyarrow.fs as pafs

    from progtune.data import prepare_data
    from progtune.results import read_trials
    from progtune.train_cli import export_model

    exp_uri, _, _ = _experiment(args.results)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ProgtuneError(f"--out {args.out} is not empty; choose a new folder")
    trials = read_trials(f"{exp_uri}/trials.parquet")
    if args.trial == "best":
        best = top_configs(trials, 1)
        if not best:
            raise ProgtuneError(f"{args.results} has no completed trial to export")
        row = best[0]
    else:
        match = trials[trials["trial_id"] == args.trial]
        if not len(match):
            raise ProgtuneError(
                f"no trial {args.trial!r} in {args.results}; pick one of "
                f"{', '.join(trials['trial_id'])} or best"
            )
        row = match.to_dict("records")[0]
    if row["role"] == "reference":
        raise ProgtuneError("the reference run keeps no checkpoint; export a search trial")
    fs, base = pafs.FileSystem.from_uri(exp_uri if "://" in exp_uri else f"file://{exp_uri}")
    # Search trials live in the experiment folder, confirm trials in its confirm-* sub-folders.
    listing = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    marker = f"/trial_{row['trial_id']}/checkpoint_"
    ckpts = sorted(
        i.path for i in listing if i.type == pafs.FileType.Directory and marker in i.path + "/"
        and i.base_name.startswith("checkpoint_")
    )  # fmt: skip
    if not ckpts:
        raise ProgtuneError(f"trial {row['trial_id']} has no checkpoint in {args.results}")
    cfg = from_flat({k: v for k, v in row.items() if k in KNOB_TYPES and v is not None})
    local = Path(ckpts[-1]) if "://" not in exp_uri else _download(fs, ckpts[-1], out)
    export_model(cfg, prepare_data(cfg.data), local, out)
    print(f"exported trial {row['trial_id']} ({shlex.quote(str(out))}): load it with "
          "transformers' AutoModelForCausalLM / AutoModelForMaskedLM.from_pretrained")  # fmt: skip
    return 0


def _download(fs: Any, path: str, out: Path) -> Path:
    import tempfile

    import pyarrow.fs as pafs

    local = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=out.parent if out.parent.exists() else None))
    pafs.copy_files(path, str(local), source_filesystem=fs)
    return local
