"""The normalised views of one image, as preprocessing hands them to the encoder.

Kept free of Pillow so that code that only consumes views (the encoder, the benchmark suite on a GPU
machine without Pillow) can import it.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .modes import vision_token_count


@dataclass
class Views:
    """The normalised views of one image.

    global_view: ``[3, S, S]`` (S = 512, 640, 1024, 1280 by mode; 1024 for Gundam and for ocr2);
    tiles: ``[cols * rows, 3, T, T]`` row-major (T = 640 for ocr1, 768 for ocr2), or None (not Gundam, or
    the image fits in one tile); grid: (cols, rows), (1, 1) without tiles; size: original (width, height);
    mode: mode name; max_tiles: the Gundam MAX used; family: "ocr1" or "ocr2" (``modes.FAMILIES``).
    """

    global_view: torch.Tensor
    tiles: Optional[torch.Tensor]
    grid: Tuple[int, int]
    size: Tuple[int, int]
    mode: str
    max_tiles: int = 9
    family: str = "ocr1"

    @property
    def num_tokens(self) -> int:
        """Tokens handed to the LLM for this image (``modes.vision_token_count``)."""
        return vision_token_count(self.size[0], self.size[1], self.mode, self.max_tiles, self.family)
