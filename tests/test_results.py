"""Results: schemas, atomic Parquet writes, checked reads and the one compute-to-target rule."""

import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from progtune import results
from progtune.config import KNOB_TYPES, Config, flatten, from_flat
from progtune.errors import ResultsError


def _curve(points, **extra):
    """(flops, eval_loss) pairs -> curve rows; tokens = 10 x flops, wall_s = flops / 100."""
    return [
        {"flops": f, "tokens": int(f) * 10, "wall_s": f / 100, "eval_loss": loss, **extra}
        for f, loss in points
    ]


CURVE = _curve([(100.0, 5.0), (200.0, 4.0), (300.0, 3.0), (400.0, 2.5)])


# ---------------------------------------------------------------------------- flops_to_target
def test_crossing_between_evaluations_is_interpolated():
    # 200 + (4.0 - 3.75) / (4.0 - 3.0) * (300 - 200) = 225
    assert results.flops_to_target(CURVE, 3.75) == 225.0
    assert results.flops_to_target(CURVE, 3.5) == 250.0


def test_first_evaluation_already_below_returns_its_x():
    assert results.flops_to_target(CURVE, 6.0) == 100.0


def test_never_reached_is_none():
    assert results.flops_to_target(CURVE, 2.0) is None
    assert results.flops_to_target([], 2.0) is None


def test_exactly_equal_to_target_is_that_evaluation():
    assert results.flops_to_target(CURVE, 3.0) == 300.0
    assert results.flops_to_target(_curve([(0.1, 2.0), (0.3, 1.0)]), 1.0) == 0.3


def test_missing_and_nan_losses_are_skipped():
    curve = _curve([(100.0, 5.0), (150.0, math.nan), (175.0, None), (200.0, 3.0)])
    # 100 + (5 - 4) / (5 - 3) * 100 = 150
    assert results.flops_to_target(curve, 4.0) == 150.0


def test_first_crossing_wins_on_a_non_monotone_curve():
    curve = _curve([(100.0, 5.0), (200.0, 3.0), (300.0, 4.0), (400.0, 2.0)])
    # 100 + (5 - 3.5) / (5 - 3) * 100 = 175, not the later crossing near 350
    assert results.flops_to_target(curve, 3.5) == 175.0


def test_rows_are_taken_in_order_of_x():
    assert results.flops_to_target(list(reversed(CURVE)), 3.75) == 225.0


def test_other_x_column():
    assert results.flops_to_target(CURVE, 3.75, x="tokens") == 2250.0


def test_dataframe_equals_list_of_dicts():
    plain = pd.DataFrame(CURVE)
    nullable = pd.DataFrame(CURVE).astype({"flops": "Float64", "eval_loss": "Float64"})
    nullable.loc[1, "eval_loss"] = pd.NA  # skipped: 100 + (5 - 3.75) / (5 - 3) * 200 = 225
    for target in (6.0, 3.75, 3.5, 3.0, 2.0):
        assert results.flops_to_target(plain, target) == results.flops_to_target(CURVE, target)
    assert results.flops_to_target(nullable, 3.75) == 225.0


def test_to_target_uses_one_crossing_for_every_column():
    out = results.to_target(CURVE, 3.75)
    assert out == {"flops_to_target": 225.0, "tokens_to_target": 2250.0, "wall_s_to_target": 2.25}
    assert out["flops_to_target"] == results.flops_to_target(CURVE, 3.75)
    assert results.to_target(CURVE, 1.0) == dict.fromkeys(out)
    no_wall = [{**row, "wall_s": None} for row in CURVE]
    assert results.to_target(no_wall, 3.75)["wall_s_to_target"] is None


def test_saving_and_speedup():
    assert results.saving(25.0, 100.0) == 0.75
    assert results.speedup(25.0, 100.0) == 3.0
    assert results.saving(150.0, 100.0) == -0.5
    for c_method, c_scratch in ((None, 100.0), (25.0, None), (None, None), (math.nan, 1.0)):
        assert results.saving(c_method, c_scratch) is None
        assert results.speedup(c_method, c_scratch) is None
    assert results.saving(1.0, 0.0) is None
    assert results.speedup(0.0, 1.0) is None


