"""Triton kernel for SwiGLU over the fused gate/up projection: ``out = silu(gate) * up`` in one pass.

Per program: ``BLOCK`` columns of one row; reads gate and up (2·I elements), writes I (upstream eager:
silu reads I and writes I, the product reads 2·I and writes I: 5·I).

Rounding: ``silu(g) * u`` is computed in fp32 and rounded once to the activation dtype. Upstream rounds
twice (``silu(gate)`` to the activation dtype, then the product), so in bf16 this kernel is at least as
close to the fp32 result (tests: the same-dtype rule against the fp64 reference). Under
``TRITON_INTERPRET=1`` fp32 -> bf16 conversion truncates; ``ROUND_BITS`` rounds to nearest even on the
bits there (the GPU converts with RNE).
"""

import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(GU, OUT, n_half, stride_gu_row, stride_out_row,
                       BLOCK: tl.constexpr, ROUND_BITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_half
    g = tl.load(GU + row * stride_gu_row + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu_row + n_half + cols, mask=mask, other=0.0).to(tl.float32)
    o = g / (1.0 + tl.exp(-g)) * u
    if ROUND_BITS:
        bits = o.to(tl.uint32, bitcast=True)
        o = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    tl.store(OUT + row * stride_out_row + cols, o.to(OUT.dtype.element_ty), mask=mask)


def swiglu_fwd(gu2, out2, round_bits=False):
    """2-D launcher: ``gu2 [R, 2I]`` rows (last dim contiguous) -> ``out2 [R, I]``."""
    R, W = gu2.shape
    n_half = W // 2
    if R == 0:
        return out2
    _swiglu_fwd_kernel[(R, triton.cdiv(n_half, BLOCK))](gu2, out2, n_half, gu2.stride(0), out2.stride(0),
                                                    BLOCK=BLOCK, ROUND_BITS=round_bits, num_warps=4)
    return out2


def aot_specs():
    """Ahead-of-time compile specs (see kernels/_aot.py): Qwen2's MLP, I = 4864, batch 8 global views."""
    rows, n_half = 8 * 512, 4864
    specs = []
    for dtype, ty in (("fp16", "*fp16"), ("bf16", "*bf16")):
        specs.append({
            "op": "swiglu", "name": f"swiglu-I{n_half}-{dtype}", "fn": _swiglu_fwd_kernel,
            "signature": {"GU": ty, "OUT": ty, "n_half": "i32", "stride_gu_row": "i32", "stride_out_row": "i32",
                          "BLOCK": "constexpr", "ROUND_BITS": "constexpr"},
            "constexprs": {"BLOCK": BLOCK, "ROUND_BITS": False},
            "num_warps": 4, "num_stages": 1, "dtype": dtype,
            "flops": 5.0 * rows * n_half, "bytes": 2.0 * 3 * rows * n_half,
        })
    return specs
