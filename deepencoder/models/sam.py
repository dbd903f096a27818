"""The SAM-B trunk shared by both families: ViTDet-style image encoder with decomposed relative positions,
then the 16x convolutional compressor (neck + net_2 + net_3), in plain PyTorch, term for term with upstream
(``deepencoder/sam_vary_sdpa.py`` in DeepSeek-OCR, ``deepencoderv2/sam_vary_sdpa.py`` in DeepSeek-OCR 2:
the same code, net_3 ending in 1024 or 896 channels).

Upstream's costs are kept on purpose (this is the oracle): the attention materialises the full
``[B, heads, N, N]`` relative-position bias and hands it to SDPA, window blocks pad with zeros and attend
to the padded tokens unmasked, LayerNorm2d runs in the activation dtype.

``[B,3,S,S] -> SAMEncoder -> F [B, net3_chans, g, g]`` with ``G = S/16``, ``g = ceil(G/4)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SAMConfig


def resize_sam_pos_embed(pos_embed: torch.Tensor, G: int) -> torch.Tensor:
    """``[1, P, P, C]`` -> ``[1, G, G, C]``: bicubic, antialias=True, align_corners=False, in float32.

    Upstream ``get_abs_pos`` in sam_vary_sdpa.py; returns the table itself when no resize is needed.
    """
    if pos_embed.shape[1] == G:
        return pos_embed
    dtype = pos_embed.dtype
    x = pos_embed.permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(G, G), mode="bicubic", antialias=True, align_corners=False).to(dtype)
    return x.permute(0, 2, 3, 1)


def resize_rel_pos(rel_pos: torch.Tensor, L: int) -> torch.Tensor:
    """``[2*L0-1, C]`` -> ``[2*L-1, C]`` by linear interpolation (align_corners=False) in float32.

    Upstream ``get_rel_pos``; returns the table itself when the length already matches.
    """
    n = 2 * L - 1
    if rel_pos.shape[0] == n:
        return rel_pos
    dtype = rel_pos.dtype
    r = rel_pos.to(torch.float32).reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
    r = F.interpolate(r, size=n, mode="linear").to(dtype)
    return r.reshape(-1, n).permute(1, 0)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather ``[q_size, k_size, C]`` relative-position rows (upstream ``get_rel_pos``)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos_resized = resize_rel_pos(rel_pos, max(q_size, k_size))
    assert rel_pos_resized.shape[0] == max_rel_dist
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def add_decomposed_rel_pos(q, rel_pos_h, rel_pos_w, q_size, k_size):
    """Upstream ``add_decomposed_rel_pos``: returns ``rel_h [B, N, kh, 1]`` and ``rel_w [B, N, 1, kw]``."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    rel_h = rel_h.unsqueeze(-1).reshape(B, q_h * q_w, k_h, 1)
    rel_w = rel_w.unsqueeze(-2).reshape(B, q_h * q_w, 1, k_w)
    return rel_h, rel_w


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B*nW, ws, ws, C]``, zero-padding bottom/right to a multiple of ws."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows, window_size, pad_hw, hw):
    """Inverse of :func:`window_partition`; drops the padded positions."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


class SAMAttention(nn.Module):
    """Multi-head attention with decomposed rel-pos; keys ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``."""

    def __init__(self, dim: int, num_heads: int, rel_len: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_len - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_len - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        rel_h, rel_w = add_decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        q = q.view(B, self.num_heads, H * W, -1)
        k = k.view(B, self.num_heads, H * W, -1)
        v = v.view(B, self.num_heads, H * W, -1)
        rel_h = rel_h.view(B, self.num_heads, rel_h.size(1), rel_h.size(2), rel_h.size(3))
        rel_w = rel_w.view(B, self.num_heads, rel_w.size(1), rel_w.size(2), rel_w.size(3))
        attn_bias = (rel_h + rel_w).view(B, self.num_heads, rel_h.size(2), rel_h.size(3) * rel_w.size(4))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        x = x.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, dim)
        self.act = nn.GELU()  # exact erf GELU

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class SAMBlock(nn.Module):
    def __init__(self, cfg: SAMConfig, window_size: int):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = SAMAttention(dim, cfg.num_heads, window_size if window_size > 0 else cfg.pos_grid)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLPBlock(dim, cfg.mlp_dim)
        self.window_size = window_size

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """Channel LayerNorm on NCHW, computed in the activation dtype (no float32 upcast), as upstream."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SAMConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)  # B C H W -> B H W C


class SAMEncoder(nn.Module):
    """SAM-B image encoder + neck + net_2 + net_3 (the 16x compressor). ``[B,3,S,S] -> [B,net3_chans,g,g]``."""

    def __init__(self, cfg: SAMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid, cfg.pos_grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            SAMBlock(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        c = cfg.out_chans
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, c, kernel_size=1, bias=False),
            LayerNorm2d(c, eps=cfg.norm_eps),
            nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(c, eps=cfg.norm_eps),
        )
        self.net_2 = nn.Conv2d(c, cfg.net2_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net2_chans, cfg.net3_chans, kernel_size=3, stride=2, padding=1, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return x + resize_sam_pos_embed(self.pos_embed, x.size(1))

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,G,G,C]`` channels-last block output -> ``[B,net3_chans,g,g]``."""
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.compress(x)


def check_pixels(pixels: torch.Tensor, cfg, param_dtype: Optional[torch.dtype] = None):
    """Clear errors for bad pixel tensors (shape, dtype, size) before anything reaches a kernel."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixels must be a torch.Tensor [B,3,S,S], got {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != cfg.sam.in_chans:
        raise ValueError(f"pixels must have shape [B, {cfg.sam.in_chans}, S, S], got {list(pixels.shape)}")
    if pixels.shape[0] == 0:
        raise ValueError("pixels has batch size 0")
    if not pixels.is_floating_point():
        raise TypeError(f"pixels must be a floating tensor normalised to [-1, 1], got dtype {pixels.dtype}; "
                        "use deepencoder.preprocess to turn uint8 images into pixels")
    S, S2 = pixels.shape[-2:]
    if S != S2:
        raise ValueError(f"pixels must be square, got {S}x{S2}")
    p = cfg.sam.patch_size
    if S % (4 * p):
        raise ValueError(f"image side {S} must be a multiple of {4 * p} (patch {p} x two stride-2 convs)")
    if param_dtype is not None and pixels.dtype != param_dtype:
        raise TypeError(f"pixels dtype {pixels.dtype} does not match the model dtype {param_dtype}")
