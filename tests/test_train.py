"""The training loop on the `tiny` preset: learning, curve rows, FLOPs, resume, stop, divergence."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from progtune.config import Config, with_overrides
from progtune.errors import ConfigError, ProgtuneError
from progtune.growth import growth_map
from progtune.model import ProgressiveLM, head_flops, train_flops
from progtune.schedules import lr_at
from progtune.train import (
    CHECKPOINT_FILE,
    TrainResult,
    grow_with_optimizer,
    load_checkpoint,
    make_optimizer,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WALL_KEYS = ("wall_s", "eval_wall_s", "checkpoint_wall_s")  # the only fields allowed to differ


def cfg_of(base: Config, **overrides: Any) -> Config:
    """The tiny preset in fp32 (exact sums, CPU-independent) plus overrides."""
    return with_overrides(base, {"runtime.precision": "fp32", **overrides})


def run_shape(cfg: Config) -> tuple[int, list[int], int]:
    """(total steps, growth steps, tokens per micro-batch) from the config alone."""
    b = cfg.budget
    per_micro = b.batch_size * cfg.model.seq_len
    total = b.tokens // (per_micro * b.grad_accum)
    return total, [round(x * total) for x in cfg.stages.boundaries], per_micro


def stage_of_step(step_index: int, growth: list[int]) -> int:
    """Stage of the optimizer step with 0-based index `step_index` (growth g: step g is new)."""
    return bisect.bisect_right(growth, step_index)


def check_curve(cfg: Config, result: TrainResult, vocab: int) -> None:
    """Invariants every completed run's curve must satisfy (design.md, "Results")."""
    total, growth, per_micro = run_shape(cfg)
    ul, n_layers, accum = cfg.stages.unique_layers, cfg.model.n_layers, cfg.budget.grad_accum
    curve = result.curve
    steps = [row["step"] for row in curve]
    assert steps[0] == 0 and steps[-1] == total == result.steps
    assert set(growth) <= set(steps)  # a row at every stage boundary
    assert steps == sorted(set(steps))

    first = curve[0]
    assert (first["tokens"], first["flops"], first["stage"]) == (0, 0.0, 0)
    assert first["unique_layers"] == ul[0]
    assert first["mean_depth"] is None and first["train_loss"] is None
    assert math.isfinite(first["eval_loss"])

    for prev, row in itertools.pairwise(curve):
        # No row mixes two stages: every step since the previous row ran in the row's stage.
        stages = {stage_of_step(j, growth) for j in range(prev["step"], row["step"])}
        assert stages == {row["stage"]}, (prev["step"], row["step"], stages)
        assert row["unique_layers"] == ul[row["stage"]]
        k = row["unique_layers"]
        assert k <= row["mean_depth"] <= n_layers
        if k == n_layers:
            assert row["mean_depth"] == n_layers
        assert row["tokens"] == row["step"] * accum * per_micro
        assert row["flops"] > prev["flops"]  # strictly increasing
        assert row["lr"] == lr_at(row["step"] - 1, total, cfg.lr, growth)
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["eval_loss"])
        # FLOPs are linear in the depth and in the scored positions, so the sum over this
        # interval's micro-batches is micro x train_flops(mean depth) + the head's share.
        micro = (row["step"] - prev["step"]) * accum
        delta = row["flops"] - prev["flops"]
        blocks_only = micro * train_flops(cfg.model, vocab, row["mean_depth"], per_micro, 0)
        scored = (delta - blocks_only) / (3 * head_flops(cfg.model, vocab))
        assert scored == pytest.approx(round(scored), abs=1e-3)  # a whole number of positions
        if cfg.model.arch == "bert":
            # The head scores only masked positions: Binomial(n, mask_fraction), 5 sigma, plus
            # the expected forced position of rows that drew none ((1 - p)^32 = 0.6 % of rows).
            n, p = micro * per_micro, cfg.model.mask_fraction
            rows = micro * cfg.budget.batch_size
            forced = rows * (1 - p) ** cfg.model.seq_len
            assert abs(scored - n * p - forced) < 5 * math.sqrt(n * p * (1 - p)) + 1
        else:
            assert round(scored) == micro * per_micro  # causal LMs score every token
    assert result.total_flops == curve[-1]["flops"]
    assert result.total_tokens == curve[-1]["tokens"]


