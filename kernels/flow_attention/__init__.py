"""DeepEncoder V2 causal-flow attention: the visual/query mask by index, GQA by head index, RoPE on load."""

from .op import FLOW_BACKENDS, flow_attention  # noqa: F401
from .reference import flash_attn_available, flow_attention_library, flow_attention_ref  # noqa: F401
