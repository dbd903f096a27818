"""The Qwen2 flow encoder of DeepSeek-OCR 2, in plain PyTorch, term for term with upstream.

Upstream ``deepencoderv2/qwen2_d2e.py`` runs a transformers ``Qwen2Model`` (4.46.3) with a custom 4-D
mask. This module owns the same layers outright (no transformers at runtime) so that the mask cannot be
lost: under transformers >= 5 upstream's ``_update_causal_mask`` override is never called and its file
silently runs a plain causal mask instead. Names follow upstream's module tree, so ``state_dict()`` keys
are ``model.model.layers.N...``, ``model.model.norm.weight``, ``query_768.weight``, ``query_1024.weight``
under ``qwen2_model.``.

One view (``n`` compressor tokens, ``L = 2n``)::

    X = [V ; Q]                       V [B,n,C] (row-major over the g x g grid), Q = query_<side> [n,C]
    24 x pre-norm layers:  h += o_proj(attn(rms1(h)));  h += down(silu(gate(rms2(h))) * up(rms2(h)))
    final RMSNorm, keep the last n (query) positions            -> [B,n,C]

Attention: RoPE (rotate-half, theta 1e6, positions 0..L-1), GQA (query head h reads KV head
h // (heads/kv_heads)), scores q.k^T/sqrt(64) + the flow mask (0 or finfo(dtype).min, built here with
index arithmetic, never a loop over tokens), softmax, .v. The mask (row = query position, column = key):
visual rows see every visual column and no query column; query row n+j sees every visual column and
queries n..n+j.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import FlowConfig


def flow_mask_bool(n: int, device=None) -> torch.Tensor:
    """``[2n, 2n]`` boolean: True where the row (query position) may attend to the column (key).

    visual block ``[:n, :n]`` all True; query rows see all visual columns and queries up to themselves.
    """
    L = 2 * n
    r = torch.arange(L, device=device)[:, None]
    c = torch.arange(L, device=device)[None, :]
    return (c < n) | ((r >= n) & (c <= r))


def flow_mask(n: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Upstream's additive float mask ``[1, 1, 2n, 2n]``: 0 where allowed, ``finfo(dtype).min`` elsewhere."""
    allowed = flow_mask_bool(n, device)
    m = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
    return m.masked_fill_(allowed, 0.0)[None, None]


def flow_mask_upstream_loop(n: int, batch: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Upstream's own construction, kept only as the benchmark's "upstream" baseline: ``token_type_ids``
    made on the CPU, then per sample a Python loop with two indexed writes per query into an ``L x L``
    tensor on the device (``CustomQwen2ModelInner._create_custom_4d_mask``). Same values as
    :func:`flow_mask`, expanded to ``[B, 1, L, L]``."""
    L = 2 * n
    min_dtype = torch.finfo(dtype).min
    token_type_ids = torch.cat([torch.zeros(batch, n, dtype=torch.long), torch.ones(batch, n, dtype=torch.long)], 1)
    masks = []
    for b in range(batch):
        mask = torch.full((L, L), fill_value=min_dtype, dtype=dtype, device=device)
        type_ids = token_type_ids[b]
        image_positions = (type_ids == 0).nonzero(as_tuple=True)[0]
        text_positions = (type_ids == 1).nonzero(as_tuple=True)[0]
        if len(image_positions) > 0:
            mask[image_positions[:, None], image_positions] = 0.0
        for i, text_pos in enumerate(text_positions):
            if len(image_positions) > 0:
                mask[text_pos, image_positions] = 0.0
            mask[text_pos, text_positions[:i + 1]] = 0.0
        masks.append(mask)
    return torch.stack(masks, dim=0).unsqueeze(1)


def rope_tables(L: int, head_dim: int, theta: float, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin [L, head_dim]`` in float32 for positions ``0..L-1``, as transformers' Qwen2 rotary
    embedding computes them (``inv_freq = 1/theta^(arange(0,d,2)/d)``, ``emb = cat(freqs, freqs)``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    pos = torch.arange(L, device=device, dtype=torch.float32)
    freqs = (inv_freq[:, None] @ pos[None, :]).t()  # [L, d/2]; a one-term matmul, exact
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``[B,H,L,D]`` q, k rotated with ``cos, sin [L, D]`` (already in the activation dtype)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: upcast to float32, ``x * rsqrt(mean(x^2) + eps)``, cast back, then ``* weight``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class FlowAttention(nn.Module):
    """Qwen2 attention with GQA: keys ``q_proj``/``k_proj``/``v_proj`` (bias), ``o_proj`` (no bias)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=True)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        # repeat_kv: query head h reads KV head h // groups
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class FlowMLP(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class FlowLayer(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.self_attn = FlowAttention(cfg)
        self.mlp = FlowMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class FlowDecoder(nn.Module):
    """``Qwen2Model`` without its token embedding: ``layers``, ``norm`` (upstream ``...model.model``)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(FlowLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.upstream_mask_loop = False  # benchmark baseline only: build the mask as upstream does

    def forward(self, x: torch.Tensor, n_visual: int) -> torch.Tensor:
        B, L, _ = x.shape
        cos, sin = rope_tables(L, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.upstream_mask_loop:
            mask = flow_mask_upstream_loop(n_visual, B, x.dtype, x.device)
        else:
            mask = flow_mask(n_visual, x.dtype, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


class _FlowDecoderHolder(nn.Module):
    """Upstream ``CustomQwen2Decoder``: holds the ``Qwen2Model`` as ``.model`` (key level ``model.model``)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.model = FlowDecoder(cfg)


class FlowEncoder(nn.Module):
    """Upstream ``Qwen2Decoder2Encoder``: ``F [B,C,g,g] -> query outputs [B, g^2, C]``."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _FlowDecoderHolder(cfg)
        sizes = dict(cfg.query_sizes)
        self.query_768 = nn.Embedding(sizes[768], cfg.hidden_size)
        self.query_1024 = nn.Embedding(sizes[1024], cfg.hidden_size)

    def queries(self, n: int) -> torch.Tensor:
        """The learned query table for a view with ``n`` compressor tokens ``[n, C]``."""
        if n == self.query_768.num_embeddings:
            return self.query_768.weight
        if n == self.query_1024.num_embeddings:
            return self.query_1024.weight
        raise ValueError(f"the flow encoder has query tables for {self.query_768.num_embeddings} (768 view) and "
                         f"{self.query_1024.num_embeddings} (1024 view) tokens only; got {n} tokens")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.flatten(2).transpose(1, 2)
        B, n, _ = x.shape
        q = self.queries(n).unsqueeze(0).expand(B, -1, -1)
        y = self.model.model(torch.cat([x, q], dim=1), n)
        return y[:, n:, :]