def strip_walls(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in WALL_KEYS} for row in curve]


# ---------------------------------------------------------------------------- learning
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_tiny_run_learns(arch: str, tiny_cfg: Config, tiny_data) -> None:
    cfg = cfg_of(tiny_cfg, **{"model.arch": arch})
    result = train(cfg, data=tiny_data)
    assert result.status == "completed"
    check_curve(cfg, result, tiny_data.vocab_size)
    first, last = result.curve[0]["eval_loss"], result.curve[-1]["eval_loss"]
    # From ~ln(320) = 5.77 at init; 64 steps reach ~4.4-4.6 for every arch. 0.5 nats is a
    # margin no noise explains, yet far below what a working loop gains.
    assert last < first - 0.5
    assert result.final_eval_loss == last
    assert result.data_fingerprint == tiny_data.fingerprint


def test_curve_rows_at_boundaries_and_evals(tiny_cfg: Config, tiny_data) -> None:
    cfg = cfg_of(
        tiny_cfg,
        **{
            "model.n_layers": 4,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.3, 0.6],
            "budget.grad_accum": 2,
            "eval.points": 3,
        },
    )
    rows: list[dict] = []
    result = train(cfg, lambda row, ckpt: rows.append(row), data=tiny_data)
    # 16384 tokens / (8 x 32 x 2) = 32 steps; growth at round(9.6) = 10, round(19.2) = 19;
    # evaluations at round(32 i / 3) = 11, 21, 32; plus the row before training.
    assert [r["step"] for r in result.curve] == [0, 10, 11, 19, 21, 32]
    assert [r["stage"] for r in result.curve] == [0, 0, 1, 1, 2, 2]
    assert [r["unique_layers"] for r in result.curve] == [1, 1, 2, 2, 4, 4]
    assert rows == result.curve  # every row was reported, in order
    check_curve(cfg, result, tiny_data.vocab_size)
    # Sampled depths: stage 0 draws from [1, 4] with shallow depths first (lvps).
    assert 1 < result.curve[1]["mean_depth"] < 2.5


def test_flops_are_exact_without_depth_sampling(tiny_cfg: Config, tiny_data) -> None:
    cfg = cfg_of(
        tiny_cfg,
        **{"model.arch": "llama", "sampling.strategy": "none", "budget.grad_accum": 2},
    )
    result = train(cfg, data=tiny_data)
    check_curve(cfg, result, tiny_data.vocab_size)
    total, growth, per_micro = run_shape(cfg)
    ul, vocab = cfg.stages.unique_layers, tiny_data.vocab_size
    flops_after = [0.0]  # flops_after[s] = FLOPs of steps 0 .. s-1, one term per micro-batch
    for j in range(total):
        depth = ul[stage_of_step(j, growth)]
        step_flops = flops_after[-1]
        for _ in range(cfg.budget.grad_accum):
            step_flops += train_flops(cfg.model, vocab, depth, per_micro)
        flops_after.append(step_flops)
    for row in result.curve:
        assert row["flops"] == flops_after[row["step"]]  # exact: integers far below 2^53
        if row["step"]:
            assert row["mean_depth"] == ul[row["stage"]]


# ---------------------------------------------------------------------------- resume
class Crash(Exception):
    """Stands in for a killed process."""


