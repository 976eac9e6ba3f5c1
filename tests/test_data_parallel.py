"""Data parallelism inside one run: 2 gloo workers vs 1 process, resume with 2 workers, the rank
context, and the depth drawn per global micro-batch or per step (sampling.per)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from progtune.config import Config, with_overrides
from progtune.data_parallel import Ranks, check_split
from progtune.errors import ConfigError
from progtune.sampling import draw_depth
from progtune.train import _Run, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WALL_KEYS = ("wall_s", "eval_wall_s", "checkpoint_wall_s")
EXACT_KEYS = ("step", "tokens", "flops", "stage", "unique_layers", "mean_depth", "lr")
# Losses of 2 workers vs 1 process: the same maths in another fp32 summation order (each rank
# reduces its half of the rows, gloo sums the halves, BERT rescales per-rank means by the global
# count of scored positions). Measured: at most 2.5e-7 nats apart over the 32 steps (gpt2 and
# bert); 1e-5 leaves a 40x margin for other CPUs' kernels, and is far below what a real defect
# gives (a different depth, a gradient off by the world size, a share counted twice).
LOSS_TOL = 1e-5


def dp_cfg(base: Config, **overrides: Any) -> Config:
    """The tiny preset, fp32, dropout 0, 2 micro-batches per step, 4 stage-0 blocks to sample."""
    return with_overrides(
        base,
        {
            "runtime.precision": "fp32",
            "runtime.threads": 1,
            "model.dropout": 0.0,
            "model.n_layers": 4,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.5, 0.75],
            "budget.grad_accum": 2,
            **overrides,
        },
    )


def strip_walls(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in WALL_KEYS} for row in curve]


# ---------------------------------------------------------------------------- rank context
def test_one_process_is_rank_0_of_1_and_takes_the_whole_batch() -> None:
    ranks = Ranks.current()
    assert (ranks.rank, ranks.world, ranks.is_main) == (0, 1, True)
    assert ranks.share(8) == slice(0, 8)
    assert [Ranks(r, 4).share(8) for r in range(4)] == [slice(2 * r, 2 * r + 2) for r in range(4)]


def test_a_batch_that_does_not_split_is_refused_naming_the_knob(tiny_cfg: Config) -> None:
    with pytest.raises(ConfigError, match=r"budget\.batch_size.*multiple of 3"):
        check_split(8, 3)
    from progtune.local_workers import run_local_workers

    with pytest.raises(ConfigError, match=r"budget\.batch_size"):
        run_local_workers(tiny_cfg, 3)  # refused before any process starts


@pytest.mark.parametrize("workers, problem", [(3, "budget.batch_size"), (0, ">= 1")])
def test_train_cli_refuses_a_worker_count_before_writing(
    tmp_path: Path, capsys, workers: int, problem: str
) -> None:
    from progtune import cli

    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--workers-per-trial", str(workers)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- 2 workers = 1
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "bert"])  # BERT: scored positions differ per rank
def test_two_workers_train_the_same_run_as_one_process(
    arch: str, tiny_cfg: Config, tiny_data
) -> None:
    from progtune.local_workers import run_local_workers

    cfg = dp_cfg(tiny_cfg, **{"model.arch": arch})
    one = train(cfg, data=tiny_data)
    rows: list[dict] = []
    two = run_local_workers(cfg, 2, report=lambda row, ckpt: rows.append(row), data=tiny_data)
    assert (one.status, two.status) == ("completed", "completed")
    assert (one.workers, two.workers) == (1, 2)
    assert rows == two.curve  # rank 0 reported every row
    assert len(one.curve) == len(two.curve)
    assert 1 < one.curve[1]["mean_depth"] < 4  # stage 0 really samples depths
    for a, b in zip(one.curve, two.curve, strict=True):
        # Same depths, and FLOPs and tokens of the whole global batch counted once: exact.
        assert {k: a[k] for k in EXACT_KEYS} == {k: b[k] for k in EXACT_KEYS}
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=LOSS_TOL)
        if a["train_loss"] is not None:
            assert b["train_loss"] == pytest.approx(a["train_loss"], abs=LOSS_TOL)
    assert (two.total_flops, two.total_tokens, two.steps) == (
        one.total_flops,
        one.total_tokens,
        one.steps,
    )
    assert one.curve[-1]["eval_loss"] < one.curve[0]["eval_loss"] - 0.5  # it learned


@pytest.mark.slow
def test_train_cli_with_two_workers_records_them(tiny_cfg: Config, tmp_path: Path) -> None:
    from progtune import cli
    from progtune.results import read_curves, read_trials

    out = tmp_path / "run"
    cache = f"data.cache_dir={tiny_cfg.data.cache_dir}"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--quiet", "--workers-per-trial", "2"]
    assert cli.main([*argv, cache, "runtime.threads=1"]) == 0
    trial = read_trials(out / "trials.parquet").iloc[0]
    assert (trial["workers"], trial["threads"], trial["status"]) == (2, 1, "completed")
    assert (out / "checkpoint" / "state.pt").is_file()  # rank 0 wrote it
    assert len(read_curves(out / "curves.parquet")) == len(tiny_cfg_rows(tiny_cfg))


def tiny_cfg_rows(cfg: Config) -> list[int]:
    """The curve's steps of a config (0, the evaluations and the stage boundaries)."""
    from progtune.train import Plan

    return Plan.of(cfg).eval_steps


class Crash(Exception):
    """Stands in for a killed trial (raised in the parent: every worker is killed)."""


