"""DeepSeek-OCR 2 (family ``"ocr2"``): SAM trunk (-> 896) -> Qwen2 flow encoder -> projector, and the
LLM token layout (upstream ``deepseek_ocr2.py``, vLLM flavour).

Attributes and parameters are named as in the upstream OCR-2 checkpoint, so ``state_dict()`` keys equal
its safetensors keys minus ``model.`` (``sam_model.*``, ``qwen2_model.*``, ``projector.layers.*``,
``view_seperator``)::

    pixels [B,3,S,S] (S = 1024 global view, 768 crop) -> sam_model -> F [B,896,g,g]
    qwen2_model(F) -> query outputs [B,g^2,896] -> projector -> [B,g^2,1280]

Token layout of one image: every crop's 144 tokens (crop order), the global view's 256, then
``view_seperator``; no newline tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import DeepEncoderV2Config
from .common import LinearProjector
from .flow import FlowEncoder
from .sam import SAMEncoder, check_pixels


class DeepEncoderV2Reference(nn.Module):
    """The reference OCR-2 encoder. Attributes and parameters named as in the DeepSeek-OCR 2 checkpoint."""

    def __init__(self, cfg: Optional[DeepEncoderV2Config] = None):
        super().__init__()
        cfg = cfg or DeepEncoderV2Config.deepseek_ocr2()
        cfg.validate()
        self.cfg = cfg
        self.sam_model = SAMEncoder(cfg.sam)
        self.qwen2_model = FlowEncoder(cfg.flow)
        self.projector = LinearProjector(cfg.projector_in, cfg.n_embed)
        self.view_seperator = nn.Parameter(torch.zeros(cfg.n_embed))  # sic: the checkpoint's spelling

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` (S = 768 or 1024) -> projected query tokens ``[B, g^2, n_embed]``."""
        check_pixels(pixels, self.cfg)
        self.cfg.num_queries(pixels.shape[-1])  # clear error for a view size without a query table
        return self.projector(self.qwen2_model(self.sam_model(pixels)))


def layout_tokens_v2(global_tokens: torch.Tensor, view_seperator: torch.Tensor,
                     crop_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One image's tokens for the LLM: ``[crops (row-major, each in query order); global; separator]``.

    global_tokens ``[n, C]``; crop_tokens ``[P, m, C]`` or None. Returns ``[P*m + n + 1, C]``.
    """
    parts = []
    if crop_tokens is not None and crop_tokens.shape[0] > 0:
        parts.append(crop_tokens.reshape(-1, crop_tokens.shape[-1]))
    parts += [global_tokens, view_seperator[None, :]]
    return torch.cat(parts, dim=0)
