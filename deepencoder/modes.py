"""Model families, resolution modes, Gundam tile-grid choice and token counts.

Pure arithmetic, no images: the preprocessing (``deepencoder.preprocess``), the models' token layouts and
the optical-compression planner all agree through these functions.

Facts, from upstream's ``process/image_process.py`` (``count_tiles``, ``find_closest_aspect_ratio``,
``tokenize_with_images``), ``config.py`` and the model's ``get_num_image_tokens``:

* ``"ocr1"`` (DeepSeek-OCR): tiny 512 / small 640 (plain resize), base 1024 / large 1280 (pad to square),
  gundam = base view + 640×640 tiles (MIN 2, MAX 9 in the Hugging Face code, 6 in the vLLM code; no tiles
  when both sides are ≤ 640). LLM tokens per view: g rows of g tokens each followed by a newline, then one
  view separator: g·(g+1) + 1; tiles add (rows·t)·(cols·t + 1), t = 10.
* ``"ocr2"`` (DeepSeek-OCR 2, ``DeepSeek-OCR2-vllm``): gundam (upstream's only mode: 1024 view padded to
  square + 768×768 tiles, MIN_CROPS 2, MAX_CROPS 6, no tiles when both sides are ≤ 768) and base (the same
  1024 view, never tiled). No newline tokens: g² + 1 for the view (257), plus t² = 144 per tile.
  Upstream only supports the tiled mode; its ``CROP_MODE = False`` switch would squash the image to
  768×768 before padding (``image.resize((768, 768))`` in ``tokenize_with_images``). This package's
  ocr2 "base" is instead exactly the Gundam global view without tiles (what upstream encodes for any
  image ≤ 768×768), so its pixels equal the first view of "gundam".
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .config import grid_sizes, token_grid

FAMILIES = ("ocr1", "ocr2")
PATCH = 16  # SAM patch size, both families


@dataclass(frozen=True)
class Mode:
    """One resolution mode of one family.

    base_size: side of the global view; crop: Gundam (tiles of ``tile_size`` plus the global view);
    pad: aspect-preserving pad to square (True) or plain resize (False); min_tiles / max_tiles: the
    family's default tile-count bounds (only used when ``crop``).
    """

    name: str
    base_size: int
    crop: bool
    pad: bool
    family: str = "ocr1"
    tile_size: int = 640
    min_tiles: int = 2
    max_tiles: int = 9

    @property
    def grid(self) -> Tuple[int, int]:
        """(G, g) of the global view: SAM patch grid and compressed token grid."""
        return grid_sizes(self.base_size, PATCH)

    @property
    def tile_grid(self) -> int:
        """Projected tokens per tile side: token_grid(tile_size / 16) (640 → 10 for ocr1, 768 → 12 for ocr2)."""
        return token_grid(self.tile_size // PATCH)


MODES: Dict[str, Mode] = {  # ocr1, kept under this name for existing callers
    "tiny": Mode("tiny", 512, crop=False, pad=False),
    "small": Mode("small", 640, crop=False, pad=False),
    "base": Mode("base", 1024, crop=False, pad=True),
    "large": Mode("large", 1280, crop=False, pad=True),
    "gundam": Mode("gundam", 1024, crop=True, pad=True),
}
_V2 = dict(family="ocr2", tile_size=768, min_tiles=2, max_tiles=6)
MODES_V2: Dict[str, Mode] = {
    "gundam": Mode("gundam", 1024, crop=True, pad=True, **_V2),
    "base": Mode("base", 1024, crop=False, pad=True, **_V2),
}
FAMILY_MODES: Dict[str, Dict[str, Mode]] = {"ocr1": MODES, "ocr2": MODES_V2}
DEFAULT_MODE = {"ocr1": "base", "ocr2": "gundam"}  # ocr2: upstream's only mode

TILE_SIZE = MODES["gundam"].tile_size  # ocr1 (640)
DEFAULT_MAX_TILES = MODES["gundam"].max_tiles  # ocr1: Hugging Face remote code 9; the vLLM code uses 6
MIN_TILES = MODES["gundam"].min_tiles


def check_family(family) -> str:
    """``family`` normalised to one of :data:`FAMILIES`, or a one-line ValueError listing them."""
    if not isinstance(family, str) or family.lower() not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")
    return family.lower()


def get_mode(mode, family: str = "ocr1") -> Mode:
    """The :class:`Mode` called ``mode`` in ``family``; a :class:`Mode` is returned as is (it carries its
    own family)."""
    if isinstance(mode, Mode):
        return mode
    fam = check_family(family)
    table = FAMILY_MODES[fam]
    if not isinstance(mode, str) or mode.lower() not in table:
        raise ValueError(f"unknown mode {mode!r} for model family {fam!r}: choose one of {', '.join(table)}")
    return table[mode.lower()]


def tile_token_side(family: str = "ocr1") -> int:
    """Projected tokens per side of one Gundam tile of ``family`` (ocr1 10, ocr2 12; ``Mode.tile_grid``)."""
    return get_mode("gundam", family).tile_grid


TILE_GRID = tile_token_side("ocr1")  # 10


def _check_int(v, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {v!r}")
    if v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v}")
    return int(v)


def max_tiles_limit() -> int:
    """Largest Gundam MAX accepted: 36 (a 6×6 grid, 4× upstream's largest default), or the value of the
    environment variable DEEPENCODER_MAX_TILES_LIMIT (:data:`deepencoder.limits.TILES`, the one place the
    cap and its variable are defined). Bounds the views' memory (36 tiles of 768² are 255 MB in float32)
    and the encoder's work for one image."""
    from .limits import TILES

    return TILES.value


def _check_max_tiles(v, lo: int) -> int:
    v = _check_int(v, "max tiles", lo)
    limit = max_tiles_limit()
    if v > limit:
        raise ValueError(f"max tiles {v} exceeds the limit of {limit} tiles per image "
                         "(set DEEPENCODER_MAX_TILES_LIMIT to raise it)")
    return v


def resolve_max_tiles(mode: Mode, max_tiles: Optional[int]) -> int:
    """The Gundam MAX to use: the mode's family default for None, else a checked integer between the MIN
    and :func:`max_tiles_limit`."""
    return mode.max_tiles if max_tiles is None else _check_max_tiles(max_tiles, mode.min_tiles)


def _check_size(width, height) -> Tuple[int, int]:
    """Image sizes are positive integers (NaN, floats, bools, zero and negatives are refused)."""
    for v in (width, height):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"image size must be positive integers, got {width!r}x{height!r}")
    return int(width), int(height)


