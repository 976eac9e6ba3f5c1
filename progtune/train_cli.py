"""`progtune train`: one run from the command line: output folder, progress, resume, export."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from progtune.config import Config, config_hash, list_text, parse_assignments, resolve, to_dict
from progtune.errors import ProgtuneError

CHECKPOINT_SUBDIR = "checkpoint"


def describe(cfg: Config) -> str:
    """One line saying what a config trains."""
    m, s = cfg.model, cfg.stages
    stages = list_text(s.unique_layers)
    if len(s.unique_layers) > 1:
        stages += f" at {list_text(tuple(round(b * 100) for b in s.boundaries))} %"
    return (
        f"{m.arch} {m.n_layers}x{m.d_model}, unique blocks {stages}, depth sampler "
        f"{cfg.sampling.strategy}, growth {cfg.growth.operator}, lr {cfg.lr.peak:g} "
        f"{cfg.lr.schedule}, {cfg.budget.tokens:,} tokens, seed {cfg.seed}"
    )


def progress_line(row: dict[str, Any]) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (
        f"step {row['step']:>6}  tokens {row['tokens']:>11,}  flops {row['flops']:.3e}  "
        f"stage {row['stage']} (k={row['unique_layers']}, "
        f"mean depth {f(row['mean_depth'], '.2f')})  lr {row['lr']:.2e}  "
        f"train {f(row['train_loss'], '.4f')}  eval {f(row['eval_loss'], '.4f')}  "
        f"{row['wall_s']:.1f}s"
    )


def _write_yaml(cfg: Config, path: Path) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def run_train(args: argparse.Namespace) -> int:
    """`progtune train`: resolve the config, train in the output folder, write its Parquet."""
    from progtune.tracking import check_backends

    log_backends = check_backends(getattr(args, "log", None))
    cfg = resolve(args.preset, args.config, parse_assignments(args.overrides))
    _check_workers(cfg, getattr(args, "workers_per_trial", 1))
    out = Path(args.out or f"runs/{args.preset or 'cpu-small'}-{config_hash(cfg)[:8]}")
    ckpt = out / CHECKPOINT_SUBDIR
    _check_output_folders(args, out, ckpt)

    print(f"progtune train: {describe(cfg)}", flush=True)
    data = prepare_and_say(cfg)
    from progtune.batches import epochs_line, planned_epochs

    if planned_epochs(cfg.budget.tokens, len(data.train), cfg.model.seq_len) > 1:  # said once
        print(epochs_line(cfg, len(data.train)), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_yaml(cfg, out / "config.yaml")
    started = dt.datetime.now(dt.UTC)
    result = _tracked_train(args, cfg, data, out, log_backends)
    _write_results(cfg, result, out, started)
    if args.export:
        export_model(cfg, data, ckpt, Path(args.export))
        print(f"exported the final model to {args.export}")
    print(
        f"{result.status}: final held-out loss {result.final_eval_loss}, "
        f"{result.total_flops:.3e} training FLOPs, {result.total_tokens:,} tokens, "
        f"train {result.total_wall_s:.1f}s + eval {result.eval_wall_s:.1f}s + "
        f"checkpoints {result.checkpoint_wall_s:.1f}s\nresults: {out}/trials.parquet, "
        f"{out}/curves.parquet"
    )
    return 0 if result.status == "completed" else 1


def _check_workers(cfg: Config, workers: int) -> None:
    """Refuse, before any work, a worker count the run cannot use."""
    if workers < 1:
        raise ProgtuneError(f"--workers-per-trial must be >= 1, got {workers}")
    from progtune.data_parallel import check_split

    check_split(cfg.budget.batch_size, workers)


def _check_output_folders(args: argparse.Namespace, out: Path, ckpt: Path) -> None:
    """Refuse, before any work, to resume nothing, to overwrite a run or to export into files."""
    if args.resume and not (ckpt / "state.pt").is_file():
        raise ProgtuneError(f"nothing to resume in {out} (no checkpoint); drop --resume to start")
    if not args.resume and ((out / "trials.parquet").exists() or ckpt.exists()):
        raise ProgtuneError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if args.export and Path(args.export).exists() and any(Path(args.export).iterdir()):
        raise ProgtuneError(f"--export folder {args.export} is not empty; choose a new folder")


def _tracked_train(
    args: argparse.Namespace, cfg: Config, data: Any, out: Path, log_backends: tuple[str, ...]
) -> Any:
    """Train, logging the run to the `--log` backends (one tracked run, role `train`)."""
    from progtune.config import flatten
    from progtune.tracking import TrainRun
    from progtune.tracking_backends import open_tracker

    tracker = open_tracker(log_backends, out.name, str(out), getattr(args, "log_dir", None))
    run = TrainRun("train", "train", flatten(cfg))
    try:
        on_row = (lambda row: tracker.log_row(run, row)) if tracker is not None else None
        result = _train_or_say_how_to_resume(args, cfg, data, out, out / CHECKPOINT_SUBDIR, on_row)
        if tracker is not None:
            run.status, run.final = result.status, vars(result)
            tracker.finish(run)
        return result
    finally:
        if tracker is not None:
            tracker.close()


def _train_or_say_how_to_resume(
    args: argparse.Namespace, cfg: Config, data: Any, out: Path, ckpt: Path, on_row: Any = None
) -> Any:
    """Train with progress lines; on Ctrl-C print the command that resumes, then re-raise."""
    from progtune.train import train

    def report(row: dict[str, Any], checkpoint: Path | None) -> None:
        if not args.quiet:
            print(progress_line(row), flush=True)
        if on_row is not None:
            on_row(row)

    run: Any = train
    workers = getattr(args, "workers_per_trial", 1) or 1
    if workers > 1:  # one run, data-parallel over local gloo processes
        from functools import partial

        from progtune.local_workers import run_local_workers

        run = partial(run_local_workers, workers=workers)
    try:
        return run(
            cfg,
            report=report,
            data=data,
            checkpoint_dir=ckpt,
            resume_from=ckpt if args.resume else None,
        )
    except KeyboardInterrupt:
        resume = " ".join(["progtune", "train", *sys.argv[2:]])
        if "--resume" not in resume:
            resume += " --resume"
        if "--out" not in resume:
            resume += f" --out {out}"
        print(
            f"\ninterrupted; continue from the last checkpoint with:\n  {resume}", file=sys.stderr
        )
        raise


def _write_results(cfg: Config, result: Any, out: Path, started: dt.datetime) -> None:
    """The run's curve and its one trial row, as Parquet in `out` (experiment = folder name)."""
    from progtune.results import write_curves, write_trials
    from progtune.summary import trial_row

    experiment = out.name
    curve = [{"experiment": experiment, "trial_id": "train", **r} for r in result.curve]
    row = trial_row(
        cfg, result, experiment=experiment, trial_id="train", role="train", started_at=started
    )
    write_curves(curve, out / "curves.parquet")
    write_trials([row], out / "trials.parquet")


def export_model(cfg: Config, data: Any, checkpoint: Path, dest: Path) -> None:
    """The final checkpoint as an untied transformers model + tokenizer (save_pretrained)."""
    from transformers import PreTrainedTokenizerFast

    from progtune.data import load_tokenizer
    from progtune.model import ProgressiveLM
    from progtune.train import load_checkpoint

    payload = load_checkpoint(checkpoint)
    model = ProgressiveLM(
        cfg.model, data.vocab_size, payload["k"], cfg.growth.operator, data.eos_id, data.pad_id
    )
    model.load_state_dict(payload["model"])
    dest.mkdir(parents=True, exist_ok=True)
    model.export_hf().save_pretrained(dest)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(data),
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    tok.save_pretrained(dest)


def prepare_and_say(cfg: Any) -> Any:
    """Prepare the run's tokens and print one line on them (`progtune train`, its dry run)."""
    from progtune.data import prepare_data

    t0 = time.perf_counter()
    data = prepare_data(cfg.data)
    print(
        f"data: {len(data.train):,} training / {len(data.val):,} held-out tokens, "
        f"vocab {data.vocab_size}, fingerprint {data.fingerprint} "
        f"({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    return data
