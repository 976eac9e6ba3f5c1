"""Layer layouts and growth maps against apollo.md sections 2 and 4, in exact integers."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest

from progtune.growth import LAYOUTS, growth_map, interpolation, layer_plan, stacking


# ---------------------------------------------------------------------------- apollo.md examples
def test_interpolation_examples() -> None:
    assert layer_plan("interpolation", 3, 12) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert layer_plan("interpolation", 6, 8) == [0, 0, 1, 2, 3, 3, 4, 5]


def test_stacking_examples() -> None:
    assert layer_plan("stacking", 3, 7) == [0, 1, 2, 0, 1, 2, 2]
    assert layer_plan("stacking", 6, 8) == [0, 1, 2, 3, 4, 5, 4, 5]
    assert layer_plan("stacking", 3, 12) == [0, 1, 2] * 4


def test_growth_maps_3_to_6() -> None:
    assert growth_map("interpolation", 3, 6) == [0, 0, 1, 1, 2, 2]
    assert growth_map("stacking", 3, 6) == [0, 1, 2, 0, 1, 2]


def test_reference_schedule_maps() -> None:
    # Unique blocks 1 -> 3 -> 6 -> 12 (apollo.md section 5).
    assert growth_map("interpolation", 1, 3) == [0, 0, 0]
    assert growth_map("interpolation", 6, 12) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert growth_map("stacking", 6, 12) == [0, 1, 2, 3, 4, 5] * 2


# ---------------------------------------------------------------------------- integer arithmetic
def test_interpolation_is_exact_floor_for_all_pairs_up_to_64() -> None:
    for d in range(1, 65):
        for k in range(1, d + 1):
            expected = [math.floor(Fraction(i * k, d)) for i in range(d)]
            assert interpolation(k, d) == expected, (k, d)


@pytest.mark.parametrize(("k", "d"), [(14, 18), (21, 27)])
def test_interpolation_pairs_that_floats_misround(k: int, d: int) -> None:
    expected = [math.floor(Fraction(i * k, d)) for i in range(d)]
    assert layer_plan("interpolation", k, d) == expected
    # The float form i / (d / k) lands just below an integer here: the pair is a real trap.
    assert [int(i / (d / k)) for i in range(d)] != expected


# ---------------------------------------------------------------------------- every layout
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_is_a_valid_plan(name: str) -> None:
    """The shared test every registered layout / growth operator must pass."""
    for d in range(1, 33):
        for k in range(1, d + 1):
            plan = layer_plan(name, k, d)
            assert len(plan) == d
            assert all(type(j) is int for j in plan)
            assert set(plan) == set(range(k)), (name, k, d)  # every unique block runs
            if k == d:
                assert plan == list(range(k))  # all blocks untied: the plain model
    with pytest.raises(ValueError):
        layer_plan(name, 0, 3)
    with pytest.raises(ValueError):
        layer_plan(name, 4, 3)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_growth_preserves_the_pass_at_depth_k_new(name: str, one_torch_thread) -> None:
    """Growing k_old -> k_new unique blocks leaves the function of a k_new-deep pass unchanged:
    the logits of a real model are equal bit for bit before and after `grow`."""
    import torch

    from progtune.config import resolve
    from progtune.model import ProgressiveLM

    m = resolve(
        "tiny",
        overrides={"model.n_layers": 5, "stages.unique_layers": [5], "stages.boundaries": []},
    ).model
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for k_old in range(1, 5):
        torch.manual_seed(k_old)  # fresh, distinct blocks: a wrong copy changes the pass
        model = ProgressiveLM(m, 64, k_old, name).eval()
        for k_new in range(k_old + 1, 6):
            grown = copy.deepcopy(model)
            grown.set_depth(k_new)
            with torch.no_grad():
                before = grown.hf(input_ids=ids, use_cache=False).logits
                mapping = grown.grow(k_new)
                after = grown.hf(input_ids=ids, use_cache=False).logits
            assert grown.k == k_new and len(mapping) == k_new
            assert set(mapping) == set(range(k_old)), (name, k_old, k_new)  # none dropped
            assert torch.equal(before, after), (name, k_old, k_new, mapping)


def _expected_map(name: str, k_old: int, k_new: int) -> list[int]:
    """The copy maps of apollo.md section 4, written out independently of progtune.growth."""
    if name == "interpolation":  # new block j copies old block floor(j k_old / k_new)
        return [math.floor(Fraction(j * k_old, k_new)) for j in range(k_new)]
    # stacking: whole runs 0..k_old-1, then a partial run of the top blocks
    whole = (k_new // k_old) * k_old
    return [j % k_old if j < whole else k_old - (k_new - j) for j in range(k_new)]


@pytest.mark.parametrize("name", ["interpolation", "stacking"])
def test_growth_maps_match_the_written_out_rules(name: str) -> None:
    for k_new in range(2, 25):
        for k_old in range(1, k_new):
            assert growth_map(name, k_old, k_new) == _expected_map(name, k_old, k_new), (
                name,
                k_old,
                k_new,
            )


def _same_pass(name: str, k_old: int, k_new: int, d: int) -> bool:
    mapping = growth_map(name, k_old, k_new)
    return [mapping[j] for j in layer_plan(name, k_new, d)] == layer_plan(name, k_old, d)


def test_interpolation_growth_preserves_every_depth_for_integer_ratios() -> None:
    # floor(floor(i k_new / d) k_old / k_new) = floor(i k_old / d) when k_old divides k_new.
    for k_old in range(1, 17):
        for k_new in range(2 * k_old, 33, k_old):
            for d in range(k_new, 33):
                assert _same_pass("interpolation", k_old, k_new, d), (k_old, k_new, d)


def test_stacking_growth_preserves_multiples_of_k_new_only() -> None:
    # (i mod k_new) mod k_old = i mod k_old when k_old | k_new and d is a multiple of k_new.
    for k_old in range(1, 9):
        for k_new in range(2 * k_old, 17, k_old):
            for d in range(k_new, 33, k_new):
                assert _same_pass("stacking", k_old, k_new, d), (k_old, k_new, d)
    # Elsewhere the partial top run differs: 2 -> 4 at depth 7.
    assert stacking(2, 7) == [0, 1, 0, 1, 0, 1, 1]
    assert not _same_pass("stacking", 2, 4, 7)
