"""`progtune search|train --dry-run`: what would run, its FLOPs, time, epochs and peak memory per
GPU (a micro-batch that cannot fit a visible GPU is refused); no training."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from progtune.config import Config

if TYPE_CHECKING:
    import argparse

    from progtune.search_state import SearchSettings


def workers_of(options: object) -> int:
    """Workers that split a trial's micro-batch: --workers-per-trial, else an integer
    --gpus-per-trial above 1, else 1 (`options`: parsed arguments or SearchSettings)."""
    workers = getattr(options, "workers_per_trial", None)
    if workers:
        return int(workers)
    gpus = getattr(options, "gpus_per_trial", None)
    return int(gpus) if gpus and gpus > 1 and float(gpus).is_integer() else 1


def measured_flops_rate(cfg: Config, threads: int, workers: int = 1) -> float:
    """FLOP/s of this machine on the preset's model: 3 timed full-depth steps (after 1 warm-up)
    of one worker's share of the micro-batch."""
    import torch

    from progtune.model import ProgressiveLM, train_flops
    from progtune.train import make_optimizer, pick_device, use_bf16

    torch.set_num_threads(threads)
    device = pick_device(cfg)
    vocab = cfg.data.vocab_size
    model = ProgressiveLM(cfg.model, vocab, cfg.model.n_layers, "interpolation").to(device)
    opt = make_optimizer(model, cfg, device)
    bf16 = use_bf16(cfg, device)
    micro = -(-cfg.budget.batch_size // workers)
    x = torch.randint(0, vocab, (micro, cfg.model.seq_len), device=device)
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


def dry_run(settings: SearchSettings) -> int:
    """Print the reference and `num_samples` draws of the space with FLOPs and estimated time."""
    from progtune.budget import planned_flops
    from progtune.memory_plan import memory_line
    from progtune.search_state import reference_config
    from progtune.spaces import sample_configs
    from progtune.train_cli import describe

    base = settings.base
    configs = sample_configs(
        settings.space, base, settings.pinned, settings.num_samples, settings.search_seed
    )
    threads = max(1, int(settings.cpus_per_trial))
    vocab = base.data.vocab_size
    workers = workers_of(settings)
    memory = memory_line(base, vocab, workers)  # refuses before the timing steps
    rate = measured_flops_rate(base, threads, workers)
    print(
        f"dry run of space {settings.space.name} ({settings.num_samples} trials + reference); "
        f"times from a measured {rate / 1e9:.2f} GFLOP/s on {threads} thread(s)"
    )
    if settings.points is None or not settings.points:
        print(
            "(Optuna's first trials are random; later TPE proposals depend on results, so "
            "these are random draws of the space)"
        )
    _print_epochs(base, [base, *configs])
    print(memory)
    total_flops = 0.0
    rows = [("reference", reference_config(base))] + [
        (f"trial {i}", c) for i, c in enumerate(configs)
    ]
    for label, cfg in rows:
        f = planned_flops(cfg, vocab)
        total_flops += f
        print(f"{label:>10}: {f:.3e} FLOPs, ~{f / rate:.0f}s  {describe(cfg)}")
    for line in _asha_lines(settings, [cfg for _, cfg in rows[1:]], vocab):
        print(line)
    slots = max(1, settings.max_concurrent or (os.cpu_count() or 1) // threads)
    print(
        f"total: {total_flops:.3e} FLOPs, ~{total_flops / rate:.0f}s of trial time, "
        f"~{total_flops / rate / slots:.0f}s wall on {slots} slot(s) (training only)"
    )
    return 0


def _asha_lines(settings: SearchSettings, trials: list[Config], vocab: int) -> list[str]:
    """Where `--scheduler asha|asha-after-growth` compares trials: its rungs, and under
    asha-after-growth each trial's planned FLOPs at its last growth (its clock's origin)."""
    from progtune.budget import asha_rungs, last_stage_start_flops
    from progtune.search_args import ASHA_SCHEDULERS
    from progtune.search_state import reference_config

    if settings.scheduler not in ASHA_SCHEDULERS:
        return []
    rungs = ", ".join(f"{m:.3e}" for m in asha_rungs(reference_config(settings.base), vocab))
    if settings.scheduler == "asha":
        return [f"ASHA rungs (1/8, 1/4, 1/2, 1 of the reference): {rungs} cumulative FLOPs"]
    lines = [f"ASHA rungs (1/8, 1/4, 1/2, 1 of the reference): {rungs} FLOPs after each "
             "trial's last growth (none is compared before it)"]  # fmt: skip
    for i, cfg in enumerate(trials):
        start = last_stage_start_flops(cfg, vocab)
        lines.append(f"{f'trial {i}':>10}: last growth at {start:.3e} planned FLOPs")
    return lines


def _print_epochs(base: Config, configs: list[Config]) -> None:
    """The reference budget in epochs of the (prepared or cached) training split; the largest
    trial budget too when the space varies budget.tokens."""
    from progtune.batches import epochs_line, planned_epochs
    from progtune.data import prepare_data

    n = len(prepare_data(base.data).train)
    print(epochs_line(base, n))
    most = max(configs, key=lambda c: c.budget.tokens)
    if most.budget.tokens != base.budget.tokens:
        epochs = planned_epochs(most.budget.tokens, n, most.model.seq_len)
        print(f"largest trial budget: {most.budget.tokens:,} tokens = {epochs:.2f} epochs")


def train_dry_run(args: argparse.Namespace) -> int:
    """`progtune train --dry-run`: prepare the data, print planned FLOPs, time and epochs."""
    from progtune.batches import epochs_line
    from progtune.budget import planned_flops
    from progtune.config import parse_assignments, resolve
    from progtune.memory_plan import memory_line
    from progtune.train_cli import describe, prepare_and_say

    cfg = resolve(args.preset, args.config, parse_assignments(args.overrides))
    print(f"progtune train --dry-run: {describe(cfg)}", flush=True)
    data = prepare_and_say(cfg)
    print(epochs_line(cfg, len(data.train)))
    workers = workers_of(args)
    print(memory_line(cfg, data.vocab_size, workers), flush=True)
    threads = cfg.runtime.threads or os.cpu_count() or 1
    rate = measured_flops_rate(cfg, threads, workers)
    flops = planned_flops(cfg, data.vocab_size)
    print(
        f"planned: {flops:.3e} training FLOPs, ~{flops / rate:.0f}s at a measured "
        f"{rate / 1e9:.2f} GFLOP/s on {threads} thread(s) (training only; nothing trained)"
    )
    return 0
