"""Search spaces, pinned knobs, objective/surrogate and `progtune search` input checks (no Ray)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import optuna
import pytest

from progtune.config import flatten, resolve
from progtune.search_state import objective
from progtune.spaces import (
    SHIPPED,
    SpaceError,
    call_define,
    enqueue_starts,
    load_space,
    sample_configs,
    start_points,
    unique_layer_schedules,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _proposed_knobs(space, base, n: int, seed: int) -> set[str]:
    """The knobs a space's define() sets over n random draws (what the space searches)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    knobs: set[str] = set()
    for _ in range(n):
        trial = study.ask()
        knobs |= set(call_define(space, trial, base, {}))
        study.tell(trial, 0.0)
    return knobs


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset", ["tiny", "cpu-small", "gpt2-base"])
def test_every_shipped_space_draws_valid_configs(name, preset):
    """12 draws are valid configs in which every knob the space searches takes several values
    (a space or sampler stuck on one point would pass validation alone)."""
    base = resolve(preset)
    space = load_space(name)
    assert space.doc, "every space states its question and budget in a docstring"
    configs = sample_configs(space, base, {}, 12, seed=3)
    assert len(configs) == 12
    flats = [flatten(cfg) for cfg in configs]
    searched = _proposed_knobs(space, base, 12, seed=3)
    assert searched, "a space that sets no knob searches nothing"
    for knob in sorted(searched):
        if knob == "stages.unique_layers" and len(unique_layer_schedules(base.model.n_layers)) < 2:
            continue  # one schedule ends at L = 2 (1-2): nothing to choose
        values = {f[knob] for f in flats}
        assert len(values) >= 2, f"{name} on {preset}: {knob} is always {values}"


def test_pinned_knobs_are_not_searched():
    base = resolve("cpu-small", overrides={"sampling.strategy": "lvps", "lr.peak": 2e-3})
    pinned = {"sampling.strategy": "lvps", "lr.peak": 2e-3}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        out = call_define(load_space("apollo"), trial, base, pinned)
        assert out["sampling.strategy"] == "lvps" and out["lr.peak"] == 2e-3
        assert "sampling.strategy" not in trial.params and "lr.peak" not in trial.params
        study.tell(trial, 1.0)


def test_pinned_boundaries_restrict_the_schedule():
    base = resolve(
        "cpu-small", overrides={"stages.boundaries": [0.3], "stages.unique_layers": [2, 4]}
    )
    configs = sample_configs(load_space("apollo"), base, {"stages.boundaries": (0.3,)}, 8, 0)
    assert all(c.stages.boundaries == (0.3,) and len(c.stages.unique_layers) == 2 for c in configs)


def test_methods_space_is_the_classic_alternatives():
    base = resolve("cpu-small")
    configs = sample_configs(load_space("methods"), base, {}, 4, 0)
    scratch, stacking, interpolation, apollo = configs
    assert scratch.stages.unique_layers == (4,) and scratch.sampling.strategy == "full"
    assert (stacking.sampling.strategy, stacking.growth.operator) == ("none", "stacking")
    assert (interpolation.sampling.strategy, interpolation.growth.operator) == (
        "none",
        "interpolation",
    )
    assert (apollo.sampling.strategy, apollo.growth.operator) == ("lvps", "interpolation")
    assert stacking.stages.unique_layers == (1, 2, 4)


def test_unique_layer_schedules():
    assert unique_layer_schedules(12)["1-3-6-12"] == (1, 3, 6, 12)
    assert unique_layer_schedules(4) == {"1-2-4": (1, 2, 4), "2-4": (2, 4), "1-4": (1, 4)}


_DEFINE = "def define(trial):\n    return {'lr.peak': trial.suggest_float('lr.peak', 1e-3, 3e-3)}\n"