# ---------------------------------------------------------------------------- schemas and tables
def test_schemas_list_columns_in_the_agreed_order():
    assert results.curves_schema().names[:5] == [
        "experiment",
        "trial_id",
        "step",
        "tokens",
        "flops",
    ]
    assert len(results.CURVE_FIELDS) == 14
    names = results.trials_schema().names
    assert names[:4] == ["experiment", "trial_id", "role", "status"]
    assert names[-1] == "started_at"
    assert set(KNOB_TYPES) <= set(names)
    assert names.index("stages.unique_layers_str") == names.index("stages.unique_layers") + 1
    schema = results.trials_schema()
    assert schema.field("stages.boundaries").type == pa.list_(pa.float64())
    assert schema.field("data.allow_download").type == pa.bool_()
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")


def test_bad_rows_are_bugs():
    with pytest.raises(ValueError, match="unknown result columns"):
        results.curves_table([{"step": 1, "eval_los": 2.0}])
    with pytest.raises(ValueError, match="role"):
        results.trials_table([{"role": "scratch"}])
    with pytest.raises(ValueError, match="tokens"):
        results.curves_table([{"tokens": 1.5}])
    with pytest.raises(ValueError, match="kind"):
        results.write_table(results.curves_table([]), "x.parquet", "curve")


# ---------------------------------------------------------------------------- round trips
STARTED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _trial_rows():
    full = {
        "experiment": "exp",
        "trial_id": "t0",
        "role": "reference",
        "status": "completed",
        **flatten(Config()),
        "stages.boundaries": [0.25, 0.5],  # lists or tuples both accepted
        "target_loss": 3.5,
        "flops_to_target": 225.0,
        "total_tokens": 123456,
        "error": None,
        "threads": 2,
        "started_at": STARTED,
    }
    return [full, {"experiment": "exp", "trial_id": "t1", "role": "search", "status": "failed"}]


def test_trials_round_trip_with_every_column_type(tmp_path):
    dest = tmp_path / "exp" / "trials.parquet"  # parent folder is created
    results.write_trials(_trial_rows(), dest)
    table = results.read_table(dest, "trials")
    assert table.schema.equals(results.trials_schema())
    assert table.schema.metadata[results.SCHEMA_KEY] == b"1"

    df = results.read_trials(dest)
    assert df["model.n_layers"].dtype == "Int64"
    assert df["lr.peak"].dtype == "Float64"
    assert df["data.allow_download"].dtype == "boolean"
    assert df["experiment"].dtype == pd.StringDtype("pyarrow")
    assert df["started_at"].dtype == "datetime64[us, UTC]"
    assert df["stages.unique_layers"].dtype == object

    first, second = df.iloc[0], df.iloc[1]
    assert first["stages.unique_layers"] == (1, 2, 4)
    assert first["stages.unique_layers_str"] == "1-2-4"
    assert first["stages.boundaries"] == (0.25, 0.5)
    assert first["stages.boundaries_str"] == "0.25-0.5"
    assert first["started_at"] == pd.Timestamp(STARTED)
    assert first["total_tokens"] == 123456
    assert pd.isna(first["error"]) and pd.isna(first["saving"])
    assert pd.isna(second["model.n_layers"]) and second["stages.unique_layers"] is None
    assert pd.isna(second["stages.unique_layers_str"]) and pd.isna(second["started_at"])
    # a record read back rebuilds its config (to_dict gives Python scalars, not numpy ones)
    record = df.to_dict("records")[0]
    assert from_flat(record).stages.boundaries == (0.25, 0.5)


def test_curves_round_trip_keeps_nulls_and_dtypes(tmp_path):
    rows = [{"experiment": "e", "trial_id": "t", "step": 1, "stage": 0, **r} for r in CURVE]
    rows[1]["eval_loss"] = None
    dest = tmp_path / "curves.parquet"
    results.write_curves(rows, dest)
    df = results.read_curves(dest)
    assert list(df.columns) == results.curves_schema().names
    assert df["step"].dtype == "Int64" and df["stage"].dtype == "Int32"
    assert df["flops"].dtype == "Float64"
    assert df["eval_loss"].isna().tolist() == [False, True, False, False]
    assert df["lr"].isna().all()
    assert results.flops_to_target(df, 3.75) == results.flops_to_target(rows, 3.75)


def test_folder_of_part_files_reads_whole(tmp_path):
    folder = tmp_path / "curves"
    for i in range(3):
        results.write_curves(_curve([(100.0 * i, 1.0)], trial_id=f"t{i}"), folder / f"{i}.parquet")
    (folder / ".3.parquet.123.tmp").write_bytes(b"half-written")  # ignored, like pyarrow does
    (folder / "_SUCCESS").write_bytes(b"")
    df = results.read_curves(folder)
    assert sorted(df["trial_id"]) == ["t0", "t1", "t2"]
    assert len(pd.read_parquet(folder)) == 3  # plain pandas reads the same folder whole


