"""Ahead-of-time compile of the kernels for sm_80 / sm_90 with no GPU: registers, spills, shared memory, MMA.

Each op's ``triton.py`` exposes ``aot_specs() -> list of dict``::

    {"op", "name", "fn" (@triton.jit), "signature" {arg: "*fp16" | "i32" | "fp32" | "constexpr"},
     "constexprs" {NAME: value}, "num_warps", "num_stages", "dtype", "flops", "bytes",
     optional "attrs" {(arg index,): [["tt.divisibility", 16]]}, optional "arch" / "archs"}

:func:`compile_spec` runs ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32), ...)`` (no
driver needed), then the Triton wheel's bundled ``ptxas -v`` on the PTX for the resource report
(registers, spill bytes, stack) and ``cuobjdump -sass`` on the cubin for the SASS matrix instructions.

* MMA kind comes from the PTX: ``wgmma.mma_async`` -> "wgmma" (Hopper warpgroup MMA; SASS ``HGMMA``),
  ``mma.sync`` -> "mma" (Ampere-style; SASS ``HMMA``), else "none".
* Pointer arguments are assumed 16-byte aligned (``tt.divisibility`` 16), as Triton's JIT specialises
  them for torch allocations, unless the spec brings its own ``attrs``.
* Archs: a spec naming its target (``"arch": 90`` / ``"archs": [80, 90]``, or ``-sm90-`` / ``-sm80-`` in its
  name: a config tuned for one arch) is compiled for that arch only; otherwise for sm_80 and sm_90.
* Under ``TRITON_INTERPRET=1`` (the CPU test suite) ``@triton.jit`` yields interpreter functions that
  cannot be compiled: :func:`compile_op_specs` compiles in fresh processes with the variable removed.

API differences handled (Triton 3.0 - 3.9): ``ASTSource(constexprs=...)`` (>= 3.2) or ``constants=``
(older, signature without constexpr entries); ``get_ptxas(arch)`` (3.5+: the newer ``ptxas-blackwell``
binary for sm_90+) or ``knobs.nvidia.ptxas`` or the bundled ``bin/`` folder; each candidate ptxas is
tried until one accepts the PTX version.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_ARCHS = (80, 90)


def spec_archs(spec: Dict[str, Any], archs: Sequence[int] = DEFAULT_ARCHS) -> List[int]:
    """The archs a spec is compiled for (see the module docstring)."""
    if spec.get("archs"):
        return [int(a) for a in spec["archs"]]
    if spec.get("arch"):
        return [int(spec["arch"])]
    m = re.search(r"(?:^|[-_])sm_?(\d{2,3})a?(?:[-_]|$)", spec.get("name", ""))
    if m:
        return [int(m.group(1))]
    return list(archs)


def _gpu_name(arch: int) -> str:
    return "sm_90a" if arch == 90 else f"sm_{arch}"


def _ptxas_candidates(arch: int) -> List[str]:
    import triton

    cands: List[str] = []
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        cands.append(get_ptxas(arch).path)
    except Exception:  # noqa: BLE001 - older Triton
        pass
    try:
        from triton import knobs

        for t in ("ptxas_blackwell", "ptxas") if arch >= 90 else ("ptxas", "ptxas_blackwell"):
            tool = getattr(knobs.nvidia, t, None)
            if tool is not None and getattr(tool, "path", None):
                cands.append(tool.path)
    except Exception:  # noqa: BLE001
        pass
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for n in (("ptxas-blackwell", "ptxas") if arch >= 90 else ("ptxas", "ptxas-blackwell")):
        cands.append(os.path.join(bindir, n))
    if os.environ.get("TRITON_PTXAS_PATH"):
        cands.insert(0, os.environ["TRITON_PTXAS_PATH"])
    seen, out = set(), []
    for c in cands:
        if c and c not in seen and os.path.exists(c):
            seen.add(c)
            out.append(c)
    return out


def ptxas_report(ptx: str, arch: int) -> Dict[str, Any]:
    """``ptxas -v`` on the PTX: registers, spill stores/loads (bytes), stack frame; which ptxas ran."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        errs = []
        for exe in _ptxas_candidates(arch):
            for extra in (["--regAllocOptLevel=2"], []):  # Triton 3.9 passes this flag; older ptxas lack it
                cmd = [exe, "-v", *extra, f"--gpu-name={_gpu_name(arch)}", src, "-o", os.path.join(d, "k.cubin")]
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                except Exception as e:  # noqa: BLE001
                    errs.append(f"{os.path.basename(exe)}: {e}")
                    break
                log = r.stdout + r.stderr
                if r.returncode == 0:
                    return _parse_ptxas(log) | {"ptxas_ok": True, "ptxas": os.path.basename(exe), "ptxas_log": log}
                errs.append(f"{os.path.basename(exe)} {' '.join(extra)}: {log.strip()[-300:]}")
                if "regAllocOptLevel" not in log and "Unknown option" not in log:
                    break  # not a flag problem: try the next binary
        return {"ptxas_ok": False, "registers": None, "spill_stores": None, "spill_loads": None, "spills": None,
                "stack": None, "ptxas": None, "ptxas_log": "\n".join(errs)[-2000:]}