@pytest.mark.parametrize("preset", ["tiny", "cpu-small", "gpt2-base", "llama-base"])
def test_apollo_space_starts_from_the_landscape_best_then_classic_growth(preset):
    """The first trial is the landscape's best (doubling, growth at 50 % then 60 % of what is left,
    no sampling, 1.41x LR, linear, 5 % re-warmup); the second growth without sampling exactly as
    the methods space builds it, at the preset's LR; the sampler takes over after them."""
    base = resolve(preset)
    methods = sample_configs(load_space("methods"), base, {}, 4, 0)
    best, classic, drawn = sample_configs(load_space("apollo"), base, {}, 3, seed=5)
    want = methods[2]  # interpolation: growth without depth sampling
    assert best.stages.unique_layers == want.stages.unique_layers
    bounds, position = [], 0.0
    for i in range(len(want.stages.boundaries)):
        position = 0.5 if i == 0 else round(position + (1 - position) * 0.6, 4)
        bounds.append(position)
    assert best.stages.boundaries == pytest.approx(tuple(bounds))
    assert best.sampling.strategy == "none"
    assert best.lr.peak == pytest.approx(base.lr.peak * 1.41)
    assert (best.lr.schedule, best.lr.rewarmup_fraction) == ("linear", 0.05)
    assert best.lr.warmup_fraction == base.lr.warmup_fraction
    assert classic.stages == want.stages
    assert classic.sampling == want.sampling
    assert classic.growth == want.growth == best.growth == base.growth
    assert (classic.lr.peak, classic.lr.warmup_fraction) == (
        base.lr.peak, base.lr.warmup_fraction,
    )  # fmt: skip
    assert (classic.lr.schedule, classic.lr.rewarmup_fraction) == ("cosine", 0.0)
    assert drawn.lr.peak not in (base.lr.peak, best.lr.peak)  # then drawn


@pytest.mark.parametrize("preset", ["cpu-small", "gpt2-base"])
def test_apollo_space_draws_inside_the_ranges_the_landscape_kept(preset):
    """Depth sampler none | lvps, LR 0.7-2.8x and warmup 0.5-2.5x the preset's, operator and
    Adam moments the preset's (the landscape showed they matter least)."""
    base = resolve(preset)
    configs = sample_configs(load_space("apollo"), base, {}, 40, seed=1)[2:]
    assert {c.sampling.strategy for c in configs} == {"none", "lvps"}
    assert all(0.7 <= c.lr.peak / base.lr.peak <= 2.8 for c in configs)
    assert all(0.5 <= c.lr.warmup_fraction / base.lr.warmup_fraction <= 2.5 for c in configs)
    assert {c.lr.rewarmup_fraction for c in configs} == {0.0, 0.05}
    assert {(c.growth.operator, c.growth.optimizer_state) for c in configs} == {
        (base.growth.operator, base.growth.optimizer_state)
    }


def test_starts_leave_pinned_knobs_to_the_pin_and_skip_a_pinned_schedule():
    base = resolve("cpu-small", overrides={"lr.peak": 1e-3})
    configs = sample_configs(load_space("apollo"), base, {"lr.peak": 1e-3}, 2, 0)
    assert [c.lr.schedule for c in configs] == ["linear", "cosine"]  # the two starts
    assert all(c.lr.peak == 1e-3 for c in configs)
    pinned = {"stages.unique_layers": (2, 4), "stages.boundaries": (0.3,)}
    base = resolve("cpu-small", overrides=pinned)
    assert start_points(load_space("apollo"), base, pinned) == []


def test_starts_are_queued_once_in_a_resumed_study(tmp_path):
    base, space = resolve("cpu-small"), load_space("apollo")

    def journal_study():
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal"))
        )
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True)

    assert enqueue_starts(journal_study(), space, base, {}) == 2
    study = journal_study()
    trial = study.ask()  # the first start runs
    study.tell(trial, 1.0)
    enqueue_starts(journal_study(), space, base, {})  # the search is resumed
    states = [t.state.name for t in journal_study().trials]
    assert states == ["COMPLETE", "WAITING"], states


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("x = 1\n", "no define(trial)"),
        ("def define(trial):\n    return [1]\n", "must return a dict"),
        ("def define(trial):\n    return {'lr.pek': 1}\n", "unknown knob"),
        ("def define(trial):\n    raise ValueError('boom')\n", "raised ValueError: boom"),
        ("def define(trial:\n", "syntax error"),
        ("import no_such_module_xyz\n", "failed to import"),
        (_DEFINE + "def starts(base, pinned):\n    return {}\n", "must return a list"),
        (_DEFINE + "def starts(base, pinned):\n    raise KeyError('x')\n", "starts() raised"),
    ],
)
def test_bad_space_files(tmp_path, body, fragment):
    path = tmp_path / "space.py"
    path.write_text(body)
    with pytest.raises(SpaceError, match=re.escape(fragment)):
        space = load_space(str(path))
        sample_configs(space, resolve("tiny"), {}, 1, 0)


