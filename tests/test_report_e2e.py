"""End-to-end: a real tiny `progtune search`, then `progtune report` on its results folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def progtune(tmp: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp / "cache"), "MPLBACKEND": "Agg"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "progtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp,
    )


def test_report_of_a_real_tiny_search(tmp_path):
    res = tmp_path / "res"
    search = progtune(
        tmp_path,
        *("search", "--space", "smoke", "--preset", "tiny", "--num-samples", "3"),
        *("--storage", str(res), "--name", "e2e"),
    )
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]

    out = tmp_path / "report"
    report = progtune(tmp_path, "report", str(res / "e2e"), "--out", str(out), "--top", "3")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "Traceback" not in report.stderr
    assert "target loss:" in report.stdout and "rank" in report.stdout
    assert str(out / "report.html") in report.stdout

    for name in ("report.html", "report.md", "ranking.parquet", "configs.parquet"):
        assert (out / name).stat().st_size > 0, name
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"loss_vs_flops.png", "loss_vs_wall.png", "depth_schedule.png"} <= names
    assert any(n.startswith("objective_vs_") for n in names)  # the smoke space varies 2 knobs
    for png in pngs:
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), png.name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)  # self-contained
    md = (out / "report.md").read_text()
    for png in pngs:
        assert f"]({png.name})" in md
    for text in ("Target held-out loss", "e2e/reference", "Provenance", "data_fingerprint"):
        assert text in md, text

    ranking = pd.read_parquet(out / "ranking.parquet")
    assert len(ranking) == 3
    assert set(ranking["role"]) == {"search"}
    # The report recomputes compute-to-target from the curves with the search's target:
    # the same numbers the search stored in trials.parquet. A run counts as unreached only if
    # its curve never gets to the target, and at least one run reaches it.
    trials = pd.read_parquet(res / "e2e" / "trials.parquet").set_index("trial_id")
    curves = pd.read_parquet(res / "e2e" / "curves.parquet")
    target = trials["target_loss"].iloc[0]
    for row in ranking.itertuples():
        stored = trials.loc[row.trial_id, "flops_to_target"]
        if pd.isna(row.flops_to_target):
            assert pd.isna(stored), row.trial_id
            assert curves[curves.trial_id == row.trial_id].eval_loss.min() > target
        else:
            assert row.flops_to_target == pytest.approx(stored, rel=1e-12), row.trial_id
    assert ranking["flops_to_target"].notna().any()
    # Ranked by the README's rule: reached first by FLOPs to target, then the rest by final
    # loss; the rank is 1 + the number of runs strictly ahead (equal keys share a rank).
    search = trials[trials["role"] == "search"]
    keys = {
        tid: (0, row.flops_to_target) if pd.notna(row.flops_to_target) else (1, row.final_eval_loss)
        for tid, row in search.iterrows()
    }
    assert list(ranking["trial_id"]) == sorted(keys, key=keys.get)
    expected_rank = [1 + sum(k < keys[tid] for k in keys.values()) for tid in ranking["trial_id"]]
    assert list(ranking["rank"]) == expected_rank
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
