"""`progtune confirm` and `progtune export`: re-run the winners on fresh seeds; save a model."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
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
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished confirm run of RESULTS after a crash or Ctrl-C (its saved "
        "configurations and seeds: finished runs kept, unfinished ones from their checkpoints)",
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


@dataclasses.dataclass
class ConfirmPlan:
    """What one confirm run trains, saved beside Tune's folder for it so `--resume` continues it.

    `run` is that folder (`confirm-DATE-TIME`); `sources` the configurations, each a trial id
    and its knobs; `finished` stays False until the run ends without an interruption."""

    run: str
    sources: list[dict[str, Any]]
    seeds: list[int]
    target_loss: float | None
    finished: bool = False

    def save(self, exp_uri: str) -> None:
        from progtune.experiment_storage import write_text

        write_text(f"{exp_uri}/{self.run}.json", json.dumps(dataclasses.asdict(self), indent=1))


def unfinished_confirm_run(exp_uri: str) -> ConfirmPlan | None:
    """The newest confirm run of the experiment that did not end (a crash, Ctrl-C), or None."""
    import pyarrow.fs as pafs

    from progtune.experiment_storage import open_storage, read_text

    fs, path = open_storage(exp_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.base_name.startswith("confirm-") and i.base_name.endswith(".json")
    )
    for name in reversed(names):
        text = read_text(f"{exp_uri}/{name}")
        plan = ConfirmPlan(**json.loads(text)) if text else None
        if plan is not None and not plan.finished:
            return plan
    return None


def run_confirm(args: argparse.Namespace) -> int:
    if args.top < 1 or args.seeds < 1:
        raise ProgtuneError("--top and --seeds must be >= 1")
    exp_uri, storage, name = _experiment(args.results)
    unfinished = unfinished_confirm_run(exp_uri)
    if args.resume and unfinished is None:
        raise ProgtuneError(
            f"{args.results} has no unfinished confirm run to resume; run progtune confirm "
            "without --resume"
        )
    if not args.resume and unfinished is not None:
        raise ProgtuneError(
            f"{args.results} has an unfinished confirm run ({unfinished.run}); continue it with: "
            f"progtune confirm {shlex.quote(args.results)} --resume"
        )
    plan = unfinished if args.resume else _new_plan(args, exp_uri)
    assert plan is not None
    from progtune.search_state import SearchSettings
    from progtune.spaces import Space

    points = [dict(_config_key(r)) for r in plan.sources]
    settings = SearchSettings(
        space=Space("confirm", "confirm", "", lambda trial: {}, None, "top configurations"),
        base=from_flat(points[0]),
        pinned={},
        name=name,
        storage=storage,
        num_samples=len(points) * len(plan.seeds),
        max_concurrent=args.max_concurrent,
        address=args.address,
        resume=args.resume,
        target_loss=plan.target_loss,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        points=points,
        point_seeds=plan.seeds,
        role="confirm",
        tune_subdir=plan.run,
    )
    return _run(settings, plan, args.results)


def _new_plan(args: argparse.Namespace, exp_uri: str) -> ConfirmPlan:
    """The configurations and fresh seeds of a new confirm run, and the target it reuses."""
    from progtune.results import read_trials

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
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    sources = [{"trial_id": r["trial_id"], **dict(_config_key(r))} for r in best]
    # Plain JSON values: lists for tuples, Python numbers for numpy's.
    sources = json.loads(json.dumps(sources, default=_json_value))
    return ConfirmPlan(
        f"confirm-{stamp}", sources, [int(s) for s in seeds], None if len(ref) else float(target)
    )


def _json_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else list(value)


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


def _run(settings: Any, plan: ConfirmPlan, results: str) -> int:
    from progtune.data import prepare_data
    from progtune.local_ray import prepare_ray_env

    data = prepare_data(settings.base.data)
    best, seeds = plan.sources, plan.seeds
    doing = "continuing" if settings.resume else "confirming"
    print(f"{doing} {len(best)} configuration(s) of {settings.name} on seeds {seeds} "
          f"({len(best) * len(seeds)} runs, role confirm, {plan.run})", flush=True)  # fmt: skip
    plan.save(settings.exp_uri)  # before Ray starts: a crash from here on can be resumed
    tmp_root = prepare_ray_env(settings.address)
    from progtune.tuning import run_search

    code, state = run_search(settings, data, tmp_root)
    if code != 130:
        plan.finished = True
        plan.save(settings.exp_uri)
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
        print(f"\ninterrupted; continue with:\n  progtune confirm {shlex.quote(results)} --resume",
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