def test_file_uri(tmp_path):
    uri = f"file://{tmp_path}/sub/curves.parquet"
    results.write_curves(CURVE, uri)
    assert (tmp_path / "sub" / "curves.parquet").is_file()
    assert len(results.read_curves(uri)) == 4
    assert len(results.read_curves(f"file://{tmp_path}/sub")) == 4


# ---------------------------------------------------------------------------- the driver's writes
def _search_state(exp: Path, trial_ids=("a", "b", "c")):
    """A SearchState with trials started (no rows yet) and its experiment folder."""
    from progtune.config import preset
    from progtune.search_state import SearchState

    state = SearchState(str(exp), "e", 256, 3.0)
    for tid in trial_ids:
        state.start(tid, "search", preset("tiny"), 1e12, datetime.now(UTC))
    return state


def _row(step: int, loss: float) -> dict:
    return {"step": step, "tokens": 64 * step, "flops": 1e9 * step, "eval_loss": loss}


def _inodes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in folder.iterdir()}


def test_a_write_replaces_only_the_parts_of_trials_that_changed(tmp_path):
    """curves.parquet is a folder of one part per trial; a write rewrites the changed trials'
    parts only (a new inode each: temp file + rename) - its cost does not grow with all rows."""
    state = _search_state(tmp_path / "e")
    for tid in ("a", "b", "c"):
        state.add_row(tid, _row(0, 5.0))
    state.write(force=True)
    folder = tmp_path / "e" / "curves.parquet"
    before = _inodes(folder)
    assert sorted(before) == ["trial-a.parquet", "trial-b.parquet", "trial-c.parquet"]
    trials_file = tmp_path / "e" / "trials.parquet"
    state.add_row("b", _row(10, 4.0))  # b's row in trials.parquet stays the same
    state.write(force=True)
    after = _inodes(folder)
    assert [n for n in sorted(after) if after[n] != before[n]] == ["trial-b.parquet"]
    trials_inode = trials_file.stat().st_ino
    state.finish("c", "completed", {"final_eval_loss": 4.5})  # its row changes, not its curve
    state.write(force=True)
    assert _inodes(folder) == after and trials_file.stat().st_ino != trials_inode
    assert results.read_trials(trials_file).set_index("trial_id")["status"]["c"] == "completed"
    state.write(force=True)  # nothing changed: no part rewritten
    assert _inodes(folder) == after
    curves = results.read_curves(folder)
    assert sorted(zip(curves["trial_id"], curves["step"], strict=True)) == [
        ("a", 0),
        ("b", 0),
        ("b", 10),
        ("c", 0),
    ]
    assert len(pd.read_parquet(folder)) == 4 and len(results.read_parquet_one_open(folder)) == 4
    assert sorted(results.read_trials(tmp_path / "e" / "trials.parquet")["trial_id"]) == [
        "a",
        "b",
        "c",
    ]
    # A run the search drops (an interrupted reference run) loses its part too.
    state.trials.pop("a")
    state.write(force=True)
    assert sorted(os.listdir(folder)) == ["trial-b.parquet", "trial-c.parquet"]


def test_resume_reads_the_parts_and_an_old_single_file_moves_to_parts(tmp_path):
    exp = tmp_path / "e"
    old = _search_state(exp, ("a", "b"))
    old.add_row("a", _row(0, 5.0))
    old.add_row("b", _row(0, 5.5))
    old.add_row("b", _row(10, 4.5))
    results.write_trials(old.trial_rows(), exp / "trials.parquet")  # the layout before parts:
    rows = [{"experiment": "e", "trial_id": t, **r} for t in ("a", "b") for r in old.curve(t)]
    results.write_curves(rows, exp / "curves.parquet")  # one file holding every curve
    resumed = _search_state(exp, ())
    resumed.load()
    assert [(r["step"], r["eval_loss"]) for r in resumed.curve("b")] == [(0, 5.5), (10, 4.5)]
    resumed.add_row("a", _row(10, 4.0))
    resumed.write(force=True)
    assert sorted(os.listdir(exp / "curves.parquet")) == ["trial-a.parquet", "trial-b.parquet"]
    assert not [n for n in os.listdir(exp) if n.startswith(".")]  # no temp folder, no backup
    assert len(results.read_curves(exp / "curves.parquet")) == 4
    again = _search_state(exp, ())
    again.load()  # from the parts: nothing to rewrite until something changes
    inodes = _inodes(exp / "curves.parquet")
    again.write(force=True)
    assert _inodes(exp / "curves.parquet") == inodes
    assert [r["step"] for r in again.curve("a")] == [0, 10]


