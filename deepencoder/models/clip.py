"""CLIP-L fed with SAM features: DeepSeek-OCR's global stage (upstream ``deepencoder/clip_sdpa.py``).

``(pixels, F [B,1024,g,g]) -> [B, 1+g^2, 1024]``: CLS + compressor tokens + resized position table,
pre-LayerNorm, 24 pre-LN layers with quick_gelu and a fused ``[q;k;v]`` projection, no final LayerNorm.
CLIP's own patch-embedding conv is never run (its weight is in the checkpoint and loads).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import CLIPConfig


def resize_clip_pos_embed(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[P^2+1, C]`` -> ``[1, g^2+1, C]``: CLS row kept, grid resized bicubic (antialias) in float32.

    Upstream ``get_abs_pos`` in clip_sdpa.py (``g = int(sqrt(num_tokens))``).
    """
    dim = pos.size(-1)
    cls_token, old = pos[:1], pos[1:]
    src = int(math.sqrt(pos.shape[0] - 1))
    tgt = int(math.sqrt(num_tokens))
    if src == tgt:
        return pos.unsqueeze(0)
    dtype = pos.dtype
    old = old.view(1, src, src, dim).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    new = F.interpolate(old, size=(tgt, tgt), mode="bicubic", antialias=True, align_corners=False).to(dtype)
    new = new.permute(0, 2, 3, 1).reshape(tgt * tgt, dim)
    return torch.cat([cls_token, new], dim=0).view(1, tgt * tgt + 1, dim)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                                         bias=False)  # never run; its weight is in the checkpoint
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)
        self.register_buffer("position_ids", torch.arange(cfg.num_positions).expand((1, -1)), persistent=False)

    def forward(self, pixel_values: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        batch_size = pixel_values.shape[0]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        emb = torch.cat([class_embeds, patch_embeds], dim=1)
        return emb + resize_clip_pos_embed(self.position_embedding(self.position_ids)[0], emb.size(1))


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size * 3, bias=True)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x):
        bsz, seqlen, _ = x.shape
        xqkv = self.qkv_proj(x).view(bsz, seqlen, 3, self.num_heads, self.head_dim)
        xq, xk, xv = (t.squeeze(2).permute(0, 2, 1, 3) for t in torch.split(xqkv, 1, dim=2))
        out = F.scaled_dot_product_attention(xq, xk, xv, attn_mask=None)
        out = out.permute(0, 2, 1, 3).reshape(bsz, seqlen, -1)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)

    def forward(self, x):
        h = x + self.self_attn(self.layer_norm1(x))
        return h + self.mlp(self.layer_norm2(h))


class CLIPTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVision(nn.Module):
    """CLIP-L over SAM features: ``(pixels, F [B,1024,g,g]) -> [B, 1+g^2, 1024]`` (no final LayerNorm)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.transformer = CLIPTransformer(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.pre_layernorm_eps)

    def forward(self, x: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(x, patch_embeds)))
