"""Dispatcher and custom ops for the fused 16x compressor (see ``kernels/_common.py`` for the backend rules).

Public functions:

* :func:`compressor` — ``x [B,G,G,Cin]`` (SAM block output, channels-last) -> tokens ``[B, g*g, C4]``,
  optionally written into a caller's strided ``out`` (e.g. ``feats[..., 1024:]`` of the
  ``[B, g*g, 2048]`` projector input, so the concat costs no copy).
* :func:`conv2d_nhwc` — one implicit-GEMM convolution, channels-last in and out (tests, reuse).

Custom ops (``torch.compile`` / export see through them via their fake implementations):
``deepencoder::compressor`` (functional), ``deepencoder::compressor_out`` (writes ``out``, declared
mutated), ``deepencoder::conv2d_nhwc``.
"""

from typing import Optional

import torch

from .._common import (
    FLOAT_DTYPES,
    check_eps,
    check_kernel_dtype,
    check_tensors,
    choose_backend,
    compressor_grids,
    device_guard,
    token_grid,
)
from .reference import compressor_ref, conv2d_nhwc_ref, out_size

_DTYPES = FLOAT_DTYPES  # the Triton kernels; the torch backend also takes float64
# The LayerNorm2d epilogues hold a whole channel row in one tile (BLOCK_N = next_power_of_2(C1)); past 256
# channels the 128-row fp32 accumulator no longer fits the register file.
MAX_LN_CHANNELS = 256


# --------------------------------------------------------------------------------------------------
# Validation (malformed calls: ValueError / TypeError whatever the backend)
# --------------------------------------------------------------------------------------------------


_NAMES = ("x", "neck0_w", "ln1_w", "ln1_b", "neck2_w", "ln2_w", "ln2_b", "net2_w", "net3_w", "out")


def _check_w(name, w, cout, cin, k):
    ok = w.dim() == 4 and tuple(w.shape[1:]) == (cin, k, k) and (cout is None or w.shape[0] == cout) \
        and w.shape[0] >= 1
    if not ok:
        raise ValueError(f"compressor: {name} must be [{cout if cout is not None else 'Cout'}, {cin}, {k}, {k}], "
                         f"got {list(w.shape)}")


def _check_vec(name, t, c):
    if tuple(t.shape) != (c,):
        raise ValueError(f"compressor: {name} must be [{c}], got {list(t.shape)}")


def _validate(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, out, eps):
    """Every argument, whatever the backend (one-line ``TypeError`` / ``ValueError`` naming it): tensors, one
    device, one floating dtype (that of ``x``), checkpoint shapes, ``out`` shape, ``eps``."""
    args = (x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, out)
    check_tensors("compressor", list(zip(_NAMES, args)), same_dtype=_NAMES[1:])
    if x.dim() != 4:
        raise ValueError(f"compressor: x must be [B, G, G, Cin] channels-last, got {list(x.shape)}")
    B, H, W, cin = x.shape
    if H < 1 or W < 1 or cin < 1:
        raise ValueError(f"compressor: empty input {list(x.shape)} (grid {H}x{W}, {cin} channels)")
    if neck0_w.dim() != 4:
        raise ValueError(f"compressor: neck0_w must be [C1, {cin}, 1, 1], got {list(neck0_w.shape)}")
    c1 = neck0_w.shape[0]
    _check_w("neck0_w", neck0_w, c1, cin, 1)
    _check_vec("ln1_w", ln1_w, c1)
    _check_vec("ln1_b", ln1_b, c1)
    _check_w("neck2_w", neck2_w, c1, c1, 3)
    _check_vec("ln2_w", ln2_w, c1)
    _check_vec("ln2_b", ln2_b, c1)
    _check_w("net2_w", net2_w, None, c1, 3)
    c3 = net2_w.shape[0]
    _check_w("net3_w", net3_w, None, c3, 3)
    c4 = net3_w.shape[0]
    gh, gw = compressor_grids(H)[1], compressor_grids(W)[1]
    if out is not None and tuple(out.shape) != (B, gh * gw, c4):
        raise ValueError(f"compressor: out must be [{B}, {gh * gw}, {c4}] (B, g*g, C4), got {list(out.shape)}")
    eps = check_eps("compressor", eps)
    return B, H, W, cin, c1, c3, c4, gh, gw, eps