@pytest.mark.parametrize("arch", ["gpt2", "bert"])  # BERT adds the masking RNG
def test_resume_reproduces_the_uninterrupted_run_bitwise(
    arch: str, tiny_cfg: Config, tiny_data, tmp_path: Path
) -> None:
    # Dropout makes torch's RNG matter, grad_accum 2 makes two depth draws per step, default
    # precision is what users run. 32 steps; growth at 16 and 24; evaluations at 8, 16, 24, 32.
    # The crash comes at the boundary into stage 1 (k = 2 < L = 4), so the resumed run still
    # samples depths and grows once more.
    cfg = with_overrides(
        tiny_cfg,
        {
            "model.arch": arch,
            "model.n_layers": 4,
            "model.dropout": 0.1,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.5, 0.75],
            "budget.grad_accum": 2,
        },
    )
    run_a = train(cfg, data=tiny_data, checkpoint_dir=tmp_path / "a")
    assert run_a.status == "completed"
    assert [r["step"] for r in run_a.curve] == [0, 8, 16, 24, 32]
    assert 2 < run_a.curve[3]["mean_depth"] < 4  # stage 1 really samples

    checkpointed: list[int] = []

    def crash_at_second_checkpoint(row: dict, written: Path | None) -> None:
        if written is not None:
            assert (written / CHECKPOINT_FILE).is_file()  # reported after it is on disk
            checkpointed.append(row["step"])
            if len(checkpointed) == 2:
                raise Crash

    with pytest.raises(Crash):
        train(cfg, crash_at_second_checkpoint, data=tiny_data, checkpoint_dir=tmp_path / "b")
    # The crash hit the stage boundary: the checkpoint is from before the growth.
    assert checkpointed == [8, 16]
    saved = load_checkpoint(tmp_path / "b")
    assert json.loads(saved["state"])["step"] == 16 and saved["k"] == 1

    reported: list[dict] = []
    run_c = train(
        cfg,
        lambda row, written: reported.append(row),
        data=tiny_data,
        checkpoint_dir=tmp_path / "c",
        resume_from=tmp_path / "b",
    )
    assert [r["step"] for r in reported] == [24, 32]  # rows before the crash are not re-sent
    assert strip_walls(run_c.curve) == strip_walls(run_a.curve)  # ==, not approx
    assert run_c.final_eval_loss == run_a.final_eval_loss
    assert (run_c.status, run_c.steps, run_c.total_tokens, run_c.total_flops) == (
        run_a.status,
        run_a.steps,
        run_a.total_tokens,
        run_a.total_flops,
    )
    # Both runs end with identical weights.
    weights_a = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)["model"]
    weights_c = torch.load(tmp_path / "c" / CHECKPOINT_FILE, weights_only=True)["model"]
    assert weights_a.keys() == weights_c.keys()
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)

    # Resuming a finished run trains nothing and returns the same curve.
    again = train(cfg, data=tiny_data, resume_from=tmp_path / "a")
    assert strip_walls(again.curve) == strip_walls(run_a.curve) and again.steps == 32

    # A checkpoint of another config is refused.
    other = with_overrides(cfg, {"lr.peak": 1e-3})
    with pytest.raises(ProgtuneError, match="different config"):
        train(other, data=tiny_data, resume_from=tmp_path / "b")
    with pytest.raises(ProgtuneError, match="no checkpoint"):
        train(cfg, data=tiny_data, resume_from=tmp_path / "missing")


