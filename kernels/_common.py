"""Shared plumbing for the kernel ops: backend choice with explicit guards, kill switch, visibility.

Every op exposes ``backend="auto" | "triton" | "torch"``:

* ``"torch"`` runs the op's pure-PyTorch reference.
* ``"triton"`` runs the Triton kernel or raises :class:`BackendUnavailable` naming the failed guard
  (never a silent fallback).
* ``"auto"`` picks ``"triton"`` when every guard passes, else ``"torch"``, and records why.

Kill switch: ``DEEPENCODER_DISABLE_TRITON=1`` (all ops) or ``DEEPENCODER_DISABLE_<OP>=1`` (one op, e.g.
``DEEPENCODER_DISABLE_SAM_ATTENTION``) makes ``auto`` choose ``torch``; an explicit ``"triton"`` still
raises. ``last_backend(op)`` tells which backend ran last and why.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

import torch

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take
# what every op's torch backend takes (float64: an oracle path); integers and complex never
VALID_DTYPES = FLOAT_DTYPES + (torch.float64,)

_state = threading.local()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message names the guard."""


def interpreter_active() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_importable() -> Tuple[bool, str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return False, f"triton is not importable ({e})"
    return True, ""


def triton_version() -> Tuple[int, int]:
    """(major, minor) of the installed Triton, (0, 0) when it is not importable."""
    try:
        import triton

        major, minor = (int(p) for p in triton.__version__.split("+")[0].split(".")[:2])
        return major, minor
    except Exception:  # noqa: BLE001 - any failure: no usable Triton
        return 0, 0


def kill_switch(op: str) -> Optional[str]:
    if os.environ.get("DEEPENCODER_DISABLE_TRITON", "0") not in ("", "0"):
        return "DEEPENCODER_DISABLE_TRITON is set"
    var = f"DEEPENCODER_DISABLE_{op.upper()}"
    if os.environ.get(var, "0") not in ("", "0"):
        return f"{var} is set"
    return None


def device_guard(*tensors: torch.Tensor) -> Optional[str]:
    """Triton runs on CUDA tensors, or on CPU tensors under the interpreter."""
    for t in tensors:
        if t.is_cuda:
            continue
        if t.device.type == "cpu" and interpreter_active():
            continue
        return (f"tensor on {t.device} needs CUDA, or TRITON_INTERPRET=1 set before deepencoder.kernels "
                "is imported for a CPU run")
    return None


def choose_backend(op: str, backend: str, guards: List[Callable[[], Optional[str]]]) -> str:
    """Resolve ``backend`` for ``op``. ``guards`` return None when fine, else the reason Triton cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        _record(op, "torch", "requested")
        return "torch"
    reasons = []
    ok, why = triton_importable()
    if not ok:
        reasons.append(why)
    else:
        for g in guards:
            r = g()
            if r:
                reasons.append(r)
    if backend == "triton":
        if reasons:
            raise BackendUnavailable(f"{op}: backend='triton' cannot run: " + "; ".join(reasons))
        _record(op, "triton", "requested")
        return "triton"
    ks = kill_switch(op)
    if ks:
        _record(op, "torch", ks)
        return "torch"
    if reasons:
        _record(op, "torch", "; ".join(reasons))
        return "torch"
    _record(op, "triton", "all guards passed")
    return "triton"


def _record(op: str, backend: str, why: str) -> None:
    d = getattr(_state, "last", None)
    if d is None:
        d = _state.last = {}
    d[op] = (backend, why)


def last_backend(op: str) -> Optional[str]:
    """The backend the last call of ``op`` in this thread ran ("triton" or "torch"), or None."""
    d: Dict[str, Tuple[str, str]] = getattr(_state, "last", {}) or {}
    return d.get(op, (None, ""))[0]


def last_backend_reason(op: str) -> str:
    d: Dict[str, Tuple[str, str]] = getattr(_state, "last", {}) or {}
    return d.get(op, (None, ""))[1]


def record_backend(op: str, backend: str, why: str = "") -> None:
    """For ops that dispatch outside :func:`choose_backend` (e.g. the CLIP attention provider)."""
    _record(op, backend, why)


# --------------------------------------------------------------------------------------------------
# Argument checks shared by every op (run before any backend is chosen: the torch path too)
# --------------------------------------------------------------------------------------------------


def check_tensors(op: str, tensors: List[Tuple[str, Optional[torch.Tensor]]], same_dtype: Tuple[str, ...] = (),
                  dtypes: Tuple[torch.dtype, ...] = VALID_DTYPES) -> None:
    """One-line errors for bad tensor arguments, naming the argument.

    ``tensors``: ``(name, tensor)`` pairs, the first one the reference (``x`` / ``qkv``); ``None`` entries
    are optional arguments left out. Every tensor must be a dense (strided) ``torch.Tensor`` of a dtype in
    ``dtypes`` on the reference's device (a ``meta`` weight beside a CPU input would otherwise read
    unallocated memory, an integer one would compute in integers); names in ``same_dtype`` must also have
    the reference's dtype. Raises ``TypeError`` (type, layout, dtype) or ``ValueError`` (device).
    """
    ref_name, ref = tensors[0]
    for name, t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{op}: {name} must be a dense tensor, got layout {t.layout}")
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {names}")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} on {t.device} but {ref_name} on {ref.device} "
                             "(all tensors must be on one device)")
        if name in same_dtype and t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} dtype {str(t.dtype).replace('torch.', '')} != {ref_name} dtype "
                            f"{str(ref.dtype).replace('torch.', '')}")


def check_kernel_dtype(op: str, name: str, t: torch.Tensor) -> None:
    """The Triton kernels take float32, float16 and bfloat16 only (float64 is a torch-backend dtype)."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: the Triton kernel takes {name} in float32, float16 or bfloat16, got "
                        f"{str(t.dtype).replace('torch.', '')}")


def check_eps(op: str, eps) -> float:
    """``eps`` of a normalisation: a finite number >= 0 (a NaN eps turns every output into NaN)."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: eps must be a number, got {type(eps).__name__}") from None
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps!r}")
    return e


def compressor_grids(G: int) -> Tuple[int, int]:
    """``(g1, g)``: the grid after the compressor's first and second ``3x3 stride-2 pad-1`` conv.

    PyTorch's conv arithmetic ``floor((n - 1) / 2) + 1`` twice, i.e. ``g1 = ceil(G/2)``, ``g = ceil(G/4)``
    (G=64 -> 32 -> 16, 40 -> 20 -> 10, 80 -> 40 -> 20, 9 -> 5 -> 3). The one place this is computed for
    ``kernels/``, ``bench/`` and ``tests/`` (kernels stay usable without ``deepencoder``).
    """
    G = int(G)
    if G < 1:
        raise ValueError(f"grid side must be >= 1, got {G}")
    g1 = (G - 1) // 2 + 1
    return g1, (g1 - 1) // 2 + 1


def token_grid(G: int) -> int:
    """``g = ceil(G/4)``: side of the compressed token grid for a ``G x G`` SAM patch grid."""
    return compressor_grids(G)[1]
