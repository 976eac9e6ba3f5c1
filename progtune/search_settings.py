"""`progtune search`'s inputs checked and turned into SearchSettings, and the settings file that
`--resume` reads back."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from progtune.config import Config, flatten, parse_assignments, resolve
from progtune.errors import ProgtuneError
from progtune.search_args import ASHA_SCHEDULERS, DEFAULT_SPACE, DEFAULT_STORAGE
from progtune.tracking import check_backends

if TYPE_CHECKING:
    from progtune.search_state import SearchSettings
    from progtune.spaces import Space

SETTINGS_FILE = "search.json"


def build_settings(
    args: argparse.Namespace,
) -> tuple[SearchSettings, str | None, str | None]:
    """Everything checked and decided; nothing written, no Ray started (with `--address` and a
    local `--storage` the cluster is joined for a moment to see where trials may run).

    Returns the settings, the preset and the config file (both saved for `--resume`)."""
    _check_flags(args)
    pinned_raw = parse_assignments(args.overrides)
    storage = args.storage or DEFAULT_STORAGE
    saved = _saved_settings(args.name, storage) if args.resume else None
    space = _load_space(args, saved)
    if saved:
        preset = args.preset or saved["preset"]
        pinned_raw = {**saved["pinned"], **pinned_raw}
        config_file = args.config or saved.get("config_file")
    else:
        preset, config_file = args.preset, args.config
    base = resolve(preset, config_file, pinned_raw)
    _check_workers(args, base, _workers(args, saved or {}))
    flat = flatten(base)
    pinned = {k: flat[k] for k in pinned_raw}  # typed values of the pinned knobs
    points = _check_space_draws(space, base, pinned, args.search_seed)
    if not args.dry_run:
        _check_local_storage_on_cluster(args.address, storage)  # before the probe writes
    storage = _check_storage(storage) if not args.dry_run else storage
    optuna_url = args.optuna_storage or (saved or {}).get("optuna_storage")
    optuna_url = _check_optuna_storage(optuna_url, args.dry_run) if optuna_url else None
    name = args.name or f"{space.name}-{preset or 'cpu-small'}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = _new_settings(args, space, base, pinned, points, saved or {}, storage, name)
    settings.optuna_storage = optuna_url
    if not args.resume and not args.dry_run and _read_text(_settings_path(settings.exp_uri)):
        raise ProgtuneError(
            f"experiment {name!r} already exists in {storage}; pass --resume to continue it or "
            "choose another --name"
        )
    return settings, preset, config_file


def _check_flags(args: argparse.Namespace) -> None:
    """The flags that are wrong on their own, before anything is read."""
    if args.num_samples is not None and args.num_samples < 1:
        raise ProgtuneError("--num-samples must be >= 1")
    if args.max_concurrent < 0:
        raise ProgtuneError("--max-concurrent must be >= 0 (0 = as many as fit)")
    if args.cpus_per_trial <= 0:
        raise ProgtuneError("--cpus-per-trial must be > 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ProgtuneError("--gpus-per-trial must be >= 0")
    workers = 1 if args.workers_per_trial is None else args.workers_per_trial
    trial_layout(workers, args.gpus_per_trial)  # the two flags contradict each other
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
    if args.sampler == "gp" and not _scipy_installed():
        raise ProgtuneError(
            "--sampler gp needs scipy (Optuna's GPSampler): pip install 'progtune[gp]'"
        )
    check_backends(getattr(args, "log", None))  # --log's extras installed


def _scipy_installed() -> bool:
    try:
        return importlib.util.find_spec("scipy") is not None
    except ValueError:  # sys.modules["scipy"] is None: its import is blocked
        return False


def _load_space(args: argparse.Namespace, saved: dict[str, Any] | None) -> Space:
    """`--space`, else the resumed experiment's, else the default; a resumed space unchanged."""
    from progtune.spaces import load_space

    space_spec = args.space or (saved["space_spec"] if saved else DEFAULT_SPACE)
    space = load_space(space_spec)
    if saved and saved["space_sha256"] != space.sha256:
        raise ProgtuneError(
            f"search space {space_spec} changed since experiment {args.name!r} began; "
            "restore the original file or start a new --name"
        )
    return space


def _check_space_draws(
    space: Space, base: Config, pinned: dict[str, Any], search_seed: int
) -> list[dict[str, Any]]:
    """A fixed-point space's points, each built once; other spaces draw every starting point (or
    one) now, so a broken space is bad input found before anything is written."""
    if space.points is not None:
        from progtune.spaces import build_config, check_overrides

        points = [check_overrides(space.name, p, pinned) for p in space.points(base)]
        for p in points:
            build_config(space.name, base, p)
        return points
    from progtune.spaces import sample_configs, start_points

    n_starts = len(start_points(space, base, pinned))
    sample_configs(space, base, pinned, max(1, n_starts), search_seed)
    return []


def _new_settings(
    args: argparse.Namespace,
    space: Space,
    base: Config,
    pinned: dict[str, Any],
    points: list[dict[str, Any]],
    saved: dict[str, Any],
    storage: str,
    name: str,
) -> SearchSettings:
    """The flags and the resumed experiment's saved values (trial count, target) as settings."""
    from progtune.search_state import SearchSettings

    num_samples = args.num_samples or saved.get("num_samples") or (len(points) if points else 8)
    return SearchSettings(
        space=space,
        base=base,
        pinned=pinned,
        name=name,
        storage=storage,
        num_samples=num_samples,
        max_concurrent=args.max_concurrent,
        address=args.address,
        resume=args.resume,
        target_loss=args.target_loss if args.target_loss is not None else saved.get("target_loss"),
        stop_at_target=args.stop_at_target,
        time_budget_s=args.time_budget,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=_workers(args, saved),
        scheduler=args.scheduler,
        search_seed=args.search_seed,
        sampler=args.sampler or saved.get("sampler") or "tpe",
        reference=args.reference,
        max_failures=args.max_failures,
        points=points,
        log=check_backends(getattr(args, "log", None)),
        log_dir=getattr(args, "log_dir", None),
    )


