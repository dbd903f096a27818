"""Model families in deepencoder.modes: DeepSeek-OCR 2's crop rule and token counts, the shared token-grid
arithmetic, and the size / mode / family validation (SPEC_V2 'Tiling and preprocessing', upstream
DeepSeek-OCR2-vllm ``process/image_process.py``, ``config.py`` and ``get_num_image_tokens``)."""

import math
import random

import pytest
import torch

from deepencoder import modes
from deepencoder.config import grid_sizes, token_grid
from deepencoder.modes import (
    FAMILIES,
    choose_tile_grid,
    get_mode,
    gundam_token_count,
    tile_token_side,
    vision_token_count,
)

ALL_MODES = [(f, m) for f in FAMILIES for m in modes.FAMILY_MODES[f]]


def derive_v2_grid(width, height, max_num=6, tile=768):
    """Independent derivation of upstream's choice, without its sequential scan.

    No crops when both sides are <= 768. Otherwise, among all (i, j) with 2 <= i*j <= max_num, take the
    candidates at the minimal |w/h - i/j| (the float expression upstream evaluates). Visiting by i*j, the
    first of them is taken and a later one replaces the best only when w*h > 0.5*768^2*i*j; as that bound
    grows with i*j, the winner is the largest-product tied candidate that passes it, else the first.
    """
    if width <= tile and height <= tile:
        return (1, 1)
    cands = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if 2 <= i * j <= max_num]
    diffs = {c: abs(width / height - c[0] / c[1]) for c in cands}
    best = min(diffs.values())
    tied = sorted((c for c in cands if diffs[c] == best), key=lambda c: c[0] * c[1])
    assert len({c[0] * c[1] for c in tied}) == len(tied), f"same-product tie at {width}x{height}: {tied}"
    passing = [c for c in tied[1:] if width * height > 0.5 * tile * tile * c[0] * c[1]]
    return passing[-1] if passing else tied[0]


@pytest.mark.parametrize("size,grid", [
    ((770, 616), (2, 2)),  # aspect 1.25: 2x2 and 3x2 tie; 770*616 < 0.5*768^2*6 keeps 2x2
    ((4000, 3200), (3, 2)),  # the same tie, a big image: 3x2 replaces 2x2
    ((1024, 1024), (2, 2)),
    ((1920, 1080), (2, 1)),
    ((1240, 1754), (2, 3)),  # A4 portrait at 150 dpi
    ((2480, 3508), (2, 3)),  # A4 portrait at 300 dpi
    ((3000, 400), (6, 1)),
    ((768, 768), (1, 1)), ((768, 1), (1, 1)), ((1, 768), (1, 1)), ((500, 700), (1, 1)),
    ((769, 768), (2, 2)), ((768, 769), (2, 2)),  # just over: aspect ~1, square grids
    ((769, 10), (6, 1)), ((10, 769), (1, 6)),
])
def test_v2_examples(size, grid):
    assert choose_tile_grid(*size, family="ocr2") == grid
    assert derive_v2_grid(*size) == grid
    n = grid[0] * grid[1]
    tokens = 257 if n == 1 else 144 * n + 257
    assert vision_token_count(*size, "gundam", family="ocr2") == tokens
    assert vision_token_count(*size, "base", family="ocr2") == 257