def test_a_crash_while_replacing_the_single_file_loses_nothing(tmp_path):
    """Between its two renames the old file waits beside the experiment; resume reads it."""
    from progtune.curve_parts import CurveParts

    exp = tmp_path / "e"
    state = _search_state(exp, ("a",))
    state.add_row("a", _row(0, 5.0))
    results.write_trials(state.trial_rows(), exp / "trials.parquet")
    backup = CurveParts(str(exp / "curves.parquet")).backup
    results.write_curves([{"experiment": "e", "trial_id": "a", **_row(0, 5.0)}], backup)
    resumed = _search_state(exp, ())
    resumed.load()
    assert [r["eval_loss"] for r in resumed.curve("a")] == [5.0]
    resumed.write(force=True)
    assert not backup.exists() and len(results.read_curves(exp / "curves.parquet")) == 1


# ---------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("broken", ["write_table", "fsync"])
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, broken):
    dest = tmp_path / "trials.parquet"
    results.write_trials(_trial_rows(), dest)
    before = dest.read_bytes()

    def half_write(table, where, **kwargs):
        where.write(b"PAR1 partial")
        raise OSError("disk full")

    def no_fsync(fd):
        raise OSError("disk full")

    if broken == "write_table":
        monkeypatch.setattr(pq, "write_table", half_write)
    else:
        monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(ResultsError, match=r"trials\.parquet.*disk full"):
        results.write_trials(_trial_rows()[:1], dest)
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["trials.parquet"]  # no temp file left


def test_interrupted_write_removes_the_temp_file(tmp_path, monkeypatch):
    def interrupted(table, where, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.write_curves(CURVE, tmp_path / "curves.parquet")
    assert os.listdir(tmp_path) == []


def test_readers_that_open_once_never_see_a_torn_file_while_it_is_rewritten():
    """The writer's atomic replace against a tight read loop (bench/parquet_reader_race.py):
    progtune's reader and pandas through one open file see whole versions only. The race is real
    (pd.read_parquet(path) failed on 4 % of reads here); its count is printed, not asserted."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import parquet_reader_race
    finally:
        sys.path.pop(0)
    out = parquet_reader_race.race(seconds=1.0)
    for name in ("progtune.results.read_curves(path)", 'pd.read_parquet(open(path, "rb"))'):
        reads, failed, torn = out[name]
        assert reads >= 20 and failed == 0 and torn == 0, (name, out)
    print(out)


def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match=r"cannot write results to .*file"):
        results.write_curves(CURVE, tmp_path / "file" / "curves.parquet")


def test_read_only_folder_is_refused():
    """A folder nobody may create files in, root included: sysfs (EACCES; EROFS where /sys is
    mounted read-only, as in containers). A chmod-0555 folder proves nothing as root (how CI
    runs): root writes through it. Refused with the path named; nothing left behind."""
    folder = Path("/sys/kernel")
    before = sorted(os.listdir(folder))
    with pytest.raises(ResultsError, match=r"cannot write results to /sys/kernel/curves\.parquet"):
        results.write_curves(CURVE, folder / "curves.parquet")
    assert sorted(os.listdir(folder)) == before


# ---------------------------------------------------------------------------- bad input
def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ResultsError, match=r"no trials results at .*progtune search"):
        results.read_trials(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no curves results"):
        results.read_curves(tmp_path / "empty")


def test_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "curves.parquet"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(ResultsError, match=r"curves\.parquet is not a readable Parquet file"):
        results.read_curves(bad)


def test_foreign_parquet_is_refused(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ResultsError, match="not a progtune results file"):
        results.read_trials(path)


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "trials.parquet"
    table = results.trials_table([]).replace_schema_metadata(
        {results.SCHEMA_KEY: b"99", b"progtune.kind": b"trials"}
    )
    pq.write_table(table, path)
    with pytest.raises(ResultsError, match=r"version 99.*reads version 1; upgrade progtune"):
        results.read_trials(path)


def test_kind_mismatch(tmp_path):
    path = tmp_path / "curves.parquet"
    results.write_curves(CURVE, path)
    with pytest.raises(ResultsError, match="holds curves results, not trials"):
        results.read_trials(path)


def test_import_stays_light():
    code = (
        "import sys, progtune.results; "
        "print([m for m in ('torch', 'ray', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd()
    )
    assert out.stdout.strip() == "[]"
