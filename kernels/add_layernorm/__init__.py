"""Fused residual add + bias + LayerNorm: ``s = x + y (+ bias)``, ``h = LayerNorm(s)`` in one pass."""

from .op import add_layernorm  # noqa: F401
from .reference import add_layernorm_ref  # noqa: F401
