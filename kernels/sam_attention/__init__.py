"""Fused SAM attention: decomposed rel-pos bias in-kernel, window padding from the qkv bias, no N x N tensor."""

from .op import sam_attention  # noqa: F401
from .reference import sam_attention_ref  # noqa: F401