def _parse_ptxas(log: str) -> Dict[str, Any]:
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    st = [int(x) for x in re.findall(r"(\d+) bytes spill stores", log)]
    ld = [int(x) for x in re.findall(r"(\d+) bytes spill loads", log)]
    stack = [int(x) for x in re.findall(r"(\d+) bytes stack frame", log)]
    spill_st, spill_ld = (max(st) if st else 0), (max(ld) if ld else 0)
    return {"registers": max(regs) if regs else None, "spill_stores": spill_st, "spill_loads": spill_ld,
            "spills": spill_st + spill_ld, "stack": max(stack) if stack else 0}


def sass_mma(cubin: bytes) -> Optional[Dict[str, int]]:
    """Counts of HGMMA / HMMA lines in the SASS (``cuobjdump -sass``), or None without cuobjdump."""
    import triton

    exe = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(exe) or not cubin:
        return None
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.cubin")
        with open(p, "wb") as f:
            f.write(cubin)
        try:
            r = subprocess.run([exe, "-sass", p], capture_output=True, text=True, timeout=120)
        except Exception:  # noqa: BLE001
            return None
        if r.returncode != 0:
            return None
        lines = r.stdout.splitlines()
        return {"HGMMA": sum("HGMMA" in x for x in lines), "HMMA": sum(" HMMA" in x for x in lines)}


