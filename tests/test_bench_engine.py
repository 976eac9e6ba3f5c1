"""The engine benchmarks of issue 12 in their tiny modes, so that they cannot rot.

bench/paired_ratios.py, bench/workers_throughput.py, bench/compile_cpu.py and
bench/trainer_overhead.py: their arithmetic on hand-made curves (exact), their bad input (one
line, exit 2), and each script end to end on the `tiny` preset on one thread (figures present and
consistent, never timed: the speeds themselves are docs/benchmarks.md's business).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import BENCH, load_bench

from progtune.errors import ProgtuneError

ratios = load_bench("paired_ratios")
workers_bench = load_bench("workers_throughput")
compile_bench = load_bench("compile_cpu")
ROOT = BENCH.parent


def row(step: int, tokens: int, wall_s: float, eval_loss: float = 3.0, **extra) -> dict:
    base = {"step": step, "tokens": tokens, "wall_s": wall_s, "eval_loss": eval_loss}
    base.update({"mean_depth": 2.0, "unique_layers": 2, "stage": 0, "train_loss": 3.5})
    base["flops"] = 1e9 * tokens
    return {**base, **extra}


def run_script(name: str, *args: str, tmp: Path, timeout: float = 300) -> dict:
    """bench/NAME.py with --json in a subprocess on one thread; its figures and stdout."""
    out_path = tmp / f"{name}.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),  # nothing written outside tmp
    }
    out = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args, "--json", str(out_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return {**json.loads(out_path.read_text()), "stdout": out.stdout}


def tiny_args(cache: Path) -> list[str]:
    return ["--preset", "tiny", "runtime.threads=1", f"data.cache_dir={cache}"]


# ---------------------------------------------------------------------------- arithmetic
def test_arms_alternate_abba_and_ratios_pair_by_repeat():
    order = [ratios.arm_order(r, ("a", "b")) for r in range(4)]
    assert order == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]
    s = ratios.ratio_summary([2.0, 3.0, 8.0], [1.0, 2.0, 4.0])
    assert s == {"ratios": [2.0, 1.5, 2.0], "median": 2.0, "min": 1.5, "max": 2.0}
    line = ratios.ratio_line("x", s)
    assert line.startswith("x: 2.000 (median of 3 repeats, spread 1.500-2.000")
    with pytest.raises(ValueError, match="repeats"):
        ratios.ratio_summary([], [])


def test_compare_curves_measures_loss_gaps_and_catches_other_depths():
    a = [row(0, 0, 0.0, 4.0), row(5, 100, 1.0, 3.0), row(10, 200, 2.0, 2.5)]
    b = [row(0, 0, 0.0, 4.0), row(5, 100, 1.5, 3.002), row(10, 200, 2.5, 2.499)]
    b[2]["flops"] *= 1 + 1e-9
    c = workers_bench.compare_curves(a, b)
    assert c["same_steps_tokens_depths"] and c["rows"] == 3
    assert c["max_eval_loss_diff"] == pytest.approx(0.002)
    assert c["max_train_loss_diff"] == 0.0
    assert c["max_flops_rel_diff"] == pytest.approx(1e-9)
    b[1]["mean_depth"] = 1.5  # another depth drawn: the loss gap means nothing then
    c = workers_bench.compare_curves(a, b)
    assert not c["same_steps_tokens_depths"] and c["max_eval_loss_diff"] is None


def test_segments_split_steady_rate_from_warm_up():
    # first segment 1000 tokens in 3 s, then 1000 tokens/s steady: 2 s of warm-up excess
    curve = [row(0, 0, 0.0), row(4, 1000, 3.0), row(8, 2000, 4.0), row(12, 3000, 5.0)]
    f = compile_bench.segment_figures(curve)
    assert f["steady_tokens_per_s"] == pytest.approx(1000.0)
    assert f["warmup_excess_s"] == pytest.approx(2.0)
    assert f["first_segment_s"] == 3.0
    with pytest.raises(ProgtuneError, match="raise --tokens"):
        compile_bench.segment_figures(curve[:2])


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("script", "args", "names"),
    [
        ("workers", ["--workers", "1"], "--workers"),
        ("workers", ["--one-threads", "0"], "--one-threads"),
        ("workers", ["--preset", "nope"], "unknown preset"),
        ("workers", ["model.no_such_knob=1"], "model.no_such_knob"),
        ("compile", ["--segments", "1"], "--segments"),
        ("compile", ["runtime.no_such_knob=1"], "runtime.no_such_knob"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(script, args, names, capsys, tmp_path):
    main = {"workers": workers_bench.main, "compile": compile_bench.main}[script]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--json", str(tmp_path / "out.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names in err, err
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------------------- tiny end to end
def test_trainer_overhead_tiny(tmp_path, tiny_cache_dir):
    args = ["--repeats", "2", "--steps", "3", *tiny_args(tiny_cache_dir)]
    r = run_script("trainer_overhead", *args, tmp=tmp_path)
    assert len(r["engine_tokens_per_s"]) == len(r["plain_tokens_per_s"]) == 2
    assert r["ratio"]["ratios"] == pytest.approx(
        [e / p for e, p in zip(r["engine_tokens_per_s"], r["plain_tokens_per_s"], strict=True)]
    )
    cpu = zip(r["engine_tokens_per_cpu_s"], r["plain_tokens_per_cpu_s"], strict=True)
    assert r["ratio_cpu_time"]["ratios"] == pytest.approx([e / p for e, p in cpu])
    best = max(r["engine_tokens_per_s"]) / max(r["plain_tokens_per_s"])
    assert r["ratio_best"] == pytest.approx(best)
    assert [d["depth"] for d in r["depths"]] == [1, 2] and r["depths"][1]["time_share"] == 1.0
    assert [s["stage"] for s in r["stages"]] == [0, 1] and r["stages"][1][
        "time_per_flop_ratio"
    ] == 1
    for line in ("ratio: ", "engine / plain per repeat: ", "depth 1:", "stage 0 (depth 1)"):
        assert line in r["stdout"], r["stdout"]


@pytest.mark.slow
def test_workers_throughput_tiny(tmp_path, tiny_cache_dir):
    args = ["--repeats", "1", "--tokens", "8192", "runtime.precision=fp32"]
    r = run_script("workers_throughput", *args, *tiny_args(tiny_cache_dir), tmp=tmp_path)
    assert r["threads"] == {"one": 2, "workers": 1} and r["precision"] == "fp32"
    assert r["ranks"] == {"one": 1, "workers": 2}
    assert r["ratio"]["ratios"] == [r["tokens_per_s"]["workers"][0] / r["tokens_per_s"]["one"][0]]
    assert r["same_steps_tokens_depths"] and r["rows"] >= 3
    # dropout 0, fp32: the two runs differ by summation order only (8192 tokens = 32 steps)
    assert r["max_eval_loss_diff"] < 1e-3 and r["max_flops_rel_diff"] < 1e-12
    assert "ratio 2 workers / 1 process, training clock: " in r["stdout"]


@pytest.mark.slow
def test_compile_cpu_tiny(tmp_path, tiny_cache_dir):
    args = ["--repeats", "1", "--tokens", "4096", "--segments", "2", *tiny_args(tiny_cache_dir)]
    r = run_script("compile_cpu", *args, tmp=tmp_path, timeout=600)
    for arm in ("eager", "compile"):
        assert len(r["steady_tokens_per_s"][arm]) == 1 and r["steady_tokens_per_s"][arm][0] > 0
    assert r["ratio"]["median"] == pytest.approx(
        r["steady_tokens_per_s"]["compile"][0] / r["steady_tokens_per_s"]["eager"][0]
    )
    assert r["ratio_cpu_time"]["median"] == pytest.approx(
        r["steady_tokens_per_cpu_s"]["compile"][0] / r["steady_tokens_per_cpu_s"]["eager"][0]
    )
    assert "ratio compile / eager, steady tokens/s: " in r["stdout"]
