"""``python -m bench.aot --out bench/results``: ahead-of-time compile report for every kernel config.

Compiles every spec of every op's ``aot_specs()`` for sm_80 and sm_90 (no GPU needed; see
``kernels/_aot.py``) and writes ``aot_report.json`` and ``aot_report.md``: registers, spill bytes, stack,
shared memory, MMA kind (PTX) and SASS matrix instructions, plus a roofline PREDICTION per spec from its
flops and minimum bytes at H100 figures: 790 TFLOP/s dense bf16 (measured on an H100) and 3.35 TB/s HBM3
(nominal). Predictions are floors, not measurements.

``--versioned`` names the files after the Triton that compiled them (``aot_report-triton3.6.json`` / ``.md``),
so reports from the CI's Triton and the GPU machine's older one sit side by side (``make aot-compat``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import sys
import time
from typing import Any, Dict, List, Optional

OPS = ("sam_attention", "compressor", "add_layernorm", "flow_attention", "add_rmsnorm", "swiglu")
MMA_OPS = ("sam_attention", "compressor", "flow_attention")  # ops whose kernels must use tensor cores
NO_MMA_SPECS = ("flow_attention-rope_qk",)  # the library route's RoPE pass: elementwise, no matmul
H100_TFLOPS = 790.0  # dense bf16, measured on an H100 (a large bf16 matmul)
H100_TBPS = 3.35  # HBM3, nominal


def predict(flops: Optional[float], nbytes: Optional[float]) -> Dict[str, Any]:
    """Roofline floor at H100 figures: max(flops / 790 TFLOP/s, bytes / 3.35 TB/s)."""
    if not flops and not nbytes:
        return {"pred_ms": None, "pred_bound": None, "pred_compute_ms": None, "pred_memory_ms": None,
                "intensity": None}
    tc = (flops or 0.0) / (H100_TFLOPS * 1e12) * 1e3
    tm = (nbytes or 0.0) / (H100_TBPS * 1e12) * 1e3
    return {"pred_ms": max(tc, tm), "pred_bound": "compute" if tc >= tm else "memory", "pred_compute_ms": tc,
            "pred_memory_ms": tm, "intensity": (flops / nbytes) if flops and nbytes else None}


def _ptxas_versions() -> Dict[str, str]:
    import subprocess

    from deepencoder.kernels._aot import _ptxas_candidates

    out = {}
    for arch in (80, 90):
        for exe in _ptxas_candidates(arch)[:1]:
            try:
                v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
                out[f"sm_{arch}"] = f"{os.path.basename(exe)} " + (v.strip().splitlines()[-2] if v else "?")
            except Exception as e:  # noqa: BLE001
                out[f"sm_{arch}"] = f"unknown ({e})"
    return out


def build_report(ops=OPS, workers: int = 2, force_archs: bool = False) -> Dict[str, Any]:
    import triton
    from deepencoder.kernels._aot import compile_op_specs

    from .measure import git_commit

    t0 = time.perf_counter()
    res = compile_op_specs(list(ops), workers=workers, force_archs=force_archs)
    specs = []
    for r in res["results"]:
        r = dict(r)
        r.update(predict(r.get("flops"), r.get("bytes")))
        specs.append(r)
    meta = {"kind": "aot_report", "triton": triton.__version__, "ptxas": _ptxas_versions(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "python": platform.python_version(), **git_commit(),
            "prediction": {"label": "PREDICTION (roofline floor, not a measurement)",
                           "tflops": H100_TFLOPS, "tbps": H100_TBPS,
                           "source": "790 TFLOP/s dense bf16 measured on an H100; 3.35 TB/s HBM3 nominal"},
            "wall_s": round(time.perf_counter() - t0, 1), "missing": res["missing"]}
    return {"meta": meta, "specs": specs}


def problems(report: Dict[str, Any]) -> List[str]:
    """What the AOT test asserts, as messages: compile errors, spills, fp16/bf16 matmul ops without MMA."""
    out = [f"{op}: no specs ({why})" for op, why in report["meta"].get("missing", {}).items()]
    for r in report["specs"]:
        tag = f"{r.get('name')} sm_{r.get('arch')}"
        if r.get("error") or not r.get("ptxas_ok"):
            out.append(f"{tag}: {r.get('error') or 'ptxas failed'}")
            continue
        if r.get("spills"):
            out.append(f"{tag}: {r['spills']} bytes of spills ({r.get('spill_stores')} st + {r.get('spill_loads')} ld)")
        if r.get("op") in MMA_OPS and r.get("dtype") in ("fp16", "bf16") and r.get("mma") == "none" \
                and not str(r.get("name", "")).startswith(NO_MMA_SPECS):
            out.append(f"{tag}: no mma/wgmma in the PTX")
    return out


def per_op(report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """One prediction per (op, stage/mode) from the spec names (``op-stage-...``); fp16 and bf16 specs and the
    configs of one stage describe the same work (same flops and bytes)."""
    out: Dict[str, Dict[str, Any]] = {}
    for r in report["specs"]:
        if r.get("pred_ms") is None:
            continue
        parts = str(r.get("name", "")).split("-")
        label = "-".join(parts[:2]) if len(parts) > 2 else str(r.get("op"))
        out.setdefault(label, r)
    return out


def markdown(report: Dict[str, Any]) -> str:
    m = report["meta"]
    lines = ["## Ahead-of-time compile report (no GPU: Triton AOT + bundled ptxas)", "",
             f"triton {m['triton']}, ptxas {', '.join(f'{k}: {v}' for k, v in m['ptxas'].items())}, commit "
             f"`{str(m.get('git_commit'))[:12]}`, {m['timestamp']}, host {m['host']}", "",
             f"**{m['prediction']['label']}**: floor = max(flops / {m['prediction']['tflops']:.0f} TFLOP/s, "
             f"min bytes / {m['prediction']['tbps']} TB/s) at each spec's stated shape "
             f"({m['prediction']['source']}).", ""]
    if m.get("missing"):
        lines += [f"- **{op}: no aot_specs()** ({why})" for op, why in m["missing"].items()] + [""]
    lines += ["### Roofline prediction per op (H100 figures; PREDICTION)", "",
              "| op / stage | flops | min bytes | FLOP/byte | compute floor ms | memory floor ms | predicted ms "
              "| bound |", "|---|---|---|---|---|---|---|---|"]
    for label, r in per_op(report).items():
        lines.append(f"| {label} | {r['flops']:.3g} | {r['bytes']:.3g} | {r['intensity'] or 0:.0f} | "
                     f"{r['pred_compute_ms']:.3f} | {r['pred_memory_ms']:.3f} | {r['pred_ms']:.3f} | {r['pred_bound']} |")
    lines += ["", "### Every spec", ""]
    lines.append("| spec | arch | warps/stages | regs | spills B | stack B | smem KiB | MMA (PTX) | SASS HGMMA/HMMA "
                 "| predicted ms | bound | status |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["specs"]:
        sass = r.get("sass") or {}
        sass_s = f"{sass.get('HGMMA', '–')}/{sass.get('HMMA', '–')}" if sass else "–"
        status = "ok" if (r.get("ptxas_ok") and not r.get("error") and not r.get("spills")) else \
            ("SPILLS" if r.get("ptxas_ok") and not r.get("error") else "ERROR: " + str(r.get("error"))[:80])
        smem = f"{r['shared_mem'] / 1024:.0f}" if r.get("shared_mem") is not None else "–"
        pred = f"{r['pred_ms']:.3f}" if r.get("pred_ms") is not None else "–"
        lines.append(f"| {r.get('name')} | sm_{r.get('arch')} | {r.get('num_warps')}/{r.get('num_stages')} | "
                     f"{r.get('registers', '–')} | {r.get('spills', '–')} | {r.get('stack', '–')} | {smem} | "
                     f"{r.get('mma', '–')} | {sass_s} | {pred} | {r.get('pred_bound') or '–'} | {status} |")
    probs = problems(report)
    lines += ["", f"Problems ({len(probs)}):" if probs else "Problems: none (every spec compiles, no spills, "
              "MMA present where expected)."]
    lines += [f"- {p}" for p in probs]
    return "\n".join(lines) + "\n"


def report_stem(triton_version: str) -> str:
    """``aot_report-triton3.6`` for Triton ``3.6.0`` (major.minor: patch releases compile alike)."""
    parts = str(triton_version).split("+")[0].split(".")
    return "aot_report-triton" + ".".join(parts[:2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--all-archs", action="store_true",
                   help="compile arch-specific configs (-sm90- / -sm80- in the name) for both archs too")
    p.add_argument("--versioned", action="store_true",
                   help="name the files aot_report-triton<major>.<minor>.json/.md (default aot_report.json/.md)")
    a = p.parse_args(argv)
    rep = build_report([o for o in a.ops.split(",") if o], a.workers, a.all_archs)
    os.makedirs(a.out, exist_ok=True)
    stem = report_stem(rep["meta"]["triton"]) if a.versioned else "aot_report"
    with open(os.path.join(a.out, f"{stem}.json"), "w") as f:
        json.dump(rep, f, indent=1, default=str)
        f.write("\n")
    md = markdown(rep)
    with open(os.path.join(a.out, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)
    return 1 if problems(rep) and os.environ.get("DEEPENCODER_AOT_STRICT") == "1" else 0


if __name__ == "__main__":
    sys.exit(main())
