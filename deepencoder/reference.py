"""Compatibility: the reference encoders now live in :mod:`deepencoder.models` (``sam``, ``clip``, ``flow``,
``ocr1``, ``ocr2``). Names kept importable from here for existing code."""

from .models.clip import (  # noqa: F401
    CLIPMLP,
    CLIPAttention,
    CLIPEmbeddings,
    CLIPLayer,
    CLIPTransformer,
    CLIPVision,
    quick_gelu,
    resize_clip_pos_embed,
)
from .models.common import LinearProjector  # noqa: F401
from .models.ocr1 import DeepEncoderReference, add_newlines, layout_tokens  # noqa: F401
from .models.sam import (  # noqa: F401
    LayerNorm2d,
    MLPBlock,
    PatchEmbed,
    SAMAttention,
    SAMBlock,
    SAMEncoder,
    add_decomposed_rel_pos,
    check_pixels,
    get_rel_pos,
    resize_rel_pos,
    resize_sam_pos_embed,
    window_partition,
    window_unpartition,
)
