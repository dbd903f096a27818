"""Modes, Gundam tile-grid choice and token counts (SPEC.md 'Resolution modes and token counts')."""

import math
import random

import pytest

from deepencoder.modes import MODES, candidate_grids, choose_tile_grid, get_mode, vision_token_count


@pytest.mark.parametrize("mode,S,tokens", [("tiny", 512, 73), ("small", 640, 111), ("base", 1024, 273),
                                           ("large", 1280, 421)])
def test_single_view_token_counts(mode, S, tokens):
    m = get_mode(mode)
    assert m.base_size == S
    for w, h in [(100, 100), (3000, 500), (640, 640), (4000, 4000)]:
        assert vision_token_count(w, h, mode) == tokens


def gundam_tokens(cols, rows):
    return (10 * rows) * (10 * cols + 1) + 16 * 17 + 1


def test_gundam_formula_examples():
    assert gundam_tokens(2, 3) == 903 and gundam_tokens(3, 2) == 893
    assert choose_tile_grid(1240, 1754) == (2, 3)
    assert vision_token_count(1240, 1754, "gundam") == 903
    assert vision_token_count(1754, 1240, "gundam") == 893
    # images at or under 640 on both sides: the global view alone
    for w, h in [(640, 640), (1, 1), (640, 10), (300, 600)]:
        assert choose_tile_grid(w, h) == (1, 1)
        assert vision_token_count(w, h, "gundam") == 273
    assert choose_tile_grid(641, 640) != (1, 1)


def test_tie_rule_examples_from_spec():
    assert choose_tile_grid(1920, 1080, 9) == (4, 2)
    assert choose_tile_grid(1920, 1080, 6) == (2, 1)


def naive_choice(width, height, max_num):
    """Independent derivation: all (i, j) with 2 <= i*j <= max_num; visiting order = by i*j, and within
    one product the order upstream's set iteration gives (taken from candidate_grids, checked below to
    hold every pair exactly once). Tie: later replaces only if area > 0.5 * 640^2 * i * j."""
    order = candidate_grids(max_num)
    assert sorted(order) == sorted({(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1)
                                    if 2 <= i * j <= max_num})
    assert [a * b for a, b in order] == sorted(a * b for a, b in order)
    best, best_diff = None, math.inf
    for i, j in order:
        d = abs(width / height - i / j)
        if d < best_diff:
            best, best_diff = (i, j), d
        elif d == best_diff and width * height > 0.5 * 640 * 640 * i * j:
            best = (i, j)
    return best


@pytest.mark.parametrize("max_num", [6, 9])
def test_tile_grid_many_aspect_ratios(max_num):
    rng = random.Random(1234)
    sizes = [(rng.randint(641, 6000), rng.randint(50, 6000)) for _ in range(300)]
    sizes += [(rng.randint(50, 6000), rng.randint(641, 6000)) for _ in range(300)]
    # exact ratios produce ties between e.g. 1:1, 2:2, 3:3 and 2:1, 4:2
    sizes += [(640 * a, 640 * b) for a in range(1, 5) for b in range(1, 5) if a * b > 1]
    sizes += [(700, 700), (1300, 1300), (2000, 2000), (1300, 650), (2600, 1300), (1281, 1280)]
    for w, h in sizes:
        got = choose_tile_grid(w, h, max_num)
        assert got == naive_choice(w, h, max_num), (w, h)
        cols, rows = got
        assert 2 <= cols * rows <= max_num
        assert vision_token_count(w, h, "gundam", max_num) == gundam_tokens(cols, rows)


def test_square_ties_prefer_more_tiles_only_for_big_images():
    # 1:1 candidates in order (2,2) then (3,3): the later wins only when area > 0.5*640^2*9
    assert choose_tile_grid(700, 700) == (2, 2)
    assert choose_tile_grid(2000, 2000) == (3, 3)


def test_unknown_mode_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown mode 'huge'"):
        get_mode("huge")
    with pytest.raises(ValueError, match="positive"):
        choose_tile_grid(0, 10)
    assert set(MODES) == {"tiny", "small", "base", "large", "gundam"}
