"""The runner: builds the matrix, checks every provider's output FIRST, times only what passed.

For each (case, provider):

1. Correctness gate. Fresh random inputs at a small check batch, in the run dtype; the oracle runs the
   upstream-equivalent computation on the same values upcast (float32 on CUDA with TF32 off, float64 on
   the CPU). The provider passes iff its output is finite everywhere and

       rel_err = ||out - ref|| / ||ref||  <=  max(TOL[kind][dtype], 2 x rel_err of the case's baseline)

   where the baseline is ``upstream`` (ops, OCR-2 end to end) or ``reference`` (OCR-1 end to end) in the
   same dtype: a provider
   may be as inexact as twice what upstream itself is at that precision, never more (flash-attention's
   same-dtype rule, on a norm). TOL (below) is what each precision allows when the baseline is exact. A provider that
   fails is reported ``failed`` with its errors and is never timed.
2. Timing at the row's batch over ``input_sets`` (>= 3) input sets, rotating (:class:`bench.measure.Timer`).
   The first timed-batch output must also be finite, else ``failed``.
3. Derived: images/s, TFLOP/s and GB/s (from :mod:`bench.flops` counts), % of this run's measured peaks,
   peak memory.

Statuses: ok | failed | unavailable (with the reason) | oom | error | skipped (time budget).
"""

from __future__ import annotations

import gc
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .cases import (
    Case,
    Provider,
    Unavailable,
    clip_attention_case,
    compressor_case,
    flow_attention_case,
    sam_attention_case,
)
from .measure import Timer, errors, measure_peaks, mem_peak_mb, mem_reset, provenance

SCHEMA_VERSION = 1

# Allowed rel_err when the baseline is exact. Measured (CPU, vs float64): bf16 upstream ops 2-6e-3, bf16
# small-config encoder 1.1e-2; fp32 on CUDA may run tf32 dots in the kernels (~3e-4 per dot). End to end
# the 36 layers compound rounding, so the bounds are wider there; a broken kernel lands near 1.
TOL = {
    "op": {torch.float64: 1e-9, torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2},
    "e2e": {torch.float64: 1e-8, torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 1e-1},
}
CHECK_SEED = 12345
# seconds of budget a torch.compile(mode="max-autotune") row needs before it is started (compile + autotune);
# other modes skip the GEMM autotuning (estimates, not measured on a GPU yet)
COMPILE_NEED_S = {"op": 45, "e2e": 300}
COMPILE_NEED_S_NO_AUTOTUNE = {"op": 20, "e2e": 90}
PROVIDERS = ("upstream", "reference", "reference-compile", "upstream-compile", "flex", "library", "fast",
             "fast-graphs", "flash-nobias")
# end-to-end modes of each family (python -m bench --family)
FAMILY_MODES = {"ocr1": ("tiny", "small", "base", "large", "gundam"), "ocr2": ("ocr2-base", "ocr2-gundam")}
FAMILY_OPS = {"ocr1": ("sam_window_attention", "sam_global_attention", "compressor", "clip_attention"),
              "ocr2": ("flow_attention",)}


def compile_need_s(kind: str, opts: Dict[str, Any]) -> float:
    """Budget a compile row must still have before it starts (0 for a non-inductor backend)."""
    if opts.get("compile_backend") != "inductor":
        return 0
    mode = str(opts.get("compile_mode", "max-autotune"))
    return (COMPILE_NEED_S if mode.startswith("max-autotune") else COMPILE_NEED_S_NO_AUTOTUNE)[kind]


def mode_batches(mode, opts: Dict[str, Any]) -> Tuple[int, ...]:
    """Batches of an end-to-end mode (an :class:`bench.e2e.E2EMode`): OCR-1 images ``batches``, OCR-1 Gundam
    pages ``gundam_batches``; OCR-2 global views ``ocr2_batches``, OCR-2 pages ``ocr2_pages`` (each falling
    back to ``batches``)."""
    batches = tuple(opts.get("batches", (1, 8, 32)))
    if mode.family == "ocr2":
        key = "ocr2_pages" if mode.tiles else "ocr2_batches"
    else:
        key = "gundam_batches" if mode.tiles else None
    return tuple((opts.get(key) if key else None) or batches)


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