# --------------------------------------------------------------------------------------------------
# Guards (the Triton backend's preconditions; "auto" falls back to torch when one fails)
# --------------------------------------------------------------------------------------------------


def _cuda_cap_guard(x):
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 0):
        return f"CUDA capability {torch.cuda.get_device_capability(x.device)} < (8, 0) (bf16 mma, cp.async)"
    return None


def _channels_guard(**chans):
    bad = {k: v for k, v in chans.items() if v % 16 != 0}
    if bad:
        return f"channel counts must be multiples of 16 (16-byte rows, tl.dot K >= 16): {bad}"
    return None


def compressor(x: torch.Tensor, neck0_w: torch.Tensor, ln1_w: torch.Tensor, ln1_b: torch.Tensor,
               neck2_w: torch.Tensor, ln2_w: torch.Tensor, ln2_b: torch.Tensor, net2_w: torch.Tensor,
               net3_w: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
               backend: str = "auto") -> torch.Tensor:
    """The 16x compressor: ``x [B,G,G,Cin]`` -> ``[B, g*g, C4]`` tokens (row-major over the g x g grid).

    Exactly ``SAMEncoder.compress(x).flatten(2).transpose(1, 2)`` (up to rounding; the Triton backend
    computes LayerNorm2d statistics in float32). Weights in checkpoint layout: ``neck0_w [C1,Cin,1,1]``,
    ``ln1_* [C1]``, ``neck2_w [C1,C1,3,3]``, ``ln2_* [C1]``, ``net2_w [C3,C1,3,3]``, ``net3_w [C4,C3,3,3]``
    (DeepSeek-OCR: 768 -> 256 -> 256 -> 512 -> 1024). ``g = floor((G'-1)/2)+1`` with
    ``G' = floor((G-1)/2)+1``. ``out`` (optional) may be any ``[B, g*g, C4]`` view with last-dim stride 1;
    it is written in place and returned.
    """
    B, H, W, cin, c1, c3, c4, gh, gw, eps = _validate(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w,
                                                      net3_w, out, eps)
    params = (neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w)

    def g_dtype():
        return None if x.dtype in _DTYPES else f"dtype {x.dtype} not in {_DTYPES}"

    def g_contig():
        if not x.is_contiguous():
            return f"x must be contiguous channels-last [B,G,G,C] (strides {x.stride()})"
        if out is not None and out.stride(-1) != 1:
            return f"out's last dim must have stride 1 (strides {out.stride()})"
        return None

    def g_ln_row():
        if c1 > MAX_LN_CHANNELS:
            return (f"C1={c1} > {MAX_LN_CHANNELS}: the LayerNorm2d epilogue needs a whole channel row in "
                    "one tile")
        return None

    guards = [lambda: device_guard(x, *params, *(() if out is None else (out,))), g_dtype,
              lambda: _cuda_cap_guard(x),
              lambda: _channels_guard(Cin=cin, C1=c1, C3=c3, C4=c4),
              g_ln_row, g_contig]
    be = choose_backend("compressor", backend, guards)
    if be == "torch":
        return compressor_ref(x, *params, eps=eps, out=out) if out is not None else \
            compressor_ref(x, *params, eps=eps).contiguous()
    if out is None:
        return _compressor_op(x, *params, eps)
    _compressor_out_op(x, *params, eps, out)
    return out


def _validate_conv(x, w):
    check_tensors("conv2d_nhwc", [("x", x), ("w", w)], same_dtype=("w",))
    if x.dim() != 4 or w.dim() != 4 or w.shape[1] != x.shape[-1] or min(w.shape) < 1 or min(x.shape) < 1:
        raise ValueError(f"conv2d_nhwc: x [B,H,W,Cin] and w [Cout,Cin,KH,KW] expected, got {list(x.shape)} "
                         f"and {list(w.shape)}")


