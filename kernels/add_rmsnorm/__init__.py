"""Fused residual add + RMSNorm (Qwen2): ``s = x + y``, ``h = RMSNorm(s)`` in one pass; plain RMSNorm too."""

from .op import add_rmsnorm, rms_norm  # noqa: F401
from .reference import add_rmsnorm_ref, rms_norm_ref  # noqa: F401
