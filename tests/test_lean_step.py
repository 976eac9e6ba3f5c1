"""The lean step: no host sync per micro-batch, precision choice (fp16 + grad scaler where bf16 is
not native), and runtime.compile giving the same run."""

from __future__ import annotations

import time
import traceback
from typing import Any

import pytest
import torch

from progtune.config import Config, with_overrides
from progtune.errors import ConfigError
from progtune.run_device import grad_scaler, resolve_precision
from progtune.train import _Run, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def fp32(base: Config, **overrides: Any) -> Config:
    return with_overrides(base, {"runtime.precision": "fp32", **overrides})


# ---------------------------------------------------------------------------- host syncs
# transformers' GPT-2/Llama/BERT forward checks `pad_token_id in input_ids[:, [-1, 0]]` when no
# attention mask is passed: one host read per forward, outside the training loop's own code.
PAD_CHECK = "warn_if_padding_and_no_attention_mask"


def host_reads_of_a_run(cfg: Config, data, monkeypatch) -> tuple[dict[str, int], Any]:
    """Tensor -> host reads (item, tolist, float) during a run: where (inside a micro-batch's
    forward and backward or elsewhere) and whether transformers' padding check made them."""
    inside = [False]
    reads: dict[str, int] = {}
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original):
            where = "micro" if inside[0] else "elsewhere"
            if any(f.name == PAD_CHECK for f in traceback.extract_stack(limit=8)):
                where += " (transformers pad check)"
            reads[f"{_name} {where}"] = reads.get(f"{_name} {where}", 0) + 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    micro_step = _Run.micro_step

    def watched(self: _Run, depth: int, last: bool = True):
        inside[0] = True
        try:
            return micro_step(self, depth, last)
        finally:
            inside[0] = False

    monkeypatch.setattr(_Run, "micro_step", watched)
    return reads, train(cfg, data=data)


def test_losses_reach_the_host_once_per_step_not_per_micro_batch(
    tiny_cfg: Config, tiny_data, monkeypatch
) -> None:
    cfg = fp32(tiny_cfg, **{"budget.grad_accum": 4})  # 16 steps of 4 micro-batches
    reads, result = host_reads_of_a_run(cfg, tiny_data, monkeypatch)
    assert result.status == "completed" and result.steps == 16
    # The loop reads nothing inside any of the 64 micro-batches; the step's losses come back as
    # one list per optimizer step (the finite check and the curve's train_loss).
    own = [k for k in reads if k.endswith(" micro")]
    assert not own, reads
    assert reads["tolist elsewhere"] == result.steps


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_no_host_read_inside_a_micro_batch_at_all(
    tiny_cfg: Config, tiny_data, monkeypatch, arch: str
) -> None:
    # transformers' padding check is off (model.py clears the config's pad id after building);
    # BERT's scored positions are found on the host, before the batch goes to the device.
    cfg = fp32(tiny_cfg, **{"budget.grad_accum": 4, "model.arch": arch})
    reads, _ = host_reads_of_a_run(cfg, tiny_data, monkeypatch)
    assert not [k for k in reads if k.split(" ")[1] == "micro"], reads


# ---------------------------------------------------------------------------- precision
@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda_takes_bf16_only_where_native(
    tiny_cfg: Config, monkeypatch, native_bf16: bool, expected: str
) -> None:
    asked: list[Any] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native_bf16 or including_emulation  # emulated bf16 is "supported" everywhere

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_precision(tiny_cfg, CUDA) == expected
    assert asked == [False]  # emulation does not count
    for fixed in ("bf16", "fp16", "fp32"):
        assert resolve_precision(with_overrides(tiny_cfg, {"runtime.precision": fixed}), CUDA) == (
            fixed
        )