def mma_kind(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "none"


def _make_source(spec: Dict[str, Any], attrs):
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    sig = dict(spec["signature"])
    kw = {}
    if "constexprs" in params:
        kw["constexprs"] = dict(spec.get("constexprs") or {})
    else:  # Triton < 3.2: constants=..., and the signature lists only runtime arguments
        kw["constants"] = dict(spec.get("constexprs") or {})
        sig = {k: v for k, v in sig.items() if v != "constexpr"}
    if attrs is not None and "attrs" in params:
        kw["attrs"] = attrs
    return ASTSource(fn=spec["fn"], signature=sig, **kw)


def _default_attrs(spec: Dict[str, Any]):
    return {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(spec["signature"].items())
            if isinstance(v, str) and v.startswith("*")}


def compile_spec(spec: Dict[str, Any], arch: int) -> Dict[str, Any]:
    """Compile one spec for ``arch`` (80 or 90) with no GPU; never raises.

    Returns ``{registers, spills (bytes: spill stores + loads), spill_stores, spill_loads, stack,
    shared_mem (bytes, dynamic), mma ("wgmma" | "mma" | "none"), sass (HGMMA/HMMA counts or None),
    ptxas_ok, error, compile_s}`` plus the spec's identifying fields.
    """
    out: Dict[str, Any] = {"op": spec.get("op"), "name": spec.get("name"), "arch": int(arch),
                           "dtype": spec.get("dtype"), "num_warps": spec.get("num_warps"),
                           "num_stages": spec.get("num_stages"), "flops": spec.get("flops"),
                           "bytes": spec.get("bytes"), "registers": None, "spills": None, "spill_stores": None,
                           "spill_loads": None, "stack": None, "shared_mem": None, "mma": None, "sass": None,
                           "ptxas_ok": False, "ptxas": None, "error": None, "compile_s": None}
    t0 = time.perf_counter()
    try:
        import triton
        from triton.backends.compiler import GPUTarget

        fn = spec["fn"]
        if type(fn).__name__ == "InterpretedFunction":
            raise RuntimeError("the kernel was built under TRITON_INTERPRET=1; compile in a process without it "
                               "(compile_op_specs does)")
        attrs = spec.get("attrs")
        if attrs is None:
            attrs = _default_attrs(spec)
        target = GPUTarget("cuda", int(arch), 32)
        options = {"num_warps": int(spec["num_warps"]), "num_stages": int(spec["num_stages"])}
        try:
            k = triton.compile(_make_source(spec, attrs), target=target, options=options)
        except TypeError:  # an attrs format this Triton does not take: compile without alignment hints
            k = triton.compile(_make_source(spec, None), target=target, options=options)
        ptx = k.asm["ptx"]
        out["mma"] = mma_kind(ptx)
        out["shared_mem"] = int(getattr(k.metadata, "shared", 0) or 0)
        rep = ptxas_report(ptx, int(arch))
        log = rep.pop("ptxas_log", "")
        out.update(rep)
        if not rep["ptxas_ok"]:
            out["error"] = "ptxas failed: " + log[-500:]
        out["sass"] = sass_mma(k.asm.get("cubin", b""))
    except Exception as e:  # noqa: BLE001 - the report says what failed
        msg = str(e).strip().splitlines()
        out["error"] = f"{type(e).__name__}: " + (" | ".join(msg[:3]) + (" ..." if len(msg) > 3 else ""))[:800]
    out["compile_s"] = round(time.perf_counter() - t0, 2)
    return out


# --------------------------------------------------------------------------------------------------
# Whole ops, in clean worker processes
# --------------------------------------------------------------------------------------------------

_SPEC_CACHE: Dict[str, List[Dict[str, Any]]] = {}


def load_specs(op: str) -> List[Dict[str, Any]]:
    """``deepencoder.kernels.<op>.triton.aot_specs()``; raises ImportError / AttributeError if missing."""
    if op not in _SPEC_CACHE:
        import importlib

        mod = importlib.import_module(f"deepencoder.kernels.{op}.triton")
        _SPEC_CACHE[op] = list(mod.aot_specs())
    return _SPEC_CACHE[op]


def _compile_jobs(jobs: Sequence[Tuple[str, int, int]]) -> List[Dict[str, Any]]:
    import warnings

    warnings.filterwarnings("ignore")
    out = []
    for op, idx, arch in jobs:
        try:
            spec = load_specs(op)[idx]
        except Exception as e:  # noqa: BLE001
            out.append({"op": op, "name": f"#{idx}", "arch": arch, "error": f"{type(e).__name__}: {e}",
                        "ptxas_ok": False})
            continue
        out.append(compile_spec(spec, arch))
    return out


def _worker_main() -> None:
    """``python -m deepencoder.kernels._aot --worker``: jobs (JSON) on stdin, results (JSON) on stdout."""
    import json
    import sys

    jobs = [tuple(j) for j in json.load(sys.stdin)]
    res = _compile_jobs(jobs)
    sys.stdout.write("\n@@AOT-RESULTS@@\n" + json.dumps(res, default=str) + "\n")


def compile_op_specs(ops: Sequence[str], archs: Sequence[int] = DEFAULT_ARCHS, workers: int = 2,
                     force_archs: bool = False, timeout: float = 1800.0) -> Dict[str, Any]:
    """Compile every spec of every op in fresh worker processes (``TRITON_INTERPRET`` removed).

    Returns ``{"results": [...], "missing": {op: reason}}``; an op without ``aot_specs()`` (or with an
    empty list) is in ``missing``. Results come back in job order (op, spec index, arch).
    """
    import json
    import sys

    jobs, missing = [], {}
    for op in ops:
        try:
            specs = load_specs(op)
        except Exception as e:  # noqa: BLE001
            missing[op] = f"{type(e).__name__}: {e}"
            continue
        if not specs:
            missing[op] = "aot_specs() returned no specs"
        for i, s in enumerate(specs):
            for a in (list(archs) if force_archs else spec_archs(s, archs)):
                jobs.append((op, i, int(a)))
    if not jobs:
        return {"results": [], "missing": missing}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    n = max(1, min(workers, len(jobs)))
    chunks = [jobs[i::n] for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "deepencoder.kernels._aot", "--worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in chunks]
    by_job: Dict[Tuple, Dict[str, Any]] = {}
    for p, chunk in zip(procs, chunks):
        p.stdin.write(json.dumps(chunk))
        p.stdin.close()
    for p, chunk in zip(procs, chunks):
        try:
            stdout = p.stdout.read()
            stderr = p.stderr.read()
            p.wait(timeout=timeout)
        except Exception as e:  # noqa: BLE001
            p.kill()
            stdout, stderr = "", str(e)
        res = None
        if "@@AOT-RESULTS@@" in stdout:
            res = json.loads(stdout.split("@@AOT-RESULTS@@", 1)[1])
        if res is None or len(res) != len(chunk):
            res = [{"op": op, "name": f"#{i}", "arch": a, "ptxas_ok": False,
                    "error": f"worker failed (rc {p.returncode}): {stderr.strip()[-500:]}"} for op, i, a in chunk]
        for j, r in zip(chunk, res):
            by_job[j] = r
    return {"results": [by_job[j] for j in jobs], "missing": missing}


if __name__ == "__main__":
    import sys as _sys

    if "--worker" in _sys.argv:
        _worker_main()