def candidate_grids(max_num: int = DEFAULT_MAX_TILES, min_num: int = MIN_TILES) -> List[Tuple[int, int]]:
    """Candidate (across, down) grids in upstream's visiting order (set, then stable sort by i*j)."""
    max_num = _check_max_tiles(max_num, 1)
    min_num = _check_int(min_num, "min tiles", 1)
    if max_num < min_num:
        raise ValueError(f"max tiles {max_num} is below the minimum {min_num}")
    # Upstream's set comes from a cubic comprehension (n in [min, max], i and j in [1, n]). A set's
    # iteration order depends only on the order in which new elements arrive, and (i, j) first arrives
    # at n = max(i, j, min), then in (i, j) order: inserting the pairs in that order gives the same set,
    # iteration order included, in O(max log max), so a huge max_num cannot hang here.
    pairs = [(i, j) for i in range(1, max_num + 1) for j in range(max(1, -(-min_num // i)), max_num // i + 1)]
    target = set()
    for p in sorted(pairs, key=lambda x: (max(x[0], x[1], min_num), x)):
        target.add(p)
    return sorted(target, key=lambda x: x[0] * x[1])


def choose_tile_grid(width: int, height: int, max_num: Optional[int] = None, tile_size: Optional[int] = None,
                     min_num: Optional[int] = None, family: str = "ocr1") -> Tuple[int, int]:
    """(tiles across, tiles down) for a Gundam image; (1, 1) when both sides are ≤ ``tile_size``.

    None takes the family's Gundam default (ocr1: tile 640, MIN 2, MAX 9; ocr2: tile 768, MIN 2, MAX 6).
    Closest aspect ratio wins; on an exact tie a later candidate replaces the best only if the image
    area exceeds half the candidate's tiled area (upstream ``find_closest_aspect_ratio``).
    """
    m = get_mode("gundam", family)
    width, height = _check_size(width, height)
    tile_size = m.tile_size if tile_size is None else _check_int(tile_size, "tile size", 1)
    max_num = m.max_tiles if max_num is None else max_num
    min_num = m.min_tiles if min_num is None else min_num
    cands = candidate_grids(max_num, min_num)
    if width <= tile_size and height <= tile_size:
        return (1, 1)
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in cands:
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def layout_token_count(g: int, t: int, cols: int, rows: int, family: str = "ocr1") -> int:
    """The token-layout formula, the one place it is written: LLM tokens for a global view of g×g
    compressed tokens plus a (cols, rows) grid of tiles of t×t tokens each ((1, 1): no tiles).

    ocr1 (DeepSeek-OCR ``deepseek_ocr.py``): a newline after every row, tiles stitched into one
    (rows·t)×(cols·t) grid: (rows·t)·(cols·t + 1) + g·(g + 1) + 1 separator.
    ocr2 (DeepSeek-OCR 2 ``deepseek_ocr2.py``): no newlines, tiles kept apart: cols·rows·t² + g² + 1.
    """
    fam = check_family(family)
    tiled = cols * rows > 1
    if fam == "ocr1":
        return g * (g + 1) + 1 + ((rows * t) * (cols * t + 1) if tiled else 0)
    return g * g + 1 + (cols * rows * t * t if tiled else 0)


def view_token_count(mode="base", family: str = "ocr1") -> int:
    """LLM tokens of one global view plus the view separator: g·(g+1) + 1 with newlines (ocr1: tiny 73,
    small 111, base 273, large 421), g² + 1 without (ocr2: 257)."""
    m = get_mode(mode, family)
    return layout_token_count(m.grid[1], 0, 1, 1, m.family)


def gundam_token_count(cols: int, rows: int, family: str = "ocr1") -> int:
    """LLM tokens of a Gundam image with a (cols, rows) tile grid ((1, 1): no tiles): ocr1
    (rows·10)·(cols·10 + 1) + 273 when tiled; ocr2 144 per tile + 257."""
    m = get_mode("gundam", family)
    return layout_token_count(m.grid[1], m.tile_grid, cols, rows, m.family)


def vision_token_count(width: int, height: int, mode="base", max_tiles: Optional[int] = None,
                       family: str = "ocr1") -> int:
    """Tokens handed to the LLM for one image of ``width``×``height`` pixels.

    max_tiles: Gundam grid MAX (None = the family's default: 9 for ocr1, 6 for ocr2).
    ocr1: tiny 73, small 111, base 273, large 421, gundam (10·rows)·(10·cols + 1) + 273 when tiled;
    ocr2: base 257, gundam 144·tiles + 257 when tiled.
    """
    m = get_mode(mode, family)
    width, height = _check_size(width, height)
    max_tiles = resolve_max_tiles(m, max_tiles)
    if not m.crop:
        return view_token_count(m)
    cols, rows = choose_tile_grid(width, height, max_tiles, family=m.family)
    return gundam_token_count(cols, rows, m.family)