def test_fp16_gets_a_grad_scaler_and_nothing_else_does(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(grad_scaler("fp16", CUDA), torch.amp.GradScaler)
    assert grad_scaler("bf16", CUDA) is None and grad_scaler("fp32", CPU) is None


@pytest.mark.parametrize("cpu_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_cpu_precision_is_unchanged(
    tiny_cfg: Config, monkeypatch, cpu_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16, raising=False)
    assert resolve_precision(tiny_cfg, CPU) == expected


def test_the_grad_scaler_path_takes_the_same_step(tiny_cfg: Config, tiny_data, tmp_path) -> None:
    # fp16 needs CUDA, but the scaler's plumbing (scale the loss, unscale before clipping, step,
    # update, checkpoint) runs on the CPU: a power-of-two loss scale is exact in fp32, so one
    # step with the scaler equals one step without, bitwise.
    from progtune.checkpoint import load_checkpoint, restore_checkpoint

    cfg = fp32(tiny_cfg, **{"budget.grad_accum": 2, "lr.grad_clip": 0.5})
    plain, scaled = _Run(cfg, tiny_data, None, None, None), _Run(cfg, tiny_data, None, None, None)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for run in (plain, scaled):
        assert run.optimizer_step()
    for a, b in zip(plain.model.parameters(), scaled.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scaled.st.loss_sum == plain.st.loss_sum  # the curve reads the unscaled loss
    scaled.checkpoint_dir = tmp_path / "ckpt"
    assert scaled.checkpoint_if_due({"eval_loss": 1.0}) is not None
    assert load_checkpoint(tmp_path / "ckpt")["grad_scaler"]["scale"] == 2.0**10
    fresh = _Run(cfg, tiny_data, None, None, None)
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    payload = load_checkpoint(tmp_path / "ckpt")
    restore_checkpoint(payload, fresh.model, fresh.opt, fresh.depth_rng, fresh.scaler)
    assert fresh.scaler.get_scale() == 2.0**10  # a resumed fp16 run continues at its scale
    plain.checkpoint_dir = tmp_path / "plain"
    plain.checkpoint_if_due({"eval_loss": 1.0})
    assert "grad_scaler" not in load_checkpoint(tmp_path / "plain")  # no scaler: as before


def test_fp16_on_the_cpu_is_refused_naming_the_knob(tiny_cfg: Config, tiny_data) -> None:
    cfg = with_overrides(tiny_cfg, {"runtime.precision": "fp16", "runtime.device": "cpu"})
    with pytest.raises(ConfigError, match=r"runtime\.precision.*fp16 needs a CUDA device"):
        train(cfg, data=tiny_data)


# ---------------------------------------------------------------------------- compile
def test_compiled_blocks_train_the_same_run(tiny_cfg: Config, tiny_data) -> None:
    # The tiny preset grows 1 -> 2 blocks half way: the new block must run its own compiled
    # forward (a copy of block 0's compiled forward would leave block 1 untrained).
    cfg = fp32(tiny_cfg)
    t0 = time.perf_counter()
    eager = train(cfg, data=tiny_data)
    eager_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = train(with_overrides(cfg, {"runtime.compile": True}), data=tiny_data)
    compiled_s = time.perf_counter() - t0
    print(f"tiny run: eager {eager_s:.1f}s, compiled {compiled_s:.1f}s (compile included)")
    assert compiled.status == "completed"
    for a, b in zip(eager.curve, compiled.curve, strict=True):
        assert (a["step"], a["flops"], a["mean_depth"]) == (b["step"], b["flops"], b["mean_depth"])
        # Inductor fuses and reorders fp32 arithmetic: rounding-level differences only.
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-3)


def test_blocks_added_by_growth_are_compiled_too(tiny_cfg: Config, tiny_data) -> None:
    cfg = fp32(tiny_cfg, **{"runtime.compile": True})
    run = _Run(cfg, tiny_data, None, None, None)
    assert [b._compiled_call_impl is not None for b in run.model.blocks] == [True]
    run.st.step = run.plan.growth_steps[0]  # the boundary into stage 1 (2 blocks)
    run.grow_due_stages()
    # growth deep-copies blocks, and a copy comes out uncompiled
    assert [b._compiled_call_impl is not None for b in run.model.blocks] == [True, True]


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_tiny_run_learns_on_cuda_at_each_precision(
    tiny_cfg: Config, tiny_data, precision: str
) -> None:
    cfg = with_overrides(tiny_cfg, {"runtime.device": "cuda", "runtime.precision": precision})
    result = train(cfg, data=tiny_data)
    assert result.status == "completed" and result.precision == precision
    assert result.curve[-1]["eval_loss"] < result.curve[0]["eval_loss"] - 0.5
