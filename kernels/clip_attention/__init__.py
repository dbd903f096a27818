"""CLIP-L global attention on FlashAttention (``flash_attn`` when installed, else SDPA's flash backend)."""

from .op import CLIP_ATTENTION_BACKENDS, clip_attention, flash_attn_available  # noqa: F401
