"""Triton kernel for the fused residual + bias + LayerNorm (one program per row, the row in registers).

Bytes per row of C channels: read x, y (+bias, weight, ln_bias, cached), write s and h: 4·C elements,
against 8·C for the unfused ``s = x + y; s += bias; h = layer_norm(s)`` sequence.
"""

import triton
import triton.language as tl


@triton.jit
def _add_layernorm_fwd_kernel(X, Y, BIAS, W, B, S_OUT, H_OUT, C, eps,
                              stride_x_row, stride_y_row, stride_s_row, stride_h_row,
                              HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(X + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + row * stride_y_row + cols, mask=mask, other=0.0).to(tl.float32)
    s = x + y
    if HAS_BIAS:
        s += tl.load(BIAS + cols, mask=mask, other=0.0).to(tl.float32)
    # round the residual to the activation dtype first, as the unfused sequence does
    s_lp = s.to(S_OUT.dtype.element_ty)
    tl.store(S_OUT + row * stride_s_row + cols, s_lp, mask=mask)
    s = s_lp.to(tl.float32)
    mean = tl.sum(s, axis=0) / C
    d = tl.where(mask, s - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    h = d * rstd * w + b
    tl.store(H_OUT + row * stride_h_row + cols, h.to(H_OUT.dtype.element_ty), mask=mask)


def add_layernorm_fwd(x2, y2, bias, weight, ln_bias, eps, s_out, h_out):
    """2-D launcher: rows of ``x2``/``y2`` ``[R, C]`` (last dim contiguous)."""
    R, C = x2.shape
    BLOCK_C = triton.next_power_of_2(C)
    num_warps = 4 if BLOCK_C <= 1024 else 8
    _add_layernorm_fwd_kernel[(R,)](
        x2, y2, bias if bias is not None else x2, weight, ln_bias, s_out, h_out, C, eps,
        x2.stride(0), y2.stride(0), s_out.stride(0), h_out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_C=BLOCK_C, num_warps=num_warps)
    return s_out, h_out


def aot_specs():
    """Ahead-of-time compile specs (see kernels/_aot.py): the SAM (C=768) and CLIP (C=1024) rows."""
    specs = []
    for dtype, ty in (("fp16", "*fp16"), ("bf16", "*bf16")):
        for C, rows, name in ((768, 8 * 64 * 64, "sam"), (1024, 8 * 257, "clip")):
            block = triton.next_power_of_2(C)
            specs.append({
                "op": "add_layernorm", "name": f"add_layernorm-{name}-C{C}-{dtype}",
                "fn": _add_layernorm_fwd_kernel,
                "signature": {"X": ty, "Y": ty, "BIAS": ty, "W": ty, "B": ty, "S_OUT": ty, "H_OUT": ty,
                              "C": "i32", "eps": "fp32", "stride_x_row": "i32", "stride_y_row": "i32",
                              "stride_s_row": "i32", "stride_h_row": "i32", "HAS_BIAS": "constexpr",
                              "BLOCK_C": "constexpr"},
                "constexprs": {"HAS_BIAS": True, "BLOCK_C": block},
                "num_warps": 4, "num_stages": 1, "dtype": dtype,
                # per call at batch 8 (S=1024 SAM map or a CLIP batch): ~8 flops/element
                "flops": 8.0 * rows * C, "bytes": 2.0 * 4 * rows * C,
            })
    return specs