def test_v2_many_sizes_against_derivation():
    rng = random.Random(2026)
    sizes = [(rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(400)]
    sizes += [(rng.randint(1, 768), rng.randint(1, 768)) for _ in range(50)]  # never tiled
    # exact ratios: ties between grids of different products, around the area bound
    sizes += [(a * k, b * k) for a in range(1, 7) for b in range(1, 7) for k in (100, 128, 200, 384, 768, 1000)]
    sizes += [(5 * k, 4 * k) for k in range(100, 1200, 7)]  # aspect 1.25, both sides of the bound
    for max_num in (6, 5, 4):  # MAX 2 and 3 admit a same-product tie, checked on its own below
        for w, h in sizes:
            got = choose_tile_grid(w, h, max_num, family="ocr2")
            assert got == derive_v2_grid(w, h, max_num), (w, h, max_num)
            n = got[0] * got[1]
            assert n == 1 or 2 <= n <= max_num
            assert vision_token_count(w, h, "gundam", max_num, family="ocr2") == (257 if n == 1 else 144 * n + 257)


def test_same_product_tie_follows_upstream_set_order():
    """With MAX 2 only 1x2 and 2x1 exist; at aspect 1.25 they tie. Upstream's set visits (1, 2) first
    (CPython's order for these tuples), so 2x1 wins only when the area passes 0.5*768^2*2."""
    assert choose_tile_grid(1000, 800, 2, family="ocr2") == (2, 1)  # 800000 > 589824
    assert choose_tile_grid(770, 616, 2, family="ocr2") == (1, 2)  # 474320 < 589824
    assert choose_tile_grid(770, 616, 3, family="ocr2") == (1, 2)


def test_default_max_tiles_per_family():
    assert get_mode("gundam", "ocr1").max_tiles == 9 and get_mode("gundam", "ocr2").max_tiles == 6
    # 1920x1080: ocr1's MAX 9 picks 4x2, MAX 6 picks 2x1; ocr2 defaults to 6
    assert choose_tile_grid(1920, 1080) == (4, 2) and choose_tile_grid(1920, 1080, family="ocr2") == (2, 1)
    assert vision_token_count(1920, 1080, "gundam") == 20 * 41 + 273
    assert vision_token_count(1920, 1080, "gundam", family="ocr2") == 2 * 144 + 257
    # an explicit MAX still applies: 2600x1300 ties 2x1 with 4x2, and its area passes the 4x2 bound
    assert choose_tile_grid(2600, 1300, family="ocr2") == (2, 1)
    assert choose_tile_grid(2600, 1300, 9, family="ocr2") == (4, 2)
    assert choose_tile_grid(1920, 1080, 9, family="ocr2") == (2, 1)  # 1920*1080 < 0.5*768^2*8


def test_v2_token_counts_for_every_tile_count():
    assert [gundam_token_count(p, 1, "ocr2") for p in range(1, 7)] == [257, 545, 689, 833, 977, 1121]
    assert gundam_token_count(2, 3, "ocr2") == gundam_token_count(3, 2, "ocr2") == 1121  # no newlines
    assert gundam_token_count(2, 3, "ocr1") == 903 and gundam_token_count(3, 2, "ocr1") == 893


def built_layout(g, t, cols, rows, family):
    """The LLM token sequence spelled out as upstream assembles it, as a list of labels."""
    seq = []
    if cols * rows > 1:
        if family == "ocr1":  # tiles stitched into one (rows*t) x (cols*t) grid, a newline after each row
            for _ in range(rows * t):
                seq += ["tile"] * (cols * t) + ["newline"]
        else:  # each tile's t*t queries in crop order, no newlines
            seq += ["tile"] * (cols * rows * t * t)
    for _ in range(g):
        seq += ["global"] * g + (["newline"] if family == "ocr1" else [])
    return seq + ["separator"]


def test_layout_formula_against_built_sequences():
    for family in FAMILIES:
        for g in (1, 4, 10, 16, 20):
            for t in (2, 3, 10, 12):
                for cols in range(1, 4):
                    for rows in range(1, 4):
                        expect = len(built_layout(g, t, cols, rows, family))
                        assert modes.layout_token_count(g, t, cols, rows, family) == expect
    assert modes.view_token_count("base", "ocr2") == 257 and modes.view_token_count("large") == 421


def test_mode_fields():
    g2 = get_mode("gundam", "ocr2")
    assert (g2.family, g2.base_size, g2.tile_size, g2.min_tiles, g2.max_tiles, g2.crop, g2.pad) == \
        ("ocr2", 1024, 768, 2, 6, True, True)
    b2 = get_mode("BASE", "ocr2")
    assert (b2.family, b2.base_size, b2.crop, b2.pad) == ("ocr2", 1024, False, True)
    g1 = get_mode("gundam")
    assert (g1.family, g1.tile_size, g1.min_tiles, g1.max_tiles) == ("ocr1", 640, 2, 9)
    assert tile_token_side("ocr1") == modes.TILE_GRID == 10 and tile_token_side("ocr2") == 12
    assert g2.grid == (64, 16) and g2.tile_grid == 12
    assert FAMILIES == ("ocr1", "ocr2") and set(modes.MODES_V2) == {"gundam", "base"}


def test_token_grid_is_pytorch_conv_arithmetic():
    """g = ceil(G/4) as two stride-2, pad-1, kernel-3 convolutions actually produce."""
    convs = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, 2, 1), torch.nn.Conv2d(1, 1, 3, 2, 1))
    for G in list(range(1, 40)) + [48, 64, 80, 127]:
        with torch.no_grad():
            out = convs(torch.zeros(1, 1, G, G))
        assert out.shape[-1] == token_grid(G) == math.ceil(G / 4), G
    assert grid_sizes(768) == (48, 12) and grid_sizes(1024) == (64, 16) and grid_sizes(640) == (40, 10)


