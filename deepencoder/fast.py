"""The fast DeepEncoder: the same weights as the reference, run on the kernels.

It reads parameters from any module tree with upstream's attribute names (``sam_model``,
``vision_model``, ``projector``; ``blocks[i].attn.qkv`` ...), so it serves both
:class:`deepencoder.reference.DeepEncoderReference` and a loaded DeepSeek-OCR model (see
:mod:`deepencoder.patching`). Nothing is copied: one state dict, two backends.

Per image batch ``[B,3,S,S]``:

* SAM blocks run channels-last ``[B,G,G,768]``; attention is the fused Triton kernel
  (:func:`deepencoder.kernels.sam_attention.sam_attention`) reading q, k, v straight out of the qkv
  projection, with the decomposed rel-pos bias computed in-kernel and window padding synthesised from
  the qkv bias: no ``[B,H,N,N]`` bias, no padded or partitioned copies.
* The compressor is the fused Triton pipeline (:func:`deepencoder.kernels.compressor.compressor`),
  writing its tokens straight into the right half of the ``[B, g^2, 2048]`` projector input.
* CLIP-L attention runs on FlashAttention (``flash_attn`` or SDPA's flash/cuDNN backends).
* Optional CUDA graphs per input shape remove launch overhead at small batch.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import quick_gelu, resize_clip_pos_embed, resize_rel_pos, resize_sam_pos_embed


def check_runnable(device: torch.device, dtype: torch.dtype) -> None:
    """Raise a clear error when the fast path cannot run on this device/dtype."""
    from deepencoder.kernels._common import interpreter_active, triton_importable

    ok, why = triton_importable()
    if not ok:
        raise RuntimeError(f"backend='fast' needs Triton: {why}")
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreter_active():
        return
    raise RuntimeError(f"backend='fast' needs a CUDA device (got {device}); on a CPU it runs only under the "
                       "Triton interpreter (TRITON_INTERPRET=1 set before deepencoder.kernels is imported). "
                       "Use backend='reference' or 'auto' on this machine.")


class _Cache:
    """Resized position tables per (parameter, size, dtype); invalidated when the parameter changes."""

    def __init__(self):
        self.d: Dict[Tuple, torch.Tensor] = {}

    def get(self, p: torch.Tensor, key, fn):
        if torch.compiler.is_compiling():  # traced once into the graph; no Python-side cache under dynamo
            return fn()
        k = (id(p), p._version, p.dtype, p.device, key)
        t = self.d.get(k)
        if t is None:
            t = self.d[k] = fn()
        return t


class FastDeepEncoder:
    """Callable ``pixels [B,3,S,S] -> [B, g^2, n_embed]`` over the weights of ``model`` (shared, not copied).

    ``model`` must have ``sam_model``, ``vision_model`` and ``projector`` with upstream's attribute names.
    """

    def __init__(self, model, cuda_graphs: bool = False, op_backend: str = "auto"):
        self.model = model
        self.sam = model.sam_model
        self.clip = model.vision_model
        self.projector = model.projector
        self.cuda_graphs = cuda_graphs
        self.op_backend = op_backend
        self._cache = _Cache()
        self._graphs: Dict[Tuple, Tuple] = {}

    # ------------------------------------------------------------------ SAM
    def sam_blocks(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` -> channels-last block output ``[B,G,G,768]``."""
        from deepencoder.kernels.add_layernorm import add_layernorm
        from deepencoder.kernels.sam_attention import sam_attention

        sam = self.sam
        x = sam.patch_embed.proj(pixels).permute(0, 2, 3, 1)  # conv output viewed channels-last
        G = x.shape[1]
        pos = self._cache.get(sam.pos_embed, G, lambda: resize_sam_pos_embed(sam.pos_embed, G).contiguous())
        x = (x + pos).contiguous()
        blocks = list(sam.blocks)
        n1 = blocks[0].norm1
        h = F.layer_norm(x, n1.normalized_shape, n1.weight, n1.bias, n1.eps)
        C = x.shape[-1]
        for i, blk in enumerate(blocks):
            attn = blk.attn
            ws = blk.window_size
            L = ws if ws > 0 else G
            rh = self._cache.get(attn.rel_pos_h, L, lambda a=attn, n=L: resize_rel_pos(a.rel_pos_h, n).contiguous())
            rw = self._cache.get(attn.rel_pos_w, L, lambda a=attn, n=L: resize_rel_pos(a.rel_pos_w, n).contiguous())
            qkv = F.linear(h, attn.qkv.weight, attn.qkv.bias)
            o = sam_attention(qkv, rh, rw, attn.num_heads, ws, qkv_bias=attn.qkv.bias, backend=self.op_backend)
            p = torch.mm(o.view(-1, C), attn.proj.weight.t()).view_as(x)
            # x += proj(o); h = norm2(x): one pass (residual, bias and LayerNorm fused)
            x, h = add_layernorm(x, p, attn.proj.bias, blk.norm2.weight, blk.norm2.bias, blk.norm2.eps,
                                 backend=self.op_backend)
            m = F.gelu(F.linear(h, blk.mlp.lin1.weight, blk.mlp.lin1.bias))
            p = torch.mm(m.view(-1, m.shape[-1]), blk.mlp.lin2.weight.t()).view_as(x)
            if i + 1 < len(blocks):  # x += mlp(h); h = next block's norm1(x)
                nn1 = blocks[i + 1].norm1
                x, h = add_layernorm(x, p, blk.mlp.lin2.bias, nn1.weight, nn1.bias, nn1.eps, backend=self.op_backend)
            else:
                x = x.add_(p).add_(blk.mlp.lin2.bias)
        return x

    def sam_forward(self, pixels: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B,3,S,S]`` -> compressor tokens ``[B, g^2, 1024]`` (written into ``out`` when given)."""
        from deepencoder.kernels.compressor import compressor

        sam = self.sam
        x = self.sam_blocks(pixels)
        neck = sam.neck
        return compressor(x, neck[0].weight, neck[1].weight, neck[1].bias, neck[2].weight, neck[3].weight,
                          neck[3].bias, sam.net_2.weight, sam.net_3.weight, eps=neck[1].eps, out=out,
                          backend=self.op_backend)

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
            o = clip_attention(qkv, sa.num_heads, backend="auto")
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
        G = S // self.sam.patch_embed.proj.stride[0]
        g = ((G - 1) // 2 + 1 - 1) // 2 + 1
        # The projector input [B, g^2, CLIP | SAM]: the compressor writes its half in place.
        feats = torch.empty(B, g * g, Cc + Cs, device=pixels.device, dtype=pixels.dtype)
        sam_tokens = self.sam_forward(pixels, out=feats[..., Cc:])
        clip_out = self.clip_forward(sam_tokens)
        feats[..., :Cc].copy_(clip_out[:, 1:])
        return F.linear(feats, self.projector.layers.weight, self.projector.layers.bias)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs and pixels.is_cuda:
            return self._graphed(pixels)
        return self.forward(pixels)

    def _graphed(self, pixels: torch.Tensor) -> torch.Tensor:
        key = (tuple(pixels.shape), pixels.dtype, pixels.device)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = pixels.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):  # warm-up: Triton JIT, autotune and cuBLAS workspaces outside capture
                    self.forward(static_in)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.forward(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(pixels)
        graph.replay()
        return static_out.clone()

