"""The fast DeepSeek-OCR encoder (family ``"ocr1"``): the shared fast SAM trunk, CLIP-L on FlashAttention
with fused residual+LayerNorm, the compressor writing straight into the projector input.

Reads parameters from any module tree with upstream's names (``sam_model``, ``vision_model``,
``projector``): :class:`deepencoder.models.DeepEncoderReference` or a loaded DeepSeek-OCR model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import token_grid
from ..models.clip import quick_gelu, resize_clip_pos_embed
from .trunk import FastTrunk, GraphedForward


def clip_backend(op_backend: str) -> str:
    """clip_attention's backend for the fast path's ``op_backend``: "auto" -> "auto", "torch" -> "torch",
    "triton" -> flash_attn when installed else SDPA's flash backends (raises if neither can run)."""
    if op_backend == "torch":
        return "torch"
    if op_backend == "auto":
        return "auto"
    from deepencoder.kernels.clip_attention.op import flash_attn_available

    return "flash_attn" if flash_attn_available() else "sdpa"


class FastDeepEncoder(FastTrunk, GraphedForward):
    """Callable ``pixels [B,3,S,S] -> [B, g^2, n_embed]`` over the weights of ``model`` (shared, not copied).

    ``model`` must have ``sam_model``, ``vision_model`` and ``projector`` with upstream's attribute names.
    """

    def __init__(self, model, cuda_graphs: bool = False, op_backend: str = "auto"):
        FastTrunk.__init__(self, model.sam_model, op_backend)
        self._init_graphs(cuda_graphs)
        self.model = model
        self.clip = model.vision_model
        self.projector = model.projector

    # ------------------------------------------------------------------ CLIP
    def clip_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Compressor tokens ``[B, g^2, 1024]`` -> CLIP output ``[B, 1+g^2, 1024]``."""
        from deepencoder.kernels.add_layernorm import add_layernorm
        from deepencoder.kernels.clip_attention import clip_attention

        clip = self.clip
        emb = clip.embeddings
        B, n, C = tokens.shape
        pos_table = emb.position_embedding.weight
        pos = self._cache.get(pos_table, n + 1, lambda: resize_clip_pos_embed(pos_table, n + 1)[0].contiguous())
        x = torch.empty(B, n + 1, C, device=tokens.device, dtype=tokens.dtype)
        x[:, 0] = emb.class_embedding + pos[0]
        torch.add(tokens, pos[1:], out=x[:, 1:])
        pre = clip.pre_layrnorm
        layers = list(clip.transformer.layers)
        if not layers:
            return F.layer_norm(x, pre.normalized_shape, pre.weight, pre.bias, pre.eps)
        x = F.layer_norm(x, pre.normalized_shape, pre.weight, pre.bias, pre.eps)
        ln = layers[0].layer_norm1
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        for i, layer in enumerate(layers):
            sa = layer.self_attn
            qkv = F.linear(h, sa.qkv_proj.weight, sa.qkv_proj.bias)
            o = clip_attention(qkv, sa.num_heads, backend=clip_backend(self.op_backend))
            p = torch.mm(o.reshape(-1, C), sa.out_proj.weight.t()).view_as(x)
            ln2 = layer.layer_norm2
            x, h = add_layernorm(x, p, sa.out_proj.bias, ln2.weight, ln2.bias, ln2.eps, backend=self.op_backend)
            m = quick_gelu(F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias))
            p = torch.mm(m.view(-1, m.shape[-1]), layer.mlp.fc2.weight.t()).view_as(x)
            if i + 1 < len(layers):
                nl = layers[i + 1].layer_norm1
                x, h = add_layernorm(x, p, layer.mlp.fc2.bias, nl.weight, nl.bias, nl.eps, backend=self.op_backend)
            else:
                x = x.add_(p).add_(layer.mlp.fc2.bias)
        return x

    # ------------------------------------------------------------------ whole encoder
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        B = pixels.shape[0]
        Cc = self.clip.embeddings.class_embedding.shape[0]
        Cs = self.sam.net_3.weight.shape[0]
        S = pixels.shape[-1]
        g = token_grid(S // self.sam.patch_embed.proj.stride[0])
        # The projector input [B, g^2, CLIP | SAM]: the compressor writes its half in place.
        feats = torch.empty(B, g * g, Cc + Cs, device=pixels.device, dtype=pixels.dtype)
        sam_tokens = self.sam_forward(pixels, out=feats[..., Cc:])
        clip_out = self.clip_forward(sam_tokens)
        feats[..., :Cc].copy_(clip_out[:, 1:])
        return F.linear(feats, self.projector.layers.weight, self.projector.layers.bias)
