"""The fast DeepSeek-OCR 2 encoder (family ``"ocr2"``): the shared fast SAM trunk, then the Qwen2 flow
encoder on the kernels.

Per view batch ``[B,3,S,S]`` (``n = g^2`` compressor tokens, ``L = 2n``):

* the compressor writes its tokens straight into the visual half of the flow input ``X [B, L, C]``;
  the learned queries are copied into the other half (no concat copy);
* each layer: one GEMM for the fused ``[q; k; v]`` projection (weights concatenated once, cached),
  :func:`~deepencoder.kernels.flow_attention` (the flow mask from index arithmetic, never stored; RoPE
  applied as q and k are loaded; GQA by head index, K/V never repeated), ``o_proj``, residual add +
  RMSNorm in one pass (:func:`~deepencoder.kernels.add_rmsnorm`), one GEMM for the fused gate/up
  projection, :func:`~deepencoder.kernels.swiglu`, ``down_proj``, residual add + the next RMSNorm;
* the last layer keeps only the query rows after its attention (the visual rows' MLP and final norm
  are never used), then the projector.

Reads parameters from any module tree with upstream's names (``sam_model``, ``qwen2_model``,
``projector``): :class:`deepencoder.models.DeepEncoderV2Reference` or a loaded upstream OCR-2 model.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import token_grid
from ..models.flow import rope_tables
from .trunk import FastTrunk, GraphedForward, _version


def _attr(m, *names, default=None):
    for n in names:
        v = getattr(m, n, None)
        if v is not None:
            return v
    return default


def flow_geometry(decoder, layer) -> tuple:
    """(num_heads, num_kv_heads, eps, rope_theta) from our :class:`FlowDecoder` or transformers' Qwen2Model."""
    attn = layer.self_attn
    cfg = _attr(decoder, "cfg", "config")
    heads = _attr(attn, "num_heads") or getattr(cfg, "num_heads", None) or cfg.num_attention_heads
    kv = _attr(attn, "num_kv_heads") or getattr(cfg, "num_kv_heads", None) or cfg.num_key_value_heads
    eps = layer.input_layernorm.variance_epsilon
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e6)
    return int(heads), int(kv), float(eps), float(theta)


class FastDeepEncoderV2(FastTrunk, GraphedForward):
    """Callable ``pixels [B,3,S,S] -> [B, g^2, n_embed]`` (S = 768 or 1024) over ``model``'s weights.

    ``model`` must have ``sam_model``, ``qwen2_model`` (``.model.model.layers``, ``.model.model.norm``,
    ``.query_768``, ``.query_1024``) and ``projector`` with upstream's attribute names.
    """

    def __init__(self, model, cuda_graphs: bool = False, op_backend: str = "auto"):
        FastTrunk.__init__(self, model.sam_model, op_backend)
        self._init_graphs(cuda_graphs)
        self.model = model
        self.flow = model.qwen2_model
        self.decoder = self.flow.model.model
        self.projector = model.projector
        layers = list(self.decoder.layers)
        self.num_heads, self.num_kv_heads, self.eps, self.theta = flow_geometry(self.decoder, layers[0])

    # ------------------------------------------------------------------ cached derived tensors
    def _cat(self, tensors: Sequence[torch.Tensor], tag: str) -> torch.Tensor:
        """``cat(tensors, 0)``, cached until any of them changes (weights are concatenated once)."""
        if torch.compiler.is_compiling():  # traced into the graph once; no Python-side cache under dynamo
            return torch.cat(list(tensors), 0)
        key = (tag,) + tuple((id(t), t.data_ptr(), _version(t)) for t in tensors[1:])
        return self._cache.get(tensors[0], key, lambda: torch.cat(list(tensors), 0).contiguous())

    def _rope(self, L: int, head_dim: int, like: torch.Tensor):
        key = ("rope", L, head_dim, self.theta, like.device)
        hit = self._cache.d.get(key) if not torch.compiler.is_compiling() else None
        if hit is None:
            hit = rope_tables(L, head_dim, self.theta, like.device)
            if not torch.compiler.is_compiling():
                self._cache.d[key] = hit
        return hit

    def queries(self, n: int) -> torch.Tensor:
        for name in ("query_768", "query_1024"):
            emb = getattr(self.flow, name)
            if emb.weight.shape[0] == n:
                return emb.weight
        raise ValueError(f"the flow encoder has no query table for {n} tokens (768 view: 144, 1024 view: 256)")

    # ------------------------------------------------------------------ flow encoder
    def flow_forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Flow input ``x [B, 2n, C]`` (visual tokens then queries) -> final-normed query rows ``[B, n, C]``."""
        from deepencoder.kernels.add_rmsnorm import add_rmsnorm, rms_norm
        from deepencoder.kernels.flow_attention import flow_attention
        from deepencoder.kernels.swiglu import swiglu

        be = self.op_backend
        B, L, C = x.shape
        layers = list(self.decoder.layers)
        head_dim = layers[0].self_attn.q_proj.weight.shape[0] // self.num_heads
        cos, sin = self._rope(L, head_dim, x)
        h = rms_norm(x, layers[0].input_layernorm.weight, self.eps, backend=be)
        for i, layer in enumerate(layers):
            a = layer.self_attn
            w = self._cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight), "qkv_w")
            b = self._cat((a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), "qkv_b")
            qkv = F.linear(h, w, b)
            o = flow_attention(qkv, n, self.num_heads, self.num_kv_heads, cos, sin, backend=be)
            last = i + 1 == len(layers)
            if last:  # only the query rows reach the output: drop the visual rows from here on
                o, x = o[:, n:], x[:, n:]
            p = torch.matmul(o, a.o_proj.weight.t())
            x, h = add_rmsnorm(x, p, layer.post_attention_layernorm.weight, self.eps, backend=be)
            mlp = layer.mlp
            gu = F.linear(h, self._cat((mlp.gate_proj.weight, mlp.up_proj.weight), "gate_up"))
            p = torch.matmul(swiglu(gu, backend=be), mlp.down_proj.weight.t())
            nxt = self.decoder.norm if last else layers[i + 1].input_layernorm
            x, h = add_rmsnorm(x, p, nxt.weight, self.eps, backend=be)
        return h

    def _flow_buffer(self, B: int, n: int, like: torch.Tensor) -> torch.Tensor:
        """The flow input ``[B, 2n, C]`` with the learned queries in its second half; the caller fills the
        visual half (the compressor writes it in place: no concat copy)."""
        q = self.queries(n)
        x = torch.empty(B, 2 * n, q.shape[1], device=like.device, dtype=like.dtype)
        x[:, n:].copy_(q.unsqueeze(0).expand(B, -1, -1))
        return x

    def query_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` -> final-normed query outputs ``[B, n, C]`` (the vision tower, before the projector)."""
        g = token_grid(pixels.shape[-1] // self.sam.patch_embed.proj.stride[0])
        n = g * g
        x = self._flow_buffer(pixels.shape[0], n, pixels)
        self.sam_forward(pixels, out=x[:, :n])
        return self.flow_forward(x, n)

    def flow_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Compressor output map ``[B, C, g, g]`` (upstream's ``qwen2_model`` input) -> ``[B, g^2, C]``."""
        B, _, g, _ = feats.shape
        n = g * g
        x = self._flow_buffer(B, n, feats)
        x[:, :n].copy_(feats.flatten(2).transpose(1, 2))
        return self.flow_forward(x, n)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        y = self.query_tokens(pixels)
        return F.linear(y, self.projector.layers.weight, self.projector.layers.bias)