def test_objective_reached_and_surrogate():
    curve = [
        {"flops": 0.0, "eval_loss": 6.0},
        {"flops": 100.0, "eval_loss": 4.0},
        {"flops": 200.0, "eval_loss": 3.0},
    ]
    assert objective(curve, 3.5, 1000.0, 2048) == pytest.approx(150.0)
    # Not reached: planned FLOPs x (best / target) ** 10, continuous and ordered by closeness.
    assert objective(curve, 2.5, 1000.0, 2048) == pytest.approx(1000.0 * (3.0 / 2.5) ** 10)
    near = objective(curve, 2.999, 1000.0, 2048)
    assert 1000.0 < near < 1005.0  # (3 / 2.999) ** 10 = 1.0033
    diverged = [{"flops": 0.0, "eval_loss": math.nan}]
    assert objective(diverged, 3.0, 1000.0, 2048) == pytest.approx(
        1000.0 * (math.log(2048) / 3.0) ** 10
    )


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "progtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["search", "--space", "nope"], "unknown search space"),
        (["search", "--resume"], "--resume needs --name"),
        (["search", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["search", "--bogus"], "unrecognized arguments"),
        (["search", "lr.pek=1"], "unknown config key 'lr.pek'"),
        (["search", "--resume", "--name", "never-ran"], "no experiment 'never-ran'"),
        (["search", "--dry-run", "--resume", "--name", "x"], "cannot be combined"),
    ],
)
def test_search_bad_input_exits_2_with_one_line(tmp_path, args, fragment):
    out = _cli(*args, "--storage", str(tmp_path / "res"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], out.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


_BAD_SECOND_START = """def define(trial):
    return {"sampling.strategy": trial.suggest_categorical("sampling.strategy", ["none", "lvps"])}


def starts(base, pinned):
    return [{"sampling.strategy": "none"}, {"sampling.strategy": "bogus"}]
"""


def test_every_starting_point_is_checked_before_anything_is_written(tmp_path):
    (tmp_path / "space.py").write_text(_BAD_SECOND_START)
    out = _cli("search", "--space", str(tmp_path / "space.py"), "--preset", "tiny",
               "--storage", str(tmp_path / "res"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'bogus' not in" in lines[0], out.stderr
    assert not (tmp_path / "res").exists()


_DRY_RUN = (
    "import sys; from progtune.cli import main; code = main(sys.argv[1:]); "
    "print('ray imported:', 'ray' in sys.modules); sys.exit(code)"
)


def _flops_per_token(m, vocab: int, depth: int) -> float:
    """README "What each number means", GPT-2: 3 x [d x (24 h^2 + 4 n_ctx h) + 2 h V]."""
    h = m.d_model
    return 3.0 * (depth * (24 * h * h + 4 * m.seq_len * h) + 2 * h * vocab)


def test_dry_run_prints_configs_and_totals(tmp_path, monkeypatch):
    """The reference, then each draw in order with its planned FLOPs, then the total; no Ray."""
    from progtune.budget import planned_flops
    from progtune.train_cli import describe

    monkeypatch.setenv("PROGTUNE_CACHE", str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, "-c", _DRY_RUN, "search", "--dry-run", "--preset", "tiny",
         "--num-samples", "3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ray imported: False"  # the dry run starts (and imports) no Ray
    rows = [ln.split(":", 1) for ln in lines if re.match(r"\s*(reference|trial \d+|total):", ln)]
    assert [label.strip() for label, _ in rows] == [
        "reference", "trial 0", "trial 1", "trial 2", "total",
    ]  # fmt: skip
    printed = [float(text.split()[0]) for _, text in rows]
    base = resolve("tiny")
    m, tokens, vocab = base.model, base.budget.tokens, base.data.vocab_size
    # The reference trains from scratch at full depth; the apollo space starts with growth
    # without depth sampling (d = k): 1 block for the first half of the tokens, then 2.
    assert printed[0] == float(f"{tokens * _flops_per_token(m, vocab, 2):.3e}")
    assert "unique blocks 1-2 at 50 %, depth sampler none" in rows[1][1]
    half = tokens // 2
    growth = half * _flops_per_token(m, vocab, 1) + half * _flops_per_token(m, vocab, 2)
    assert printed[1] == float(f"{growth:.3e}")
    # Every trial line is the space's draw of that rank (search seed 0), with its planned FLOPs.
    draws = sample_configs(load_space("apollo"), base, {}, 3, seed=0)
    for (_, text), cfg in zip(rows[1:4], draws, strict=True):
        assert text.startswith(f" {planned_flops(cfg, vocab):.3e} FLOPs, ~"), text
        assert text.endswith(describe(cfg)), text
    assert printed[-1] == pytest.approx(sum(printed[:-1]), rel=1e-3)
    assert not (tmp_path / "results").exists()
