"""SwiGLU over the fused gate/up projection: ``silu(gate) * up`` in one pass (Qwen2 MLP)."""

from .op import swiglu  # noqa: F401
from .reference import swiglu_ref  # noqa: F401