# --------------------------------------------------------------------------------------------------
# Matrix
# --------------------------------------------------------------------------------------------------


def build_matrix(opts: Dict[str, Any], device: torch.device, dtype: torch.dtype) -> List[Case]:
    """Cases in run order: per-op rows first, then end-to-end by batch (small first). End-to-end modes of
    both families may be mixed: each family has its own encoder pool (``config`` for OCR-1, ``config_v2``
    for OCR-2)."""
    from deepencoder.config import DeepEncoderConfig, DeepEncoderV2Config

    from .e2e import REAL_MODES, SMOKE_MODES, EncoderPool, e2e_case

    cfg = opts.get("config") or DeepEncoderConfig.deepseek_ocr()
    s, c = cfg.sam, cfg.clip
    cases: List[Case] = []
    ops = opts.get("ops", ("sam_window_attention", "sam_global_attention", "compressor", "clip_attention",
                           "flow_attention"))
    tokens = opts.get("op_tokens", 32768)
    ws = opts.get("op_window", s.window_size)
    for G in opts.get("grids", (32, 40, 64, 80)):
        B = max(1, tokens // (G * G))
        if "sam_window_attention" in ops:
            cases.append(sam_attention_case(G, ws, B, s.num_heads, s.head_dim, device, dtype, opts))
        if "sam_global_attention" in ops:
            cases.append(sam_attention_case(G, 0, B, s.num_heads, s.head_dim, device, dtype, opts))
        if "compressor" in ops:
            cases.append(compressor_case(G, B, cfg, device, dtype, opts))
    if "clip_attention" in ops:
        for g in opts.get("clip_grids", (8, 10, 16, 20)):
            B = max(1, tokens // (4 * (g * g + 1)))  # 31 images at g=16 with the default 32768
            cases.append(clip_attention_case(g, B, c.num_heads, c.head_dim, device, dtype, opts))
    if "flow_attention" in ops:  # DeepEncoder V2's Qwen2 attention: n = 144 (768 tile), 256 (1024 global)
        fh, fkv, fd = opts.get("flow_heads", (14, 2, 64))
        for n in opts.get("flow_ns", (144, 256)):
            B = max(1, tokens // (2 * n))  # 64 views at n=256 with the default 32768
            cases.append(flow_attention_case(n, B, fh, fkv, fd, device, dtype, opts))
    modes = opts.get("modes", ("tiny", "small", "base", "large", "gundam"))
    if modes:
        table = {**REAL_MODES, **SMOKE_MODES}
        unknown = [m for m in modes if m not in table]
        if unknown:
            raise ValueError(f"unknown end-to-end mode(s) {', '.join(unknown)}: choose from {', '.join(table)}")
        configs = {"ocr1": cfg, "ocr2": opts.get("config_v2") or DeepEncoderV2Config.deepseek_ocr2()}
        pools: Dict[str, EncoderPool] = {}
        pairs = []
        for i, m in enumerate(modes):
            pairs += [(B, i, m) for B in mode_batches(table[m], opts)]
        # small batches first (a budget cut drops the big ones); "listed": in --modes order, then by batch
        key = (lambda t: (t[1], t[0])) if opts.get("e2e_order") == "listed" else None
        for B, _, m in sorted(pairs, key=key):
            fam = table[m].family
            if fam not in pools:
                pools[fam] = EncoderPool(configs[fam], device, dtype)
            cases.append(e2e_case(table[m], B, pools[fam], opts))
    return cases


def compile_wanted(case: Case, policy: str, opts: Dict[str, Any]) -> bool:
    """``--compile none|base|all``. base: op rows at the Base shapes (G=64, g=16), the Base end-to-end row
    at the smallest batch, and the OCR-2 page row (``ocr2-gundam``, the issue's target shape) at its
    largest page batch (each new shape is a new compile: minutes end to end)."""
    if policy == "none":
        return False
    if policy == "all":
        return True
    modes = opts.get("compile_modes", ("base", "ocr2-gundam"))
    if case.kind == "op":
        return case.mode in modes
    if case.mode not in modes:
        return False
    from .e2e import REAL_MODES, SMOKE_MODES

    mode = {**REAL_MODES, **SMOKE_MODES}.get(case.mode)
    bs = mode_batches(mode, opts) if mode is not None else tuple(opts.get("batches", (1,)))
    pick = max if mode is not None and mode.family == "ocr2" and mode.tiles else min
    return case.batch == pick(bs)


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------


def _upcast(inputs, dt):
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def _graph(fn, inputs):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # JIT and workspaces outside the capture
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn(*inputs)
    return g, out


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(e, oom) or "out of memory" in str(e).lower()


class Runner:
    def __init__(self, device: torch.device, dtype: torch.dtype, timer: Timer, opts: Dict[str, Any],
                 prov: Dict[str, Any], peaks: Dict[str, float], on_row: Optional[Callable] = None):
        self.device, self.dtype, self.timer, self.opts = device, dtype, timer, opts
        self.prov, self.peaks, self.on_row = prov, peaks, on_row
        self.hp = torch.float32 if device.type == "cuda" else torch.float64
        self.rows: List[Dict[str, Any]] = []
        self._oracle: Dict[Any, torch.Tensor] = {}
        self._baseline_err: Dict[Any, float] = {}
        self._sets: Dict[Any, List] = {}
        self.t0 = time.monotonic()

    # -- rows
    def _row(self, case: Case, prov: Provider, status: str, **kw) -> Dict[str, Any]:
        row = {"schema_version": SCHEMA_VERSION, "kind": case.kind, "op": case.op, "mode": case.mode,
               "shape": case.shape, "batch": case.batch, "provider": prov.name, "dtype": dtype_name(self.dtype),
               "status": status, "reason": None, "note": prov.note, "flops": case.flops, "bytes": case.bytes,
               "images_per_call": case.images, "peak_tflops": self.peaks.get("tflops"),
               "peak_gbps": self.peaks.get("gbps"), "timing": self.timer.label,
               "ms_p20": None, "ms_p50": None, "ms_p80": None, "reps": None, "warmup": None, "input_sets": None,
               "images_per_s": None, "tflops": None, "pct_peak_tflops": None, "gbps": None, "pct_peak_gbps": None,
               "mem_peak_mb": None, "mem_delta_mb": None, "mem_kind": None, "max_abs_err": None, "rel_err": None,
               "max_rel_err": None, "tol": None, "check": None, "check_batch": None, "first_call_s": None}
        row.update({k: v for k, v in case.extra.items() if k not in row})
        row.update(kw)
        row.update(self.prov)
        if "config" in case.extra:  # the case's own config (an OCR-2 row in a run whose config is OCR-1's)
            row["config"] = case.extra["config"]
        self.rows.append(row)
        if self.on_row:
            self.on_row(row, self.rows)
        return row

    def _inputs(self, case: Case) -> List:
        if case.key not in self._sets:
            self._sets.clear()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            n = self.opts.get("input_sets", 3)
            self._sets[case.key] = [case.make(i, case.batch, self.dtype) for i in range(n)]
        return self._sets[case.key]

    def run_case(self, case: Case, providers: Optional[Sequence[Provider]] = None):
        for prov in providers if providers is not None else case.providers:
            budget = self.opts.get("budget_s")
            used = time.monotonic() - self.t0
            if budget is not None and used > budget:
                self._row(case, prov, "skipped", reason=f"time budget of {budget:.0f} s spent")
                continue
            need = compile_need_s(case.kind, self.opts) if prov.compile else 0
            if budget is not None and need and budget - used < need:
                self._row(case, prov, "skipped", reason=f"{budget - used:.0f} s of the time budget left; a "
                          f"{self.opts.get('compile_mode', 'max-autotune')} compile of this {case.kind} needs "
                          f"~{need} s")
                continue
            try:
                self._run_one(case, prov)
            except Unavailable as e:
                self._row(case, prov, "unavailable", reason=str(e))
            except Exception as e:  # noqa: BLE001 - one bad provider must not end the suite
                status = "oom" if _is_oom(e) else "error"
                if type(e).__name__ == "BackendUnavailable":
                    status = "unavailable"
                tb = traceback.format_exception_only(type(e), e)[-1].strip()
                tb = tb.replace("deepencoder.kernels._common.", "")
                self._row(case, prov, status, reason=tb[:500])
            finally:
                if self.device.type == "cuda" and torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()

    def _check(self, case: Case, prov: Provider, fn) -> Dict[str, Any]:
        # compiled providers are checked at the timed batch: a new shape is a new (slow) compile
        cb = case.batch if prov.compile else min(case.batch, self.opts.get("check_batch", 1))
        x = case.make(CHECK_SEED, cb, self.dtype)
        okey = (case.key, prov.oracle_key, cb)
        if okey not in self._oracle:
            oracle = prov.oracle or case.oracle
            prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                with torch.inference_mode():
                    ref = oracle(*_upcast(x, self.hp))
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
            self._oracle[okey] = _to_cpu(ref)
        ref = self._oracle[okey]
        xin = prov.prepare(*x) if prov.prepare else x
        t0 = time.perf_counter()
        with torch.inference_mode():
            if prov.graphs:
                g, out = _graph(fn, xin)
                g.replay()
            else:
                out = fn(*xin)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        err = errors(out, ref)
        tol = TOL[case.kind][self.dtype]
        base = self._baseline_err.get(case.key) if prov.name != case.baseline else None
        bound = max(tol, 2.0 * base) if base is not None else tol
        ok = err["finite"] and err["rel_err"] is not None and err["rel_err"] <= bound
        if prov.name == case.baseline and err["rel_err"] is not None:
            self._baseline_err[case.key] = err["rel_err"]
        res = {k: err[k] for k in ("max_abs_err", "rel_err", "max_rel_err")}
        res.update(tol=bound, check="pass" if ok else "fail", check_batch=cb,
                   first_call_s=first if prov.compile else None)
        if not ok:
            why = err.get("shape_error") or ("non-finite output" if not err["finite"] else
                                              f"rel_err {err['rel_err']:.3e} > bound {bound:.1e}")
            res["reason"] = f"correctness check failed: {why}"
        return res

    def _run_one(self, case: Case, prov: Provider):
        fn = prov.build()
        track = case.kind == "e2e" and prov.name.startswith("fast")
        if track:
            _reset_backends()
        chk = self._check(case, prov, fn)
        if track:  # which backend each op's "auto" chose inside the fast path (no silent fallback unseen)
            chk["op_backends"] = _read_backends()
        if chk["check"] != "pass":
            self._row(case, prov, "failed", **chk)  # never timed
            return
        sets = self._inputs(case)
        prepared = [prov.prepare(*s) if prov.prepare else s for s in sets]
        with torch.inference_mode():
            if prov.graphs:
                graphs = [_graph(fn, s) for s in prepared]
                calls = [g.replay for g, _ in graphs]
                t_first = time.perf_counter()
                graphs[0][0].replay()
                t_first = (time.perf_counter() - t_first) * 1e3
                first_out = graphs[0][1]
            else:
                calls = [lambda s=s: fn(*s) for s in prepared]
                t_first = time.perf_counter()
                first_out = calls[0]()
                t_first = (time.perf_counter() - t_first) * 1e3
            if not _finite(first_out):
                self._row(case, prov, "failed", **{**chk, "check": "fail",
                                                   "reason": "non-finite output at the timed batch"})
                return
            del first_out
            base = mem_reset(self.device)
            t = self.timer.time(calls, warmed=1, est_ms=t_first)
            mem = mem_peak_mb(self.device, base)
        del calls, prepared
        s50 = t["ms_p50"] * 1e-3
        tf = case.flops / s50 / 1e12
        gb = case.bytes / s50 / 1e9
        pk_tf, pk_gb = self.peaks.get("tflops"), self.peaks.get("gbps")
        self._row(case, prov, "ok", **chk, **t, **mem, images_per_s=case.images / s50, tflops=tf, gbps=gb,
                  pct_peak_tflops=100 * tf / pk_tf if pk_tf else None,
                  pct_peak_gbps=100 * gb / pk_gb if pk_gb else None)


_TRACKED_OPS = ("sam_attention", "add_layernorm", "compressor", "clip_attention", "flow_attention", "add_rmsnorm",
                "rms_norm", "swiglu")


def _reset_backends():
    try:
        from deepencoder.kernels._common import record_backend
    except Exception:  # noqa: BLE001
        return
    for op in _TRACKED_OPS:
        record_backend(op, "-", "reset by bench")


def _read_backends() -> Optional[str]:
    try:
        from deepencoder.kernels import last_backend
    except Exception:  # noqa: BLE001
        return None
    return ", ".join(f"{op}={last_backend(op)}" for op in _TRACKED_OPS)


def _to_cpu(out):
    if isinstance(out, torch.Tensor):
        return out.detach().cpu()
    return [getattr(o, "tokens", o).detach().cpu() for o in out]


def _finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out).all())
    return all(bool(torch.isfinite(getattr(o, "tokens", o)).all()) for o in out)


def run_suite(opts: Dict[str, Any], device: torch.device, dtype: torch.dtype, timer: Timer,
              on_row: Optional[Callable] = None, cases: Optional[List[Case]] = None) -> List[Dict[str, Any]]:
    """Peaks, then every case's providers (compile rows last, so a budget cut drops them first; with
    ``compile_inline`` right after their case)."""
    prov = provenance(device)
    prov["config"] = (opts.get("config").name if opts.get("config") is not None else "deepseek-ocr")
    rows: List[Dict[str, Any]] = []
    peaks: Dict[str, float] = {}
    peak_rows = measure_peaks(device, timer, quick=opts.get("quick_peaks", False))
    for r in peak_rows:
        peaks.setdefault("tflops", r.get("measured_tflops"))
        if "measured_gbps" in r:
            peaks["gbps"] = r["measured_gbps"]
    peaks = {k: v for k, v in peaks.items() if v is not None}
    runner = Runner(device, dtype, timer, opts, prov, peaks, on_row)
    for r in peak_rows:
        row = {"schema_version": SCHEMA_VERSION, "kind": "peak", "mode": None, "batch": 1, "provider": "torch",
               "dtype": "bfloat16" if device.type == "cuda" and r["op"].startswith("matmul") else "float32",
               "status": "ok", "reason": None, "note": "this machine's ceiling, measured in this run",
               "images_per_s": None, "tflops": r.get("measured_tflops"), "gbps": r.get("measured_gbps"),
               "peak_tflops": peaks.get("tflops"), "peak_gbps": peaks.get("gbps"), **r, **prov}
        row.pop("measured_tflops", None)
        row.pop("measured_gbps", None)
        runner.rows.append(row)
        if on_row:
            on_row(row, runner.rows)
    cases = cases if cases is not None else build_matrix(opts, device, dtype)
    wanted = set(opts.get("providers") or PROVIDERS + ("reference",))
    policy = opts.get("compile", "all")
    later = []
    for case in cases:
        now = [p for p in case.providers if p.name in wanted and not p.compile]
        runner.run_case(case, now)
        if case.cleanup:
            case.cleanup()
        comp = [(case, p) for p in case.providers if p.name in wanted and p.compile and compile_wanted(case, policy, opts)]
        if opts.get("compile_inline"):  # right after its case (a compile row the run is for, not an extra)
            for c, p in comp:
                runner.run_case(c, [p])
        else:
            later += comp
    for case, p in later:
        # the baseline's error (for the bound) is already known from the first pass
        runner.run_case(case, [p])
    rows.extend(runner.rows)
    return rows
