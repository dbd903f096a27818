"""Resolution modes, Gundam tile-grid choice and token counts (``../shared/SPEC.md``, upstream
``process/image_process.py`` ``count_tiles`` / ``find_closest_aspect_ratio`` and ``deepseek_ocr.py``
``get_num_image_tokens``).

Pure arithmetic, no images: the preprocessing (``deepencoder.preprocess``), the model's token layout and
the optical-compression planner all agree through these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

TILE_SIZE = 640
TILE_GRID = math.ceil(TILE_SIZE // 16 / 4)  # projected tokens per tile side (10)
DEFAULT_MAX_TILES = 9  # Hugging Face remote code; the vLLM code uses 6
MIN_TILES = 2


@dataclass(frozen=True)
class Mode:
    name: str
    base_size: int  # side of the global view
    crop: bool  # Gundam: tiles of TILE_SIZE plus a global view
    pad: bool  # aspect-preserving pad to square (True) or plain resize (False)

    @property
    def grid(self) -> Tuple[int, int]:
        """(G, g) of the global view: SAM patch grid and compressed token grid."""
        G = self.base_size // 16
        return G, math.ceil(G / 4)


MODES: Dict[str, Mode] = {
    "tiny": Mode("tiny", 512, crop=False, pad=False),
    "small": Mode("small", 640, crop=False, pad=False),
    "base": Mode("base", 1024, crop=False, pad=True),
    "large": Mode("large", 1280, crop=False, pad=True),
    "gundam": Mode("gundam", 1024, crop=True, pad=True),
}


def get_mode(mode) -> Mode:
    if isinstance(mode, Mode):
        return mode
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    return MODES[mode.lower()]


def candidate_grids(max_num: int = DEFAULT_MAX_TILES, min_num: int = MIN_TILES) -> List[Tuple[int, int]]:
    """Candidate (across, down) grids in upstream's visiting order (set, then stable sort by i*j)."""
    if max_num < min_num:
        raise ValueError(f"max tiles {max_num} is below the minimum {min_num}")
    target = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(target, key=lambda x: x[0] * x[1])


def choose_tile_grid(width: int, height: int, max_num: int = DEFAULT_MAX_TILES,
                     tile_size: int = TILE_SIZE) -> Tuple[int, int]:
    """(tiles across, tiles down) for a Gundam image; (1, 1) when the image fits in one tile.

    Closest aspect ratio wins; on an exact tie a later candidate replaces the best only if the image
    area exceeds half the candidate's tiled area (upstream ``find_closest_aspect_ratio``).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if width <= tile_size and height <= tile_size:
        return (1, 1)
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in candidate_grids(max_num):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def vision_token_count(width: int, height: int, mode="base", max_tiles: int = DEFAULT_MAX_TILES) -> int:
    """Tokens handed to the LLM for one image: newline after every row, one view separator.

    Tiny 73, Small 111, Base 273, Large 421; Gundam (10*rows)*(10*cols+1) + 16*17 + 1 when tiled.
    """
    m = get_mode(mode)
    g = m.grid[1]
    n = g * (g + 1) + 1
    if m.crop:
        cols, rows = choose_tile_grid(width, height, max_tiles)
        if cols > 1 or rows > 1:
            n += (rows * TILE_GRID) * (cols * TILE_GRID + 1)
    return n