class _RunsOnLoad:
    """Pickles as a call to os.mkdir(path): unpickling it runs code (a harmless stand-in)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_checkpoint_loads_without_arbitrary_unpickling(
    tiny_cfg: Config, tiny_data, tmp_path: Path
) -> None:
    cfg = cfg_of(tiny_cfg, **{"budget.tokens": 4096, "eval.points": 1})  # 16 steps
    train(cfg, data=tiny_data, checkpoint_dir=tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert CHECKPOINT_FILE in files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    payload = load_checkpoint(tmp_path / "ckpt")  # progtune's own loader
    assert payload["k"] == 2 and isinstance(payload["state"], str)
    model = ProgressiveLM(cfg.model, tiny_data.vocab_size, payload["k"], cfg.growth.operator)
    model.load_state_dict(payload["model"])  # the weights alone rebuild the model
    # A checkpoint that smuggles a callable in: the loader and a resumed run refuse it, and
    # nothing it names runs.
    evil = tmp_path / "evil"
    evil.mkdir()
    ran = tmp_path / "code-ran"
    torch.save({**payload, "state": _RunsOnLoad(ran)}, evil / CHECKPOINT_FILE)
    with pytest.raises((pickle.UnpicklingError, ProgtuneError)):
        load_checkpoint(evil)
    with pytest.raises((pickle.UnpicklingError, ProgtuneError)):
        train(cfg, data=tiny_data, resume_from=evil)
    assert not ran.exists()


# ---------------------------------------------------------------------------- stop / diverge
def test_absurd_learning_rate_diverges_without_raising(
    tiny_cfg: Config, tiny_data, tmp_path: Path
) -> None:
    cfg = cfg_of(tiny_cfg, **{"lr.peak": 1e4})
    written: list = []
    result = train(
        cfg,
        lambda row, ckpt: written.append(ckpt),
        data=tiny_data,
        checkpoint_dir=tmp_path / "ckpt",
    )
    assert result.status == "diverged"
    total, _, _ = run_shape(cfg)
    assert 0 < result.steps < total
    assert result.final_eval_loss is None
    last = result.curve[-1]
    assert last["step"] == result.steps
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last["eval_loss"]))
    assert written[-1] is None  # a non-finite state is never checkpointed


def test_report_returning_true_stops_the_run(tiny_cfg: Config, tiny_data) -> None:
    cfg = cfg_of(tiny_cfg)
    result = train(cfg, lambda row, ckpt: row["step"] > 0, data=tiny_data)
    assert result.status == "stopped"
    assert result.steps == 16 and [r["step"] for r in result.curve] == [0, 16]
    assert result.final_eval_loss == result.curve[-1]["eval_loss"]
    # Stopping at the very first row trains nothing.
    at_start = train(cfg, lambda row, ckpt: True, data=tiny_data)
    assert at_start.status == "stopped" and at_start.steps == 0 and len(at_start.curve) == 1


def test_boundaries_colliding_on_one_step_are_refused(tiny_cfg: Config, tiny_data) -> None:
    # Valid fractions, but 0.5 and 0.505 of a 64-step run both round to step 32.
    cfg = cfg_of(
        tiny_cfg,
        **{
            "model.n_layers": 4,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.5, 0.505],
        },
    )
    with pytest.raises(ConfigError, match=r"stages\.boundaries"):
        train(cfg, data=tiny_data)


# ---------------------------------------------------------------------------- optimizer at growth
@pytest.mark.parametrize("policy", ["keep", "copy", "reset"])
def test_optimizer_state_policies_at_growth(policy: str, tiny_cfg: Config) -> None:
    cfg = cfg_of(
        tiny_cfg,
        **{
            "model.n_layers": 4,
            "stages.unique_layers": [2, 4],
            "growth.optimizer_state": policy,
        },
    )
    torch.manual_seed(0)
    model = ProgressiveLM(cfg.model, 64, 2, "interpolation")
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 64, (2, cfg.model.seq_len))
    model.set_depth(3)
    model(x, x).value.backward()
    opt.step()
    before = {
        name: {k: v.clone() for k, v in opt.state[p].items()}
        for name, p in model.named_parameters()
    }

    new_opt = grow_with_optimizer(model, opt, 4, cfg, torch.device("cpu"))
    mapping = growth_map("interpolation", 2, 4)  # [0, 0, 1, 1]
    for name, p in model.named_parameters():
        state = new_opt.state.get(p)
        if policy == "reset":
            assert not state
            continue
        source = name
        if name.startswith("blocks."):
            _, j, rest = name.split(".", 2)
            if policy == "copy":
                source = f"blocks.{mapping[int(j)]}.{rest}"
            elif int(j) >= 2:  # keep: new blocks start without moments
                assert not state
                continue
        assert state, name
        for key, value in before[source].items():
            assert torch.equal(state[key], value), (name, key)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_tiny_run_on_cuda(arch: str, tiny_cfg: Config, tiny_data) -> None:
    cfg = with_overrides(tiny_cfg, {"model.arch": arch, "runtime.device": "cuda"})
    result = train(cfg, data=tiny_data)
    assert result.status == "completed" and result.device.startswith("cuda")
    check_curve(cfg, result, tiny_data.vocab_size)
    assert result.curve[-1]["eval_loss"] < result.curve[0]["eval_loss"] - 0.5
