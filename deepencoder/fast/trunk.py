"""The fast SAM trunk both families share: SAM-B blocks and the 16x compressor on the kernels.

It reads parameters from any module tree with upstream's attribute names (``sam_model.blocks[i].attn.qkv``
...), so it serves the reference modules and a loaded upstream model alike (see
:mod:`deepencoder.patching`). Nothing is copied: one state dict, two backends.

Per image batch ``[B,3,S,S]``:

* SAM blocks run channels-last ``[B,G,G,768]``; attention is the fused Triton kernel
  (:func:`deepencoder.kernels.sam_attention.sam_attention`) reading q, k, v straight out of the qkv
  projection, with the decomposed rel-pos bias computed in-kernel and window padding synthesised from
  the qkv bias: no ``[B,H,N,N]`` bias, no padded or partitioned copies.
* The compressor is the fused Triton pipeline (:func:`deepencoder.kernels.compressor.compressor`),
  writing its tokens straight into the buffer the global stage reads (``out=``): the right half of
  OCR-1's ``[B, g^2, 2048]`` projector input, or the visual half of OCR-2's ``[B, 2n, 896]`` flow input.
* Optional CUDA graphs per input shape remove launch overhead at small batch (:class:`GraphedForward`).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..models.sam import resize_rel_pos, resize_sam_pos_embed


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


def _version(p: torch.Tensor) -> int:
    """The tensor's in-place version, or -1 for inference tensors (made under ``torch.inference_mode()``),
    which track no version counter: those are taken as immutable (call ``clear()`` after editing them)."""
    if p.is_inference():
        return -1
    return p._version


class _Cache:
    """Derived tensors (resized position tables, concatenated weights) per (parameter, key); invalidated
    when the parameter is modified in place or replaced."""

    def __init__(self):
        self.d: Dict[Tuple, torch.Tensor] = {}

    def clear(self) -> None:
        self.d.clear()

    def get(self, p: torch.Tensor, key, fn):
        if torch.compiler.is_compiling():  # traced once into the graph; no Python-side cache under dynamo
            return fn()
        k = (id(p), p.data_ptr(), _version(p), p.dtype, p.device, key)
        t = self.d.get(k)
        if t is None:
            t = self.d[k] = fn()
        return t


class FastTrunk:
    """The SAM trunk on the kernels over ``sam`` (upstream's ``sam_model`` tree; weights shared, not copied).

    ``op_backend``: the kernels' backend ("auto" | "triton" | "torch"); "torch" runs this code on the ops'
    PyTorch references (tests the plumbing anywhere).
    """

    def __init__(self, sam, op_backend: str = "auto"):
        if op_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"unknown op_backend {op_backend!r}: choose 'auto', 'triton' or 'torch'")
        self.sam = sam
        self.op_backend = op_backend
        self._cache = _Cache()

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
        """``[B,3,S,S]`` -> compressor tokens ``[B, g^2, net3_chans]`` (written into ``out`` when given)."""
        from deepencoder.kernels.compressor import compressor

        sam = self.sam
        x = self.sam_blocks(pixels)
        neck = sam.neck
        return compressor(x, neck[0].weight, neck[1].weight, neck[1].bias, neck[2].weight, neck[3].weight,
                          neck[3].bias, sam.net_2.weight, sam.net_3.weight, eps=neck[1].eps, out=out,
                          backend=self.op_backend)


class GraphedForward:
    """``__call__`` = ``forward`` under inference mode, replayed from a CUDA graph per input shape when
    ``cuda_graphs`` is on and the input is on CUDA. Subclasses define ``forward``."""

    cuda_graphs: bool = False

    def _init_graphs(self, cuda_graphs: bool) -> None:
        self.cuda_graphs = cuda_graphs
        self._graphs: Dict[Tuple, Tuple] = {}

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

