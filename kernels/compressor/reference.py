"""Pure-PyTorch reference for the 16x compressor (neck + net_2 + net_3), channels-last in and out.

Upstream (DeepSeek-OCR ``deepencoder/sam_vary_sdpa.py``, mirrored by
:meth:`deepencoder.reference.SAMEncoder.compress`):

    x [B,G,G,768] -> permute to NCHW -> Conv1x1 768->256 -> LayerNorm2d -> Conv3x3 256->256 p1 -> LayerNorm2d
      -> Conv3x3 256->512 s2 p1 (net_2) -> Conv3x3 512->1024 s2 p1 (net_3) -> [B,1024,g,g]

The ``permute`` is a view: the memory stays channels-last (NHWC) and PyTorch's convolutions keep that
memory format, so this reference runs in channels-last throughout and gives the same bits as
``SAMEncoder.compress`` (the same ops in the same order on the same memory layout).

LayerNorm2d statistics: upstream computes them in the activation dtype (bf16 mean, bf16 variance).
``ln_fp32=True`` computes them in float32 instead (the conv output is still rounded to the activation
dtype first, as it is in upstream) and rounds the normalised result back; the Triton kernel goes one step
further and normalises its float32 accumulator without rounding it first (error table:
``docs/compressor.md``; ``tests/kernels/test_compressor.py::test_ln_fp32_statistics_beat_upstream_bf16``).
"""

from typing import Optional

import torch
import torch.nn.functional as F


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    """PyTorch's conv output size: ``floor((n + 2p - k) / s) + 1`` (G=64 -> 32 -> 16; G=9 -> 5 -> 3)."""
    return (n + 2 * pad - k) // stride + 1


def layer_norm2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                     ln_fp32: bool = False) -> torch.Tensor:
    """Upstream ``LayerNorm2d`` on an NCHW-indexed tensor ``[B,C,H,W]`` (statistics over dim 1)."""
    dtype = x.dtype
    if ln_fp32:
        x, weight, bias = x.float(), weight.float(), bias.float()
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return (weight[:, None, None] * x + bias[:, None, None]).to(dtype)


def conv2d_nhwc_ref(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """``[B,H,W,Cin]`` channels-last, ``w`` ``[Cout,Cin,KH,KW]`` -> ``[B,OH,OW,Cout]`` contiguous."""
    y = F.conv2d(x.permute(0, 3, 1, 2), w, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1).contiguous()


def compressor_ref(x: torch.Tensor, neck0_w: torch.Tensor, ln1_w: torch.Tensor, ln1_b: torch.Tensor,
                   neck2_w: torch.Tensor, ln2_w: torch.Tensor, ln2_b: torch.Tensor, net2_w: torch.Tensor,
                   net3_w: torch.Tensor, eps: float = 1e-6, ln_fp32: bool = False,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` ``[B,G,G,Cin]`` -> tokens ``[B, g*g, C3]`` (= ``compress(x).flatten(2).transpose(1, 2)``).

    ``g = floor((floor((G-1)/2)+1 - 1)/2) + 1`` (PyTorch's conv arithmetic for k3 s2 p1, twice).
    With ``ln_fp32=False`` this is bit-identical to ``SAMEncoder.compress``. The result is a
    (possibly non-contiguous) view unless ``out`` is given, in which case it is copied there.
    """
    h = x.permute(0, 3, 1, 2)  # NCHW indexing over channels-last memory: no copy
    h = F.conv2d(h, neck0_w)
    h = layer_norm2d_ref(h, ln1_w, ln1_b, eps, ln_fp32)
    h = F.conv2d(h, neck2_w, padding=1)
    h = layer_norm2d_ref(h, ln2_w, ln2_b, eps, ln_fp32)
    h = F.conv2d(h, net2_w, stride=2, padding=1)
    h = F.conv2d(h, net3_w, stride=2, padding=1)
    tokens = h.flatten(2).transpose(1, 2)
    if out is not None:
        out.copy_(tokens)
        return out
    return tokens
