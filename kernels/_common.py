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

import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

import torch

BACKENDS = ("auto", "triton", "torch")

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
