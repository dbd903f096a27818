"""DeepSeek-OCR (family ``"ocr1"``): SAM trunk -> CLIP-L -> projector, and the LLM token layout.

Upstream ``deepseek_ocr.py`` (vLLM) / the Hugging Face remote code. Attributes and parameters are named
as in the checkpoint, so ``state_dict()`` keys equal the DeepSeek-OCR safetensors keys minus ``model.``::

    pixels [B,3,S,S] -> sam_model -> F [B,1024,g,g]
    vision_model(pixels, F) -> [B,1+g^2,1024]
    cat(CLIP[:,1:], F.flatten(2).T) -> [B,g^2,2048] -> projector -> [B,g^2,1280]
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..config import DeepEncoderConfig
from .clip import CLIPVision
from .common import LinearProjector
from .sam import SAMEncoder, check_pixels


class DeepEncoderReference(nn.Module):
    """The reference encoder. Attributes and parameters named as in the DeepSeek-OCR checkpoint."""

    def __init__(self, cfg: Optional[DeepEncoderConfig] = None):
        super().__init__()
        cfg = cfg or DeepEncoderConfig.deepseek_ocr()
        cfg.validate()
        self.cfg = cfg
        self.sam_model = SAMEncoder(cfg.sam)
        self.vision_model = CLIPVision(cfg.clip)
        self.projector = LinearProjector(cfg.projector_in, cfg.n_embed)
        self.image_newline = nn.Parameter(torch.zeros(cfg.n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.n_embed))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` -> projected vision tokens ``[B, g^2, n_embed]`` (no newline/separator)."""
        check_pixels(pixels, self.cfg)
        feats = self.sam_model(pixels)
        clip_out = self.vision_model(pixels, feats)
        features = torch.cat((clip_out[:, 1:], feats.flatten(2).permute(0, 2, 1)), dim=-1)
        return self.projector(features)


def add_newlines(grid_tokens: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """``[h, w, C]`` -> ``[h*(w+1), C]``: ``image_newline`` appended after every row."""
    h, _, C = grid_tokens.shape
    return torch.cat([grid_tokens, newline[None, None, :].expand(h, 1, C)], dim=1).reshape(-1, C)


def layout_tokens(global_tokens: torch.Tensor, image_newline: torch.Tensor, view_seperator: torch.Tensor,
                  tile_tokens: Optional[torch.Tensor] = None, tiles: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Upstream ``_pixel_values_to_embedding`` layout for one image.

    global_tokens ``[g^2, C]``; tile_tokens ``[cols*rows, t^2, C]`` (row-major tiles) or None;
    tiles = (cols across, rows down). Returns ``[T, C]``: stitched tiles with newlines (if any), then
    the global view with newlines, then ``view_seperator``.
    """
    hw, C = global_tokens.shape
    h = int(math.isqrt(hw))
    parts = []
    cols, rows = tiles
    if tile_tokens is not None and (cols > 1 or rows > 1):
        n, hw2, C2 = tile_tokens.shape
        if n != cols * rows:
            raise ValueError(f"got {n} tiles for a {cols}x{rows} grid")
        t = int(math.isqrt(hw2))
        local = tile_tokens.view(rows, cols, t, t, C2).permute(0, 2, 1, 3, 4).reshape(rows * t, cols * t, C2)
        parts.append(add_newlines(local, image_newline))
    parts.append(add_newlines(global_tokens.view(h, h, C), image_newline))
    parts.append(view_seperator[None, :])
    return torch.cat(parts, dim=0)
