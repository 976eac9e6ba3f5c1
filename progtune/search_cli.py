"""`progtune search`: check every input before Ray starts, dry-run, run, print the ranking."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from progtune.config import Config, flatten, list_text, parse_assignments, resolve
from progtune.errors import ProgtuneError

DEFAULT_SPACE = "apollo"
DEFAULT_STORAGE = "results"
SETTINGS_FILE = "search.json"


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    from progtune.config import PRESETS

    p = sub.add_parser("search", help="search progressive schedules with Ray Tune + Optuna")
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
    p.add_argument("--resume", action="store_true", help="continue experiment --name")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the configurations, their FLOPs and time; start nothing",
    )
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
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs per trial; also its torch threads (default 1)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per trial, fractions allowed (default 1 when the cluster has or "
        "can add GPUs, else 0)",
    )
    p.add_argument(
        "--scheduler",
        choices=["none", "asha"],
        default="none",
        help="early stopping: asha measured in cumulative FLOPs (default none)",
    )
    p.add_argument("--search-seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a failed trial from its last checkpoint (default 2)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="pin knobs for every trial; a pinned knob is not searched",
    )


# ---------------------------------------------------------------------------- validation
def _check_storage(storage: str) -> str:
    """Absolute folder or URI, proven writable now - before any trial runs."""
    if "://" in storage:
        import pyarrow.fs as pafs

        probe = f"{storage.rstrip('/')}/.progtune-probe-{uuid.uuid4().hex[:8]}"
        try:
            fs, path = pafs.FileSystem.from_uri(probe)
            fs.create_dir(path.rpartition("/")[0], recursive=True)  # a new folder is fine
            with fs.open_output_stream(path) as f:
                f.write(b"ok")
            fs.delete_file(path)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ProgtuneError(
                f"--storage {storage} is not writable ({first}); check the bucket and credentials"
            ) from None
        return storage.rstrip("/")
    path = Path(storage).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".progtune-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ProgtuneError(
            f"--storage {storage} is not writable ({exc.strerror}); choose a folder you can write"
        ) from None
    return str(path)


def _settings_path(exp_uri: str) -> str:
    return f"{exp_uri}/{SETTINGS_FILE}"


def _read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{uri}")
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _write_text(uri: str, text: str) -> None:
    if "://" not in uri:
        tmp = Path(f"{uri}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, uri)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(path) as f:  # one PUT: atomic on object stores
        f.write(text.encode())


def build_settings(args: argparse.Namespace):
    """Everything checked and decided; nothing written, no Ray started."""
    from progtune.search_state import SearchSettings
    from progtune.spaces import load_space

    if args.num_samples is not None and args.num_samples < 1:
        raise ProgtuneError("--num-samples must be >= 1")
    if args.max_concurrent < 0:
        raise ProgtuneError("--max-concurrent must be >= 0 (0 = as many as fit)")
    if args.cpus_per_trial <= 0:
        raise ProgtuneError("--cpus-per-trial must be > 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ProgtuneError("--gpus-per-trial must be >= 0")
    if args.time_budget is not None and args.time_budget <= 0:
        raise ProgtuneError("--time-budget must be > 0 seconds")
    if args.target_loss is not None and not (
        math.isfinite(args.target_loss) and args.target_loss > 0
    ):
        raise ProgtuneError("--target-loss must be a positive number")
    if args.resume and not args.name:
        raise ProgtuneError("--resume needs --name of the experiment to continue")
    if args.resume and args.dry_run:
        raise ProgtuneError("--resume and --dry-run cannot be combined; drop one")

    pinned_raw = parse_assignments(args.overrides)
    storage = args.storage or DEFAULT_STORAGE
    saved: dict[str, Any] | None = None
    if args.resume:
        storage_uri = storage if "://" in storage else str(Path(storage).expanduser().resolve())
        text = _read_text(_settings_path(f"{storage_uri.rstrip('/')}/{args.name}"))
        if text is None:
            raise ProgtuneError(
                f"no experiment {args.name!r} in {storage}; check --name/--storage or start it "
                "without --resume"
            )
        saved = json.loads(text)
    space_spec = args.space or (saved["space_spec"] if saved else DEFAULT_SPACE)
    space = load_space(space_spec)
    if saved:
        if saved["space_sha256"] != space.sha256:
            raise ProgtuneError(
                f"search space {space_spec} changed since experiment {args.name!r} began; "
                "restore the original file or start a new --name"
            )
        preset = args.preset or saved["preset"]
        pinned_raw = {**saved["pinned"], **pinned_raw}
        config_file = args.config or saved.get("config_file")
    else:
        preset, config_file = args.preset, args.config
    base = resolve(preset, config_file, pinned_raw)
    flat = flatten(base)
    pinned = {k: flat[k] for k in pinned_raw}  # typed values of the pinned knobs
    points = []
    if space.points is not None:
        from progtune.spaces import build_config, check_overrides

        points = [check_overrides(space.name, p, pinned) for p in space.points(base)]
        for p in points:
            build_config(space.name, base, p)
    else:  # draws now (every starting point, or one): a broken space is bad input, found
        # before anything is written
        from progtune.spaces import sample_configs, start_points

        n_starts = len(start_points(space, base, pinned))
        sample_configs(space, base, pinned, max(1, n_starts), args.search_seed)
    num_samples = (
        args.num_samples or (saved or {}).get("num_samples") or (len(points) if points else 8)
    )
    storage = _check_storage(storage) if not args.dry_run else storage
    name = args.name or f"{space.name}-{preset or 'cpu-small'}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SearchSettings(
        space=space,
        base=base,
        pinned=pinned,
        name=name,
        storage=storage,
        num_samples=num_samples,
        max_concurrent=args.max_concurrent,
        address=args.address,
        resume=args.resume,
        target_loss=args.target_loss
        if args.target_loss is not None
        else (saved or {}).get("target_loss"),
        stop_at_target=args.stop_at_target,
        time_budget_s=args.time_budget,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler,
        search_seed=args.search_seed,
        max_failures=args.max_failures,
        points=points,
    )
    if not args.resume and not args.dry_run and _read_text(_settings_path(settings.exp_uri)):
        raise ProgtuneError(
            f"experiment {name!r} already exists in {storage}; pass --resume to continue it or "
            "choose another --name"
        )
    return settings, preset, config_file


def _save_settings(settings: Any, preset: str | None, config_file: str | None) -> None:
    doc = {
        "space_spec": settings.space.source.removeprefix("progtune.search_spaces."),
        "space_sha256": settings.space.sha256,
        "preset": preset,
        "config_file": config_file,
        "pinned": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.pinned.items()},
        "num_samples": settings.num_samples,
        "target_loss": settings.target_loss,
    }
    _write_text(_settings_path(settings.exp_uri), json.dumps(doc, indent=1))


# ---------------------------------------------------------------------------- dry run
def measured_flops_rate(cfg: Config, threads: int) -> float:
    """FLOP/s of this machine on the preset's model: 3 timed full-depth steps (after 1 warm-up)."""
    import torch

    from progtune.model import ProgressiveLM, train_flops
    from progtune.train import make_optimizer, pick_device, use_bf16

    torch.set_num_threads(threads)
    device = pick_device(cfg)
    vocab = cfg.data.vocab_size
    model = ProgressiveLM(cfg.model, vocab, cfg.model.n_layers, "interpolation").to(device)
    opt = make_optimizer(model, cfg, device)
    bf16 = use_bf16(cfg, device)
    x = torch.randint(0, vocab, (cfg.budget.batch_size, cfg.model.seq_len), device=device)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, x)
        loss.value.backward()
        opt.step()
        opt.zero_grad()
        loss.value.item()
        times.append(time.perf_counter() - t0)
    flops = train_flops(cfg.model, vocab, cfg.model.n_layers, x.numel(), loss.n_scored)
    return flops / min(times[1:])