@pytest.mark.slow
def test_two_workers_resume_to_the_uninterrupted_curve(
    tiny_cfg: Config, tiny_data, tmp_path: Path
) -> None:
    from progtune.local_workers import run_local_workers

    cfg = dp_cfg(tiny_cfg, **{"model.dropout": 0.1})  # dropout: per-rank torch draws resume too
    whole = run_local_workers(cfg, 2, data=tiny_data, checkpoint_dir=tmp_path / "a")
    assert [r["step"] for r in whole.curve] == [0, 8, 16, 24, 32]

    written: list[int] = []

    def crash_at_second_checkpoint(row: dict, ckpt: Path | None) -> None:
        if ckpt is not None:
            written.append(row["step"])
            if len(written) == 2:
                raise Crash

    with pytest.raises(Crash):
        run_local_workers(
            cfg, 2, report=crash_at_second_checkpoint, data=tiny_data, checkpoint_dir=tmp_path / "b"
        )
    assert written == [8, 16]
    resumed = run_local_workers(
        cfg, 2, data=tiny_data, checkpoint_dir=tmp_path / "c", resume_from=tmp_path / "b"
    )
    assert strip_walls(resumed.curve) == strip_walls(whole.curve)  # ==, not approx
    assert resumed.total_flops == whole.total_flops

    # rank 0's report stops every rank (no rank is left waiting in a collective)
    stopped = run_local_workers(cfg, 2, report=lambda row, ckpt: row["step"] > 0, data=tiny_data)
    assert stopped.status == "stopped" and [r["step"] for r in stopped.curve] == [0, 8]


@pytest.mark.slow
def test_a_failing_worker_fails_the_call_with_its_line(tiny_cfg: Config, tiny_data) -> None:
    from progtune.local_workers import run_local_workers

    cfg = dp_cfg(tiny_cfg, **{"runtime.device": "cuda:7"})  # no such device on any rank
    with pytest.raises(ConfigError, match=r"training worker \d: runtime\.device=cuda:7"):
        run_local_workers(cfg, 2, data=tiny_data)


# ---------------------------------------------------------------------------- sampling.per
def depths_per_step(cfg: Config, tiny_data, monkeypatch) -> list[list[int]]:
    """The depth of every micro-batch of a run, grouped by optimizer step."""
    seen: list[tuple[int, int]] = []
    micro_step = _Run.micro_step

    def spy(self: _Run, depth: int, last: bool = True):
        seen.append((self.st.step, depth))
        return micro_step(self, depth, last)

    monkeypatch.setattr(_Run, "micro_step", spy)
    train(cfg, data=tiny_data)
    steps: dict[int, list[int]] = {}
    for step, depth in seen:
        steps.setdefault(step, []).append(depth)
    return list(steps.values())


def test_sampling_per_step_draws_one_depth_for_all_micro_batches(
    tiny_cfg: Config, tiny_data, monkeypatch
) -> None:
    cfg = dp_cfg(tiny_cfg, **{"budget.grad_accum": 4, "sampling.per": "step"})
    per_step = depths_per_step(cfg, tiny_data, monkeypatch)
    assert all(len(d) == 4 and len(set(d)) == 1 for d in per_step)
    # One draw per step from the run's depth generator: the sampler's own sequence, so the
    # sampler's distribution tests (test_sampling.py) hold for these depths too.
    rng = np.random.default_rng([cfg.seed, 0xDE97])
    total = len(per_step)
    growth = [round(b * total) for b in cfg.stages.boundaries]
    k_of = [cfg.stages.unique_layers[sum(s >= g for g in growth)] for s in range(total)]
    expected = [draw_depth(rng, k, cfg.model.n_layers, cfg.sampling) for k in k_of]
    assert [d[0] for d in per_step] == expected
    assert len(set(expected[: growth[0]])) > 1  # stage 0 draws differ from step to step


def test_sampling_per_micro_batch_draws_each_micro_batch(
    tiny_cfg: Config, tiny_data, monkeypatch
) -> None:
    cfg = dp_cfg(tiny_cfg, **{"budget.grad_accum": 4})
    assert cfg.sampling.per == "micro_batch"  # the reference's default
    per_step = depths_per_step(cfg, tiny_data, monkeypatch)
    assert any(len(set(d)) > 1 for d in per_step)
    rng = np.random.default_rng([cfg.seed, 0xDE97])
    flat = [d for step in per_step for d in step]
    assert flat[0] == draw_depth(rng, 1, cfg.model.n_layers, cfg.sampling)
    assert flat[1] == draw_depth(rng, 1, cfg.model.n_layers, cfg.sampling)


def test_sampling_per_is_checked(tiny_cfg: Config) -> None:
    with pytest.raises(ConfigError, match=r"sampling\.per"):
        with_overrides(tiny_cfg, {"sampling.per": "epoch"})


def test_ddp_searches_for_unused_parameters_only_where_a_depth_can_skip_a_block(
    tiny_cfg: Config,
) -> None:
    from progtune.data_parallel import _every_depth_uses_every_block
    from progtune.model import ProgressiveLM

    for operator in ("interpolation", "stacking"):
        model = ProgressiveLM(tiny_cfg.model, 64, 1, operator)
        assert _every_depth_uses_every_block(model)
        model.grow(2)
        assert _every_depth_uses_every_block(model)
    assert not _every_depth_uses_every_block(torch.nn.Linear(2, 2))