def trial_layout(workers: int, gpus: float | None) -> tuple[int, float | None]:
    """(workers, GPUs per worker) of one trial from --workers-per-trial and --gpus-per-trial
    (the trial's GPUs in all); GPUs per worker None: decided once Ray sees the cluster (one per
    worker where it has GPUs, else none). Contradictions are bad input.

    G <= 1 with one worker: one process on a share of a GPU (or on the CPU). G > 1: G workers of
    one GPU each. N workers on GPUs: one whole GPU each (NCCL puts one rank on one device)."""
    if workers < 1:
        raise ProgtuneError("--workers-per-trial must be >= 1")
    if gpus is None or gpus == 0:
        return workers, gpus
    if gpus > 1 and gpus != int(gpus):
        raise ProgtuneError(
            f"--gpus-per-trial {gpus:g} above 1 must be a whole number: each data-parallel "
            "worker holds one GPU"
        )
    if gpus > 1 and workers == 1:
        return int(gpus), 1.0
    if workers > 1 and gpus != workers:
        raise ProgtuneError(
            f"--workers-per-trial {workers} with --gpus-per-trial {gpus:g}: each worker on GPUs "
            f"holds one whole GPU; pass --gpus-per-trial {workers}, or 0 for CPU workers"
        )
    return workers, gpus / workers


def _check_workers(args: argparse.Namespace, base: Config, workers: int) -> None:
    """Every worker trains an equal share of each global micro-batch: the batch must split.
    ASHA stops trials by ending their processes; a stopped trial's Train workers are then freed
    only by Ray Train's cleaner, which asks the dashboard's State API: a cluster has it, the
    private local Ray runs without it (its CPUs would stay held until the search ends)."""
    if workers == 1:
        return
    from progtune.data_parallel import check_split

    check_split(base.budget.batch_size, workers)
    if args.scheduler in ASHA_SCHEDULERS and args.address is None:
        raise ProgtuneError(
            f"--scheduler {args.scheduler} with --workers-per-trial above 1 needs a Ray cluster "
            "(--address): a local Ray cannot free a stopped trial's workers; drop one of them"
        )


def _workers(args: argparse.Namespace, saved: dict[str, Any]) -> int:
    """Workers per trial: the flag, else a resumed search's (its trials' checkpoints are those
    of that many workers), else 1; --gpus-per-trial G > 1 with one worker means G."""
    workers = args.workers_per_trial
    if workers is None:
        workers = saved.get("workers_per_trial") or 1
    return trial_layout(workers, args.gpus_per_trial)[0]


# ---------------------------------------------------------------------------- storage
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


def _check_optuna_storage(url: str, dry_run: bool) -> str:
    """`--optuna-storage`: an Optuna RDB URL, opened now (its tables made) unless a dry run; a
    relative SQLite path made absolute, so `--resume` from another folder finds the same file."""
    import sqlalchemy

    parsed = None
    try:
        parsed = sqlalchemy.engine.make_url(url)
        db = parsed.database
        if parsed.get_backend_name() == "sqlite" and db and db != ":memory:":
            url = parsed.set(database=os.path.abspath(db)).render_as_string(hide_password=False)
        if not dry_run:
            import optuna

            optuna.storages.RDBStorage(url).remove_session()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = parsed.password if parsed is not None else None
        shown = url.replace(f":{password}@", ":***@") if password else url
        raise ProgtuneError(
            f"--optuna-storage {shown} cannot be opened ({first}); give an Optuna database URL "
            "such as sqlite:///optuna.db or postgresql://user:pass@host/db"
        ) from None
    return url


def _check_local_storage_on_cluster(address: str | None, storage: str) -> None:
    """A local folder is seen by this machine only: trials on other machines could not write
    their checkpoints and results there, nor a restarted trial read them back."""
    if address is None or "://" in storage:
        return
    from progtune.local_ray import prepare_ray_env

    prepare_ray_env(address)  # before `import ray`
    from progtune.ray_cluster import multi_machine_reason

    reason = multi_machine_reason(address)
    if reason:
        raise ProgtuneError(
            f"--storage {storage} is a local folder, but {reason}; pass --storage "
            "s3://BUCKET/PATH (or gs://...) that every node can reach"
        )


def _saved_settings(name: str, storage: str) -> dict[str, Any]:
    """The settings file of experiment `name` that `--resume` continues."""
    storage_uri = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    text = _read_text(_settings_path(f"{storage_uri.rstrip('/')}/{name}"))
    if text is None:
        raise ProgtuneError(
            f"no experiment {name!r} in {storage}; check --name/--storage or start it "
            "without --resume"
        )
    return json.loads(text)


def save_settings(settings: SearchSettings, preset: str | None, config_file: str | None) -> None:
    """Write what `--resume` needs to rebuild these settings, into the experiment folder."""
    doc = {
        "space_spec": settings.space.source.removeprefix("progtune.search_spaces."),
        "space_sha256": settings.space.sha256,
        "preset": preset,
        "config_file": config_file,
        "pinned": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.pinned.items()},
        "num_samples": settings.num_samples,
        "target_loss": settings.target_loss,
        "sampler": settings.sampler,
        "optuna_storage": settings.optuna_storage,
        "workers_per_trial": settings.workers_per_trial,
    }
    _write_text(_settings_path(settings.exp_uri), json.dumps(doc, indent=1))


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