def dry_run(settings: Any) -> int:
    from progtune.budget import planned_flops
    from progtune.search_state import reference_config
    from progtune.spaces import sample_configs
    from progtune.train_cli import describe

    base = settings.base
    configs = sample_configs(
        settings.space, base, settings.pinned, settings.num_samples, settings.search_seed
    )
    threads = max(1, int(settings.cpus_per_trial))
    rate = measured_flops_rate(base, threads)
    vocab = base.data.vocab_size
    print(
        f"dry run of space {settings.space.name} ({settings.num_samples} trials + reference); "
        f"times from a measured {rate / 1e9:.2f} GFLOP/s on {threads} thread(s)"
    )
    if settings.points is None or not settings.points:
        print(
            "(Optuna's first trials are random; later TPE proposals depend on results, so "
            "these are random draws of the space)"
        )
    total_flops = 0.0
    rows = [("reference", reference_config(base))] + [
        (f"trial {i}", c) for i, c in enumerate(configs)
    ]
    for label, cfg in rows:
        f = planned_flops(cfg, vocab)
        total_flops += f
        print(f"{label:>10}: {f:.3e} FLOPs, ~{f / rate:.0f}s  {describe(cfg)}")
    slots = max(1, settings.max_concurrent or (os.cpu_count() or 1) // threads)
    print(
        f"total: {total_flops:.3e} FLOPs, ~{total_flops / rate:.0f}s of trial time, "
        f"~{total_flops / rate / slots:.0f}s wall on {slots} slot(s) (training only)"
    )
    return 0


# ---------------------------------------------------------------------------- ranking
def ranking_lines(state: Any, top: int = 10) -> list[str]:
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
    for i, r in enumerate((reached + missed)[:top], 1):
        ftt = f"{r['flops_to_target']:.3e}" if r["flops_to_target"] is not None else "not reached"
        sav = f"{r['saving']:.1%}" if r["saving"] is not None else "-"
        loss = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        sched = (
            f"{list_text(r['stages.unique_layers'])} @ {list_text(r['stages.boundaries']) or '-'}, "
            f"{r['sampling.strategy']}, {r['growth.operator']}, lr {r['lr.peak']:.2g}"
        )
        out.append(
            f"{i:>4} {r['trial_id']:<18} {r['status']:<9} {ftt:>15} {sav:>7} {loss:>10}  {sched}"
        )
    return out


def run_search(args: argparse.Namespace) -> int:
    settings, preset, config_file = build_settings(args)
    if args.dry_run:
        return dry_run(settings)
    from progtune.data import prepare_data
    from progtune.local_ray import prepare_ray_env

    data = prepare_data(settings.base.data)
    print(
        f"data: {len(data.train):,} training / {len(data.val):,} held-out tokens, "
        f"fingerprint {data.fingerprint}",
        flush=True,
    )
    _save_settings(settings, preset, config_file)
    print(
        f"experiment {settings.name}: space {settings.space.name}, "
        f"{settings.num_samples} trials + reference, results in {settings.exp_uri}",
        flush=True,
    )
    tmp_root = prepare_ray_env(settings.address)
    from progtune.tuning import run_search as tune_run  # imports ray: after the environment

    code, state = tune_run(settings, data, tmp_root)
    target = state.target
    print(
        f"\ntarget loss: {target:.4f}"
        if target is not None
        else "\ntarget loss: unknown (the reference run did not finish)"
    )
    print("\n".join(ranking_lines(state)))
    print(f"\nresults: {state.trials_path}\n         {state.curves_path}")
    if code == 130:
        resume = [
            "progtune",
            "search",
            "--resume",
            "--name",
            settings.name,
            "--storage",
            settings.storage,
        ]
        print(f"\ninterrupted; continue with:\n  {shlex.join(resume)}", file=sys.stderr)
    return code