@pytest.mark.parametrize("family,mode", ALL_MODES)
@pytest.mark.parametrize("w,h", [(0, 0), (0, 100), (100, 0), (-5, 100), (100, -1), (float("nan"), 100),
                                 (100, float("nan")), (100.5, 100), (100.0, 100), ("100", 100), (True, 100),
                                 (None, 100)])
def test_bad_sizes_rejected_everywhere(family, mode, w, h):
    with pytest.raises(ValueError, match="image size"):
        vision_token_count(w, h, mode, family=family)


def test_bad_sizes_in_grid_choice_and_bad_limits():
    for fam in FAMILIES:
        with pytest.raises(ValueError, match="positive"):
            choose_tile_grid(0, 10, family=fam)
        with pytest.raises(ValueError, match="image size"):
            choose_tile_grid(float("nan"), 1000, family=fam)
        with pytest.raises(ValueError, match="max tiles"):
            vision_token_count(1000, 1000, "gundam", max_tiles=1, family=fam)
        with pytest.raises(ValueError, match="max tiles"):
            vision_token_count(1000, 1000, "gundam", max_tiles=2.5, family=fam)
        with pytest.raises(ValueError, match="max tiles"):
            choose_tile_grid(1000, 1000, 0, family=fam)


def test_mode_not_in_family_and_unknown_family():
    for bad in ("tiny", "small", "large", "huge"):
        with pytest.raises(ValueError, match=rf"unknown mode '{bad}' for model family 'ocr2': choose one of "
                                             r"gundam, base$"):
            get_mode(bad, "ocr2")
        with pytest.raises(ValueError, match="ocr2"):
            vision_token_count(1000, 1000, bad, family="ocr2")
    with pytest.raises(ValueError, match=r"unknown model family 'ocr3': choose one of ocr1, ocr2"):
        get_mode("base", "ocr3")
    with pytest.raises(ValueError, match="unknown model family"):
        choose_tile_grid(1000, 1000, family=None)
    with pytest.raises(ValueError, match="unknown mode 'huge' for model family 'ocr1'"):
        get_mode("huge")


def upstream_candidates(min_num, max_num):
    """Upstream's literal comprehension (image_process.py ``count_tiles``), visiting order included."""
    target = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                 if i * j <= max_num and i * j >= min_num)
    return sorted(target, key=lambda x: x[0] * x[1])


def test_candidate_order_equals_upstream_comprehension():
    for min_num in (1, 2, 3):
        for max_num in range(min_num, 37):
            assert modes.candidate_grids(max_num, min_num) == upstream_candidates(min_num, max_num), (min_num, max_num)


def test_max_tiles_limit(monkeypatch):
    monkeypatch.delenv("DEEPENCODER_MAX_TILES_LIMIT", raising=False)
    assert modes.max_tiles_limit() == 36
    assert choose_tile_grid(40000, 1000, 36) == (36, 1)
    for fam in FAMILIES:
        with pytest.raises(ValueError, match=r"max tiles 37 exceeds the limit of 36 .*DEEPENCODER_MAX_TILES_LIMIT"):
            vision_token_count(1000, 1000, "gundam", 37, family=fam)
        with pytest.raises(ValueError, match="exceeds the limit"):
            choose_tile_grid(1000, 1000, 10**9, family=fam)
    monkeypatch.setenv("DEEPENCODER_MAX_TILES_LIMIT", "100")
    assert choose_tile_grid(100000, 1000, 100, family="ocr2") == (100, 1)
    assert vision_token_count(100000, 1000, "gundam", 100, family="ocr2") == 100 * 144 + 257
    monkeypatch.setenv("DEEPENCODER_MAX_TILES_LIMIT", "many")
    with pytest.raises(ValueError, match="DEEPENCODER_MAX_TILES_LIMIT must be an integer"):
        choose_tile_grid(1000, 1000, 6)
