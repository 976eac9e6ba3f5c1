"""Config hashes of existing experiments stay the same when a knob is added (resume, reuse)."""

from progtune.config import config_hash, resolve, with_overrides


def test_presets_keep_the_hashes_they_had_before_sampling_per_existed() -> None:
    # Computed at d4896a3, the last commit without `sampling.per`.
    assert config_hash(resolve("cpu-small")) == "f2ce0a3898fb0e43"
    assert config_hash(resolve("tiny")) == "aca44d1b23946515"


def test_an_added_knob_away_from_its_legacy_value_changes_the_hash() -> None:
    cfg = resolve("tiny")
    assert config_hash(with_overrides(cfg, {"sampling.per": "step"})) != config_hash(cfg)
