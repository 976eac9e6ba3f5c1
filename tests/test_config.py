"""Config: presets, validation rules (design.md "One config"), parsing, YAML, hashing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from progtune.config import (
    PRESETS,
    Config,
    config_hash,
    flatten,
    from_flat,
    knob_names,
    list_text,
    load_yaml,
    parse_assignments,
    resolve,
    with_overrides,
)
from progtune.errors import ConfigError, ProgtuneError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- presets
def _knob_text(value: object) -> str:
    """A knob value as a user types it after KEY= on the command line."""
    if isinstance(value, tuple):
        return "[" + ",".join(map(repr, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_round_trips(name: str, tmp_path: Path) -> None:
    """Every knob of the preset travels through each public form and comes back equal: flat
    dict, YAML file (nested sections) and KEY=VALUE text - each applied over another preset, so
    a knob a form drops or mistypes shows as a difference."""
    cfg = resolve(name)
    assert cfg.stages.unique_layers[-1] == cfg.model.n_layers
    flat = flatten(cfg)
    assert from_flat(flat) == cfg
    other = "tiny" if name != "tiny" else "gpt2-base"
    assert resolve(other) != cfg
    nested: dict = {}
    for key, value in flat.items():
        section, _, leaf = key.rpartition(".")
        where = nested.setdefault(section, {}) if section else nested
        where[leaf] = list(value) if isinstance(value, tuple) else value
    yaml_file = tmp_path / "all.yaml"
    yaml_file.write_text(yaml.safe_dump(nested))
    assert resolve(other, config_file=yaml_file) == cfg
    typed = [f"{key}={_knob_text(value)}" for key, value in flat.items()]
    assert resolve(other, overrides=parse_assignments(typed)) == cfg


# Published sizes: GPT-2 small 124,439,808 parameters (vocab 50257, 1024 positions);
# BERT-base ~110 M (vocab 30522). Llama-base has no published twin: its count is derived from
# the architecture (untied embeddings, grouped-query attention with 4 KV heads, SwiGLU 2048).
def _llama_base_params(vocab: int) -> int:
    h, h_kv, f, n = 768, 4 * 64, 2048, 12
    block = 2 * h * h + 2 * h * h_kv + 3 * h * f + 2 * h  # q, o; k, v; gate, up, down; 2 norms
    return 2 * vocab * h + n * block + h  # embed + lm_head, blocks, final norm


@pytest.mark.parametrize(
    ("name", "vocab", "expected"),
    [
        ("gpt2-base", 50257, 124_439_808),
        ("llama-base", 32000, _llama_base_params(32000)),
        ("bert-base", 30522, 110_000_000),
    ],
)
def test_base_presets_build_on_meta(name: str, vocab: int, expected: int) -> None:
    import torch

    from progtune.model import build_hf_model

    cfg = resolve(name)
    assert (cfg.model.n_layers, cfg.model.d_model) == (12, 768)
    model = build_hf_model(cfg.model, vocab, device="meta")
    params = list(model.parameters())
    assert all(p.device == torch.device("meta") for p in params)  # no memory was allocated
    n = sum(p.numel() for p in params)
    assert n == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------------------- validation rules
def _tiny(**overrides: object) -> Config:
    return resolve("tiny", overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # len(boundaries) == stages - 1
        ({"stages.boundaries": [0.3, 0.6]}, "stages.boundaries"),
        ({"stages.boundaries": []}, "stages.boundaries"),
        # boundaries strictly increasing, inside (0, 1)
        (
            {
                "model.n_layers": 4,
                "stages.unique_layers": [1, 2, 4],
                "stages.boundaries": [0.5, 0.5],
            },
            "stages.boundaries",
        ),
        (
            {
                "model.n_layers": 4,
                "stages.unique_layers": [1, 2, 4],
                "stages.boundaries": [0.6, 0.3],
            },
            "stages.boundaries",
        ),
        ({"stages.boundaries": [0.0]}, "stages.boundaries"),
        ({"stages.boundaries": [1.0]}, "stages.boundaries"),
        ({"stages.boundaries": [-0.2]}, "stages.boundaries"),
        # unique layers strictly increasing, >= 1, ending at model.n_layers
        (
            {
                "model.n_layers": 4,
                "stages.unique_layers": [1, 1, 4],
                "stages.boundaries": [0.2, 0.5],
            },
            "stages.unique_layers",
        ),
        (
            {
                "model.n_layers": 4,
                "stages.unique_layers": [2, 1, 4],
                "stages.boundaries": [0.2, 0.5],
            },
            "stages.unique_layers",
        ),
        ({"stages.unique_layers": [0, 2]}, "stages.unique_layers"),
        ({"model.n_layers": 4}, "stages.unique_layers"),  # (1, 2) does not end at 4
        ({"stages.unique_layers": [1, 3]}, "stages.unique_layers"),  # ends beyond n_layers=2
        ({"stages.unique_layers": []}, "stages.unique_layers"),
        # heads divide the width (and KV heads divide the heads)
        ({"model.n_heads": 3}, "model.n_heads"),
        ({"model.arch": "llama", "model.n_kv_heads": 3}, "model.n_kv_heads"),
        # zero / negative budget
        ({"budget.tokens": 0}, "budget.tokens"),
        ({"budget.tokens": -5}, "budget.tokens"),
        ({"budget.tokens": 100}, "budget.tokens"),  # less than one step per stage
        ({"budget.batch_size": 0}, "budget.batch_size"),
        ({"budget.grad_accum": -1}, "budget.grad_accum"),
        # choices
        ({"model.arch": "t5"}, "model.arch"),
        ({"sampling.strategy": "random"}, "sampling.strategy"),
        ({"growth.operator": "copy"}, "growth.operator"),
        ({"lr.schedule": "step"}, "lr.schedule"),
        ({"lr.peak": 0}, "lr.peak"),
    ],
)
def test_invalid_values_name_their_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        _tiny(**overrides)
    assert isinstance(err.value, ProgtuneError) and err.value.exit_code == 2


def test_valid_multi_stage_schedule_passes() -> None:
    cfg = _tiny(
        **{
            "model.n_layers": 4,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.25, 0.5],
        }
    )
    assert cfg.stages.unique_layers == (1, 2, 4) and cfg.stages.boundaries == (0.25, 0.5)
    assert _tiny(**{"stages.unique_layers": [2], "stages.boundaries": []}).stages.boundaries == ()


def test_unknown_key_suggests_the_closest_knob() -> None:
    with pytest.raises(ConfigError, match=r"lr\.peek.*did you mean lr\.peak"):
        _tiny(**{"lr.peek": 1e-3})
    with pytest.raises(ConfigError, match=r"model\.n_layer\b.*model\.n_layers"):
        resolve("tiny", overrides={"model": {"n_layer": 4}})  # nested form, same message
    with pytest.raises(ConfigError, match="zzz_qqq"):
        _tiny(zzz_qqq=1)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve("huge")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.n_layers", "four"),
        ("model.n_layers", "2.5"),
        ("model.n_layers", 2.5),
        ("model.n_layers", True),
        ("lr.peak", "fast"),
        ("lr.peak", "nan"),
        ("lr.peak", [1e-3]),
        ("data.allow_download", "maybe"),
        ("data.corpus", ["a", "b"]),
        ("stages.unique_layers", {"a": 1}),
        ("stages.unique_layers", "1-x-2"),
        ("stages.boundaries", "[0.5"),
    ],
)
def test_wrong_type_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _tiny(**{key: value})


# ---------------------------------------------------------------------------- KEY=VALUE parsing
def test_key_value_strings_are_typed() -> None:
    overrides = parse_assignments(
        [
            "lr.peak=1e-3",  # YAML 1.1 would read this as a string
            "model.n_layers=4",
            "stages.unique_layers=[1,2,4]",
            "stages.boundaries=0.25,0.5",
            "data.allow_download=true",
            "budget.tokens=2e6",
            "eval.max_tokens=8_192",
            "lr.min_ratio=0",
            "data.corpus=a=b.txt",  # only the first '=' separates key and value
        ]
    )
    assert overrides["data.corpus"] == "a=b.txt"
    cfg = resolve("tiny", overrides=overrides)
    assert cfg.lr.peak == 1e-3 and type(cfg.lr.peak) is float
    assert cfg.stages.unique_layers == (1, 2, 4)
    assert all(type(k) is int for k in cfg.stages.unique_layers)
    assert cfg.stages.boundaries == (0.25, 0.5)
    assert cfg.data.allow_download is True
    assert cfg.budget.tokens == 2_000_000 and type(cfg.budget.tokens) is int
    assert cfg.eval.max_tokens == 8192
    assert cfg.lr.min_ratio == 0.0 and type(cfg.lr.min_ratio) is float


@pytest.mark.parametrize("text", ["[1,2,4]", "1-2-4", "1,2,4", "[1, 2, 4]", " 1-2-4 "])
def test_list_forms(text: str) -> None:
    cfg = resolve(
        "tiny",
        overrides={
            "model.n_layers": "4",
            "stages.unique_layers": text,
            "stages.boundaries": "[0.2, 0.5]",
        },
    )
    assert cfg.stages.unique_layers == (1, 2, 4)


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("false", False), ("yes", True), ("0", False)]
)
def test_bool_forms(text: str, expected: bool) -> None:
    assert _tiny(**{"data.allow_download": text}).data.allow_download is expected


def test_assignment_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["lr.peak"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["=3"])


# ---------------------------------------------------------------------------- YAML files
def test_yaml_nested_sections_and_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n"
        "  arch: llama\n"
        "  n_layers: 4\n"
        "stages.unique_layers: [1, 2, 4]\n"
        "stages:\n"
        "  boundaries: [0.25, 0.5]\n"
        "lr.peak: 1e-3\n"  # a string to YAML 1.1; the knob's type makes it a float
        "budget:\n"
        "  tokens: 2e6\n"
        "sampling.strategy: uniform\n"
    )
    assert load_yaml(path)["model.arch"] == "llama"
    cfg = resolve("tiny", config_file=path)
    assert cfg.model.arch == "llama" and cfg.model.n_layers == 4
    assert cfg.stages.unique_layers == (1, 2, 4) and cfg.stages.boundaries == (0.25, 0.5)
    assert cfg.lr.peak == 1e-3 and cfg.budget.tokens == 2_000_000
    assert cfg.sampling.strategy == "uniform"
    assert cfg.model.d_model == 32  # untouched knobs keep the preset's values
    # Overrides beat the file, the file beats the preset.
    cfg2 = resolve("tiny", config_file=path, overrides={"lr.peak": "2e-3"})
    assert cfg2.lr.peak == 2e-3 and cfg2.model.arch == "llama"


def test_yaml_errors_name_file_or_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("tiny", config_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve("tiny", config_file=bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("lr:\n  warmup: 0.1\n")
    with pytest.raises(ConfigError, match=r"lr\.warmup\b.*did you mean lr\.warmup_fraction"):
        resolve("tiny", config_file=typo)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve("tiny", config_file=not_mapping)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert resolve("tiny", config_file=empty) == resolve("tiny")


# ---------------------------------------------------------------------------- flatten / hash
def test_flatten_from_flat_round_trip() -> None:
    cfg = resolve(
        "tiny",
        overrides={
            "model.arch": "bert",
            "model.n_layers": 4,
            "stages.unique_layers": [1, 2, 4],
            "stages.boundaries": [0.1, 0.35],
            "lr.peak": 1.234567891234e-3,
            "runtime.threads": 2,
            "seed": 7,
        },
    )
    flat = flatten(cfg)
    assert list(flat) == knob_names()
    assert flat["stages.unique_layers"] == (1, 2, 4)
    assert from_flat(flat) == cfg
    # CLI text forms and numpy scalars (pandas rows) rebuild the same config.
    as_text = {
        k: list_text(v) if isinstance(v, tuple) and k.endswith("unique_layers") else v
        for k, v in flat.items()
    }
    as_text["lr.peak"] = repr(flat["lr.peak"])
    as_text["seed"] = np.int64(7)
    as_text["lr.beta2"] = np.float64(flat["lr.beta2"])
    assert from_flat(as_text) == cfg
    assert list_text((1, 3, 6, 12)) == "1-3-6-12"
    assert list_text((0.05, 0.1, 0.25)) == "0.05-0.1-0.25"


def test_config_hash_is_stable_and_ignores_runtime() -> None:
    cfg = resolve("tiny")
    assert config_hash(cfg) == config_hash(resolve("tiny"))
    same_maths = with_overrides(
        cfg,
        {
            "runtime.device": "cpu",
            "runtime.precision": "fp32",
            "runtime.threads": 3,
            "runtime.checkpoint_every": 0,
            "data.cache_dir": "/somewhere/else",
        },
    )
    assert config_hash(same_maths) == config_hash(cfg)
    for key, value in [("lr.peak", 1e-3), ("seed", 1), ("sampling.strategy", "none")]:
        assert config_hash(with_overrides(cfg, {key: value})) != config_hash(cfg), key
    # Stable across interpreters (no dependence on Python's per-process hash seed).
    code = "from progtune.config import resolve, config_hash; print(config_hash(resolve('tiny')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == config_hash(cfg)
