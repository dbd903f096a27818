"""Measuring: provenance, timers, this machine's two ceilings, memory, errors.

Timing rules:

* CUDA: one pair of CUDA events around every call (or ``triton.testing.do_bench`` with ``--timer
  do_bench``), after warm-up, over many repetitions, rotating among several input sets so caches don't
  flatter; percentiles p20/p50/p80 of the per-call times.
* CPU: ``time.perf_counter`` around every call. Rows say ``timing: cpu-perf_counter`` (and
  ``+triton-interpreter`` when Triton kernels ran under ``TRITON_INTERPRET=1``): such numbers say the code
  runs, not how fast a GPU would run it.
* Ceilings are measured in the same run: a large bf16 matmul (fp32 on CPU) for FLOP/s and a large
  device-to-device copy (bytes read + written) for bandwidth.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------
# Provenance (on every row)
# --------------------------------------------------------------------------------------------------


def _run(cmd: Sequence[str], cwd: Optional[str] = None, timeout: float = 10.0) -> Optional[str]:
    try:
        r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except Exception:  # noqa: BLE001 - missing tool, timeout: the field says "unknown"
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> Dict[str, Any]:
    """Commit measured. ``DEEPENCODER_COMMIT`` overrides (the GPU machine gets a copy without ``.git``)."""
    env = os.environ.get("DEEPENCODER_COMMIT")
    if env:
        return {"git_commit": env, "git_dirty": None}
    sha = _run(["git", "rev-parse", "HEAD"], cwd=REPO)
    if not sha:
        return {"git_commit": "unknown", "git_dirty": None}
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
    return {"git_commit": sha, "git_dirty": bool(dirty) if dirty is not None else None}


def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return str(getattr(m, "__version__", "unknown"))
    except Exception:  # noqa: BLE001
        return "not installed"


def provenance(device: torch.device) -> Dict[str, Any]:
    """Device name, driver, versions, commit, timestamp, host: copied onto every row."""
    p: Dict[str, Any] = {
        "device_kind": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "flash_attn": _version("flash_attn"),
        "cuda_runtime": torch.version.cuda or "none",
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        p["device"] = props.name
        p["device_capability"] = f"{props.major}.{props.minor}"
        drv = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                    str(device.index or 0)])
        p["driver"] = drv.splitlines()[0] if drv else "unknown"
    else:
        p["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, " \
                      f"{torch.get_num_threads()} torch threads)"
        p["device_capability"] = "cpu"
        p["driver"] = "n/a (CPU)"
    p.update(git_commit())
    return p


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    s = sorted(xs)
    if not s:
        raise ValueError("no samples")
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Timer:
    """Times a list of zero-argument calls, rotating among them (one call per input set).

    ``target_ms``: measured time to aim for per row (reps = target / first estimate, clamped to
    ``[min_reps, max_reps]``). ``warmup``: calls before timing (at least one per input set).
    """

    def __init__(self, device: torch.device, target_ms: float = 200.0, min_reps: int = 5, max_reps: int = 200,
                 warmup: int = 3, method: str = "events"):
        self.device = device
        self.target_ms = target_ms
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.warmup = warmup
        self.method = method if device.type == "cuda" else "perf_counter"

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return "cuda-events" if self.method == "events" else "triton.testing.do_bench"
        interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        return "cpu-perf_counter" + ("+triton-interpreter" if interp else "")

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _one(self, call: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3

    def time(self, calls: List[Callable[[], Any]], warmed: int = 0, est_ms: Optional[float] = None) -> Dict[str, Any]:
        """Warm up (``warmed`` calls were already made by the caller), estimate one call, then time
        ``reps`` calls rotating through ``calls``. Returns p20/p50/p80 in ms and the counts."""
        n = len(calls)
        extra = max(0, self.warmup - warmed)
        for i in range(extra):
            calls[(warmed + i) % n]()
        self._sync()
        if est_ms is None or self.device.type == "cuda":
            est_ms = self._one(calls[(warmed + extra) % n])
            extra += 1
        reps = int(max(self.min_reps, min(self.max_reps, self.target_ms / max(est_ms, 1e-3))))
        warm = warmed + extra
        if self.device.type == "cuda" and self.method == "do_bench":
            samples = self._do_bench(calls, reps, est_ms)
        elif self.device.type == "cuda":
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                starts[i].record()
                calls[i % n]()
                ends[i].record()
            self._sync()
            samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        else:
            samples = []
            for i in range(reps):
                t0 = time.perf_counter()
                calls[i % n]()
                samples.append((time.perf_counter() - t0) * 1e3)
        return {"ms_p20": percentile(samples, 20), "ms_p50": percentile(samples, 50),
                "ms_p80": percentile(samples, 80), "reps": len(samples), "warmup": warm, "input_sets": n,
                "timing": self.label}

    def _do_bench(self, calls, reps, est) -> List[float]:
        from triton.testing import do_bench

        state = {"i": 0}

        def rotating():
            calls[state["i"] % len(calls)]()
            state["i"] += 1

        # do_bench's warmup/rep are milliseconds; it returns the requested quantiles
        q = do_bench(rotating, warmup=max(1, int(est * 2)), rep=max(1, int(est * reps)),
                     quantiles=[0.2, 0.5, 0.8])
        return list(q)


# --------------------------------------------------------------------------------------------------
# Ceilings of THIS machine (measured in the same run)
# --------------------------------------------------------------------------------------------------


def measure_peaks(device: torch.device, timer: Timer, quick: bool = False) -> List[Dict[str, Any]]:
    """Two rows: matmul TFLOP/s (bf16 on CUDA, fp32 on CPU) and copy GB/s (bytes read + written)."""
    rows = []
    gen = torch.Generator(device=device).manual_seed(1234)
    if device.type == "cuda":
        n, dtype, copy_mib = 8192, torch.bfloat16, 1024
    else:
        n, dtype, copy_mib = (1024 if quick else 2048), torch.float32, (64 if quick else 256)
    pairs = [(torch.randn(n, n, device=device, dtype=dtype, generator=gen),
              torch.randn(n, n, device=device, dtype=dtype, generator=gen)) for _ in range(3)]
    outs = [torch.empty(n, n, device=device, dtype=dtype) for _ in range(3)]
    t = timer.time([lambda a=a, b=b, o=o: torch.mm(a, b, out=o) for (a, b), o in zip(pairs, outs)])
    flops = 2.0 * n ** 3
    rows.append({"op": f"matmul-{str(dtype).replace('torch.', '')}", "shape": f"{n}x{n}x{n}",
                 "flops": flops, "bytes": 3.0 * n * n * pairs[0][0].element_size(),
                 "measured_tflops": flops / (t["ms_p50"] * 1e-3) / 1e12, **t})
    del pairs, outs
    numel = copy_mib * 2 ** 20 // 4
    srcs = [torch.randn(numel, device=device, generator=gen) for _ in range(2)]
    dst = torch.empty(numel, device=device)
    t = timer.time([lambda s=s, d=dst: d.copy_(s) for s in srcs])
    nbytes = 2.0 * numel * 4
    rows.append({"op": "copy", "shape": f"{copy_mib}MiB", "flops": 0.0, "bytes": nbytes,
                 "measured_gbps": nbytes / (t["ms_p50"] * 1e-3) / 1e9, **t})
    del srcs, dst
    return rows


# --------------------------------------------------------------------------------------------------
# Memory and errors
# --------------------------------------------------------------------------------------------------


def mem_reset(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def mem_peak_mb(device: torch.device, base: int) -> Dict[str, Any]:
    """Peak allocated during the measured call (``torch.cuda.max_memory_allocated``): total, and above
    what was allocated before it (weights and inputs excluded). CPU: not measured (n/a)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"mem_peak_mb": peak / 2 ** 20, "mem_delta_mb": (peak - base) / 2 ** 20,
                "mem_kind": "cuda.max_memory_allocated"}
    return {"mem_peak_mb": None, "mem_delta_mb": None, "mem_kind": "n/a (CPU)"}


def flatten_out(out) -> torch.Tensor:
    """A tensor, or a list of tensors / EncodedImage-like objects with ``.tokens``, as one flat tensor."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    parts = [getattr(o, "tokens", o) for o in out]
    return torch.cat([p.reshape(-1) for p in parts])


def errors(out, ref) -> Dict[str, Any]:
    """max |out - ref|, ||out - ref|| / ||ref|| (Frobenius) and max|out - ref| / max|ref|, in float64."""
    o = flatten_out(out).detach().to("cpu", torch.float64)
    r = flatten_out(ref).detach().to("cpu", torch.float64)
    if o.shape != r.shape:
        return {"max_abs_err": None, "rel_err": None, "max_rel_err": None, "finite": False,
                "shape_error": f"output has {o.numel()} elements, reference {r.numel()}"}
    finite = bool(torch.isfinite(o).all())
    d = (o - r)
    if not finite:
        return {"max_abs_err": None, "rel_err": None, "max_rel_err": None, "finite": False}
    return {"max_abs_err": float(d.abs().max()),
            "rel_err": float(d.norm() / r.norm().clamp_min(1e-30)),
            "max_rel_err": float(d.abs().max() / r.abs().max().clamp_min(1e-30)),
            "finite": True}