def conv2d_nhwc(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0,
                backend: str = "auto") -> torch.Tensor:
    """Implicit-GEMM conv, channels-last: ``x [B,H,W,Cin]``, ``w [Cout,Cin,KH,KW]`` -> ``[B,OH,OW,Cout]``.

    No bias, no dilation, no groups; ``OH = floor((H + 2*padding - KH)/stride) + 1`` as in PyTorch.
    Backend rules as :func:`compressor` (op name ``conv2d_nhwc``, kill switch
    ``DEEPENCODER_DISABLE_CONV2D_NHWC``).
    """
    _validate_conv(x, w)
    stride, padding = int(stride), int(padding)
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d_nhwc: stride {stride} must be >= 1 and padding {padding} >= 0")
    oh = out_size(x.shape[1], w.shape[2], stride, padding)
    ow = out_size(x.shape[2], w.shape[3], stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d_nhwc: empty output {oh}x{ow}")

    def g_contig():
        return None if x.is_contiguous() else f"x must be contiguous channels-last (strides {x.stride()})"

    def g_dtype():
        return None if x.dtype in _DTYPES else f"dtype {x.dtype} not in {_DTYPES}"

    guards = [lambda: device_guard(x, w), g_dtype, lambda: _cuda_cap_guard(x),
              lambda: _channels_guard(Cin=w.shape[1], Cout=w.shape[0]), g_contig]
    be = choose_backend("conv2d_nhwc", backend, guards)
    if be == "torch":
        return conv2d_nhwc_ref(x, w, stride, padding)
    return _conv2d_nhwc_op(x, w, stride, padding)


# --------------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------------


def _out_shape(x, net3_w):
    B, H, W, _ = x.shape
    return B, token_grid(H) * token_grid(W), net3_w.shape[0]


@torch.library.custom_op("deepencoder::compressor", mutates_args=())
def _compressor_op(x: torch.Tensor, neck0_w: torch.Tensor, ln1_w: torch.Tensor, ln1_b: torch.Tensor,
                   neck2_w: torch.Tensor, ln2_w: torch.Tensor, ln2_b: torch.Tensor, net2_w: torch.Tensor,
                   net3_w: torch.Tensor, eps: float) -> torch.Tensor:
    from .triton import compressor_fwd

    # reachable as torch.ops.deepencoder.compressor too: never launch on unchecked arguments
    eps = _validate(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, None, eps)[-1]
    check_kernel_dtype("compressor", "x", x)
    x = x.contiguous()
    out = torch.empty(_out_shape(x, net3_w), device=x.device, dtype=x.dtype)
    compressor_fwd(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, eps, out)
    return out


@_compressor_op.register_fake
def _(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, eps):
    return x.new_empty(_out_shape(x, net3_w))


@torch.library.custom_op("deepencoder::compressor_out", mutates_args=("out",))
def _compressor_out_op(x: torch.Tensor, neck0_w: torch.Tensor, ln1_w: torch.Tensor, ln1_b: torch.Tensor,
                       neck2_w: torch.Tensor, ln2_w: torch.Tensor, ln2_b: torch.Tensor, net2_w: torch.Tensor,
                       net3_w: torch.Tensor, eps: float, out: torch.Tensor) -> None:
    from .triton import compressor_fwd

    eps = _validate(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, out, eps)[-1]
    check_kernel_dtype("compressor", "x", x)
    if out.stride(-1) != 1:
        raise ValueError(f"compressor: out's last dim must have stride 1 for the Triton kernel, strides {out.stride()}")
    x = x.contiguous()
    compressor_fwd(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, eps, out)


@_compressor_out_op.register_fake
def _(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, eps, out):
    return None


@torch.library.custom_op("deepencoder::conv2d_nhwc", mutates_args=())
def _conv2d_nhwc_op(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    from .triton import conv2d_nhwc_fwd

    _validate_conv(x, w)
    check_kernel_dtype("conv2d_nhwc", "x", x)
    return conv2d_nhwc_fwd(x.contiguous(), w, stride, padding)


@_conv2d_nhwc_op.register_fake
def _(x, w, stride, padding):
    B, H, W, _ = x.shape
    cout, _, kh, kw = w.shape
    return x.new_empty(B, out_size(H, kh, stride, padding), out_size(W, kw, stride, padding), cout)
