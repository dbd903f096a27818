"""Fused 16x compressor (SAM neck + net_2 + net_3) as channels-last implicit-GEMM Triton convolutions.

``compressor(x, ...)``: ``[B,G,G,768]`` SAM block output -> ``[B, g*g, 1024]`` tokens, both LayerNorm2d
fused into the conv epilogues; ``conv2d_nhwc``: one channels-last conv. Design: ``docs/compressor.md``.
"""

from .op import compressor, conv2d_nhwc  # noqa: F401
from .reference import compressor_ref, conv2d_nhwc_ref, layer_norm2d_ref  # noqa: F401
