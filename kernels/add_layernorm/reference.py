"""Pure-PyTorch reference for :func:`add_layernorm`."""

import torch.nn.functional as F


def add_layernorm_ref(x, y, bias, weight, ln_bias, eps):
    """``s = x + y + bias`` (bias optional), ``h = LayerNorm(s; weight, ln_bias, eps)``; returns (s, h).

    Statistics in float32, outputs in the input dtype (what ``F.layer_norm`` does on CUDA).
    """
    s = x + y if bias is None else x + y + bias
    h = F.layer_norm(s.float(), (s.shape[-1],), weight.float(), ln_bias.float(), eps).to(s.dtype)
    return s, h
