"""Triton kernel for the residual add + RMSNorm (one program per row, the row in registers).

Bytes per row of C channels: read x, y (weight cached), write s and h: 4·C elements, against 7·C for the
unfused ``s = x + y`` (3·C) and ``Qwen2RMSNorm`` (read s, write h, plus its fp32 temporaries in eager).
``HAS_Y=False`` is the plain RMSNorm (the first layer's input norm, the final norm): read x, write h.

Rounding: the same points as upstream: ``s`` rounded to the activation dtype, statistics in fp32 over the
rounded ``s``, the normalised row rounded to the activation dtype, then the product with the weight
rounded again (a bf16 x bf16 product in fp32, rounded once: what torch's bf16 multiply does). Under
``TRITON_INTERPRET=1`` fp32 -> bf16 conversion truncates, so ``ROUND_BITS`` rounds to nearest even on
the bits first (the GPU converts with RNE).
"""

import triton
import triton.language as tl


@triton.jit
def _rne(x, dtype: tl.constexpr, ROUND_BITS: tl.constexpr):
    """``x.to(dtype)`` with round-to-nearest-even; fp32 -> bf16 on the bits where the converter truncates."""
    if ROUND_BITS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(dtype)
    else:
        return x.to(dtype)


@triton.jit
def _add_rmsnorm_fwd_kernel(X, Y, W, S_OUT, H_OUT, C, eps,
                            stride_x_row, stride_y_row, stride_s_row, stride_h_row,
                            HAS_Y: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(X + row * stride_x_row + cols, mask=mask, other=0.0)
    dt = x.dtype
    if HAS_Y:
        y = tl.load(Y + row * stride_y_row + cols, mask=mask, other=0.0)
        s_lp = _rne(x.to(tl.float32) + y.to(tl.float32), dt, ROUND_BITS)
        tl.store(S_OUT + row * stride_s_row + cols, s_lp, mask=mask)
        s = s_lp.to(tl.float32)
    else:
        s = x.to(tl.float32)
    ms = tl.sum(s * s, axis=0) / C
    rstd = 1.0 / tl.sqrt_rn(ms + eps)
    n = _rne(s * rstd, dt, ROUND_BITS).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(H_OUT + row * stride_h_row + cols, _rne(n * w, dt, ROUND_BITS), mask=mask)


def add_rmsnorm_fwd(x2, y2, weight, eps, s_out, h_out, round_bits=False):
    """2-D launcher: rows of ``x2`` (and ``y2``, or None for a plain RMSNorm) ``[R, C]``, last dim contiguous;
    ``s_out`` is ignored (may be None) when ``y2`` is None."""
    R, C = x2.shape
    BLOCK_C = triton.next_power_of_2(C)
    num_warps = 4 if BLOCK_C <= 1024 else 8
    has_y = y2 is not None
    if R == 0:
        return s_out, h_out
    _add_rmsnorm_fwd_kernel[(R,)](
        x2, y2 if has_y else x2, weight, s_out if has_y else h_out, h_out, C, eps,
        x2.stride(0), y2.stride(0) if has_y else 0, s_out.stride(0) if has_y else 0, h_out.stride(0),
        HAS_Y=has_y, BLOCK_C=BLOCK_C, ROUND_BITS=round_bits, num_warps=num_warps)
    return s_out, h_out


def aot_specs():
    """Ahead-of-time compile specs (see kernels/_aot.py): the Qwen2 rows (C = 896), with and without y."""
    specs = []
    rows = 8 * 512  # batch 8 global views (L = 512)
    C = 896
    for dtype, ty in (("fp16", "*fp16"), ("bf16", "*bf16")):
        for has_y in (True, False):
            specs.append({
                "op": "add_rmsnorm", "name": f"add_rmsnorm-{'add' if has_y else 'plain'}-C{C}-{dtype}",
                "fn": _add_rmsnorm_fwd_kernel,
                "signature": {"X": ty, "Y": ty, "W": ty, "S_OUT": ty, "H_OUT": ty, "C": "i32", "eps": "fp32",
                              "stride_x_row": "i32", "stride_y_row": "i32", "stride_s_row": "i32",
                              "stride_h_row": "i32", "HAS_Y": "constexpr", "BLOCK_C": "constexpr",
                              "ROUND_BITS": "constexpr"},
                "constexprs": {"HAS_Y": has_y, "BLOCK_C": 1024, "ROUND_BITS": False},
                "num_warps": 4, "num_stages": 1, "dtype": dtype,
                "flops": 5.0 * rows * C, "bytes": 2.0 * (4 if has_y else 2) * rows * C,
            })
    return specs
