"""README promises without a search: bf16 selection, `progtune knobs`, `progtune train --export`
and its exit code on divergence, and the report's order of partly successful configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from progtune import cli
from progtune.config import KNOB_TYPES, Config, flatten, list_text, resolve, with_overrides
from progtune.results import read_trials, write_curves, write_trials

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def short_run(base: Config, **overrides) -> Config:
    """8 steps of the tiny preset (one evaluation in between) on one thread."""
    knobs = {"budget.tokens": 2048, "eval.points": 1, "runtime.threads": 1, **overrides}
    return with_overrides(base, knobs)


# ---------------------------------------------------------------------------- precision
def test_precision_auto_trains_in_bf16_only_where_the_cpu_has_it(tiny_cfg, tiny_data, monkeypatch):
    """README: auto trains in bf16 where the CPU has AVX-512 bf16 and in fp32 elsewhere."""
    from progtune.train import train

    def losses(precision: str) -> list[float]:
        cfg = short_run(tiny_cfg, **{"runtime.precision": precision})
        return [row["eval_loss"] for row in train(cfg, data=tiny_data).curve]

    fp32, bf16 = losses("fp32"), losses("bf16")
    assert fp32 != bf16  # the two precisions are told apart by the curve
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert losses("auto") == bf16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert losses("auto") == fp32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)  # older torch
    assert losses("auto") == fp32


@pytest.mark.parametrize("supported", [True, False])
def test_precision_auto_on_cuda_follows_the_device(tiny_cfg, monkeypatch, supported):
    from progtune.train import pick_device, use_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(
        torch.cpu, "_is_avx512_bf16_supported", lambda: not supported, raising=False
    )
    device = pick_device(tiny_cfg)  # runtime.device=auto picks the GPU when there is one
    assert device.type == "cuda"
    auto = with_overrides(tiny_cfg, {"runtime.precision": "auto"})
    assert use_bf16(auto, device) is supported
    for fixed, expected in (("bf16", True), ("fp32", False)):
        assert use_bf16(with_overrides(tiny_cfg, {"runtime.precision": fixed}), device) is expected


# ---------------------------------------------------------------------------- progtune knobs
@pytest.mark.parametrize("preset", ["tiny", "gpt2-base"])
def test_knobs_lists_every_knob_with_its_preset_value_and_type(preset, capsys):
    assert cli.main(["knobs", "--preset", preset]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(KNOB_TYPES)
    values = flatten(resolve(preset))
    for line, (name, kind) in zip(lines, KNOB_TYPES.items(), strict=True):
        _, shown, type_name, *_doc = line.split(maxsplit=3)  # name, value, type, doc
        shown = {"-": "", '""': ""}.get(shown, shown)  # how knobs shows "", () and None
        value = values[name]
        expected_type = "list" if isinstance(value, tuple) else kind.__name__
        assert type_name == expected_type, line
        if isinstance(value, tuple):
            assert shown == (list_text(value) or ""), line
        elif isinstance(value, float):
            assert float(shown) == pytest.approx(value, rel=1e-3), line
        else:
            assert shown == str(value), line


# ---------------------------------------------------------------------------- progtune train
def train_cli(tiny_cache_dir: Path, *args: str) -> int:
    return cli.main(
        ["train", "--preset", "tiny", "--quiet", *args, f"data.cache_dir={tiny_cache_dir}",
         "budget.tokens=2048", "eval.points=1", "runtime.threads=1", "runtime.precision=fp32"]
    )  # fmt: skip


def test_train_export_is_the_trained_model_for_auto_classes(tiny_cache_dir, tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from progtune.data import load_tokenizer
    from progtune.model import ProgressiveLM
    from progtune.train import load_checkpoint

    out, export = tmp_path / "run", tmp_path / "model"
    assert train_cli(tiny_cache_dir, "--out", str(out), "--export", str(export)) == 0
    hf = AutoModelForCausalLM.from_pretrained(export).eval()
    assert hf.config.n_layer == 2
    blocks = [block.mlp.c_fc.weight for block in hf.transformer.h]
    assert blocks[0].data_ptr() != blocks[1].data_ptr()  # untied: one tensor per layer
    # The same function as the final checkpoint of the run, laid out over the full depth.
    cfg = resolve("tiny", config_file=out / "config.yaml")  # the config the run wrote
    payload = load_checkpoint(out / "checkpoint")
    trained = ProgressiveLM(cfg.model, tiny_data.vocab_size, payload["k"], cfg.growth.operator)
    trained.load_state_dict(payload["model"])
    trained.set_depth(cfg.model.n_layers)
    tok = AutoTokenizer.from_pretrained(export)
    text = "def f(x):\n    return x + 1\n"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == load_tokenizer(tiny_data).encode(text).ids
    with torch.no_grad():
        expected = trained.eval().hf(input_ids=ids, use_cache=False).logits
        assert torch.allclose(hf(ids).logits, expected, rtol=0, atol=1e-5)


def test_train_exits_1_when_the_run_diverges(tiny_cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(tiny_cache_dir, "--out", str(out), "lr.peak=1e4") == 1
    row = read_trials(out / "trials.parquet").iloc[0]
    assert row["status"] == "diverged"
    assert capsys.readouterr().out.splitlines()[-2].startswith("diverged:")


# ---------------------------------------------------------------------------- report order
TARGET = 2.0


def _write_seeds_experiment(folder: Path, runs: dict[float, list[float | None]]) -> Path:
    """A reference that reaches TARGET at 400 FLOPs, and per lr.peak one run per seed that
    crosses TARGET at the given FLOPs (None: never)."""

    def row(tid: str, role: str, seed: int, lr: float, final: float) -> dict:
        strategy, layers = ("full", (2,)) if role == "reference" else ("lvps", (1, 2))
        return {
            "experiment": "seeds", "trial_id": tid, "role": role, "status": "completed",
            "seed": seed, "target_loss": TARGET, "final_eval_loss": final, "lr.peak": lr,
            "sampling.strategy": strategy, "stages.unique_layers": layers,
            "data.vocab_size": 320,
        }  # fmt: skip

    def curve(tid: str, points: list[tuple[float, float]]) -> list[dict]:
        return [
            {"experiment": "seeds", "trial_id": tid, "step": i, "tokens": int(f) * 10,
             "flops": f, "wall_s": f / 100, "stage": 0, "unique_layers": 1, "eval_loss": loss}
            for i, (f, loss) in enumerate(points)
        ]  # fmt: skip

    trials = [row("ref", "reference", 0, 1e-3, TARGET)]
    curves = curve("ref", [(0.0, 6.0), (400.0, TARGET)])
    for lr, crossings in runs.items():
        for seed, at in enumerate(crossings):
            tid = f"lr{lr:g}-s{seed}"
            trials.append(row(tid, "search", seed, lr, 3.0 if at is None else 1.5))
            points = [(0.0, 4.0), (500.0, 3.0)] if at is None else [(0.0, 4.0), (at, TARGET)]
            curves += curve(tid, points + ([] if at is None else [(600.0, 1.5)]))
    write_trials(trials, folder / "trials.parquet")
    write_curves(curves, folder / "curves.parquet")
    return folder


def test_report_ranks_all_seeds_then_more_seeds_reached_then_none(tmp_path):
    """README: every seed reached first (by mean FLOPs), then only some seeds (more first), then
    none (by mean final loss). Here the means would give another order at each step."""
    from progtune.analysis import build_report

    runs = {
        1e-3: [450.0, 450.0, 450.0],  # all 3 seeds, the slowest mean
        2e-3: [350.0, 350.0, None],  # 2 of 3
        3e-3: [100.0, None, None],  # 1 of 3, the fastest mean
        4e-3: [None, None, None],  # none
    }
    report = build_report([_write_seeds_experiment(tmp_path / "seeds", runs)])
    configs = report.configs
    assert list(configs["config"]) == [f"lr.peak={lr:g}" for lr in runs]
    assert list(configs["reached"]) == [3, 2, 1, 0]
    assert list(configs["rank"]) == [1, 2, 3, 4]
