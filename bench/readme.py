"""``python -m bench.readme``: the README performance section, generated from ``bench/results/``.

Reads every ``bench/results/*.json`` (top level only): benchmark runs (JSON arrays of rows, see
``bench/schema.json``) and the AOT report (``aot_report.json``). Writes the block between
``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in README.md; prints the block to stdout when the
markers are missing (``--print`` always prints and writes nothing).

What the block says about each figure:

* GPU measurements: runs whose rows have ``device_kind == "cuda"``, with device, driver, torch / triton /
  flash-attn versions and the commit measured, per run.
* Predictions: the AOT report's roofline floors (H100 figures), labelled PREDICTION, with registers,
  spills and MMA kind from the compiler.
* CPU runs are listed only as such: CPU timing, not performance evidence.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def load_results(results_dir: str) -> Tuple[List[Tuple[str, List[Dict[str, Any]]]], Optional[Dict[str, Any]]]:
    """(runs as (file name, rows), AOT report or None). Unreadable files are skipped with a note on stderr."""
    runs, aot = [], None
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except Exception as e:  # noqa: BLE001
            print(f"bench.readme: skipping {path}: {e}", file=sys.stderr)
            continue
        if isinstance(data, dict) and data.get("meta", {}).get("kind") == "aot_report":
            # aot_report.json is CI's Triton; aot_report-triton<X.Y>.json (make aot-compat) are other versions
            if os.path.basename(path) == "aot_report.json":
                aot = data
        elif isinstance(data, list) and data and isinstance(data[0], dict) and "kind" in data[0]:
            runs.append((os.path.basename(path), data))
    return runs, aot


def _f(v, fmt="{:.3g}"):
    return "–" if v is None else fmt.format(v)


def _gpu_run_section(name: str, rows: List[Dict[str, Any]]) -> List[str]:
    r0 = rows[0]
    peaks = {r["op"]: r for r in rows if r.get("kind") == "peak"}
    mm = next((p for k, p in peaks.items() if k.startswith("matmul")), None)
    cp = peaks.get("copy")
    out = [f"#### GPU measurement: {r0.get('device')} (`{name}`)", "",
           f"Driver {r0.get('driver')}, torch {r0.get('torch')}, triton {r0.get('triton')}, flash-attn "
           f"{r0.get('flash_attn')}, CUDA {r0.get('cuda_runtime')}, commit `{str(r0.get('git_commit'))[:12]}`, "
           f"{r0.get('timestamp')}, dtype {next((r['dtype'] for r in rows if r.get('kind') == 'e2e'), '?')}, "
           f"timing {r0.get('timing')}. Measured ceilings in the same run: "
           f"{_f(mm and mm.get('tflops'), '{:.0f}')} TFLOP/s ({mm['op'] if mm else 'matmul'}), "
           f"{_f(cp and cp.get('gbps'), '{:.0f}')} GB/s copy.", ""]
    from .report import is_ocr2

    e2e = [r for r in rows if r.get("kind") == "e2e"]
    out += _e2e_table([r for r in e2e if not is_ocr2(r)], ("reference", "reference-compile", "fast", "fast-graphs"),
                      "reference", "End to end (images/s; Gundam: pages/s of a 2x3-tile page; speed-up over "
                      "`reference`):")
    out += _e2e_table([r for r in e2e if is_ocr2(r)], ("upstream", "upstream-compile", "fast", "fast-graphs"),
                      "upstream", "##### DeepSeek-OCR 2 end to end\n\nFamily `ocr2` (images/s; `ocr2-gundam`: pages/s of "
                      "a 1024 global view + 3x2 crops of 768, 1121 tokens; `upstream` runs upstream's per-token "
                      "mask loop; speed-up of the best fast row over `upstream` and over `upstream-compile`):",
                      second="upstream-compile")
    ops = [r for r in rows if r.get("kind") == "op"]
    if ops:
        provs = [p for p in ("upstream", "reference", "fast", "fast-graphs", "flash-nobias")
                 if any(r["provider"] == p for r in ops)]
        out += ["Per op (p50 ms; `upstream` materialises the bias, `flash-nobias` is SDPA-flash with no bias "
                "at the same shape):", "", "| op | shape | " + " | ".join(provs) + " | fast vs upstream |",
                "|---|---|" + "---|" * len(provs) + "---|"]
        for op, shape in dict.fromkeys((r["op"], r["shape"]) for r in ops):
            by = {r["provider"]: r for r in ops if r["op"] == op and r["shape"] == shape}
            cells = [(_f(by[p].get("ms_p50"), "{:.3f}") if by[p].get("status") == "ok" else by[p]["status"])
                     if p in by else "–" for p in provs]
            u, f = by.get("upstream", {}).get("ms_p50"), by.get("fast", {}).get("ms_p50")
            out.append(f"| {op} | {shape} | " + " | ".join(cells) + f" | {f'{u / f:.2f}x' if u and f else '–'} |")
        out.append("")
    bad = [r for r in rows if r.get("status") in ("failed", "error", "oom")]
    if bad:
        out.append(f"Not measured in this run ({len(bad)} rows): " + "; ".join(
            f"{r['op']}/{r.get('mode') or ''} {r['shape']} {r['provider']}: {r['status']}" for r in bad[:8])
            + (" ..." if len(bad) > 8 else ""))
        out.append("")
    return out


def _e2e_table(e2e: List[Dict[str, Any]], providers: Tuple[str, ...], base: str, title: str,
               second: Optional[str] = None) -> List[str]:
    """One end-to-end table (images/s per provider) with the best fast row's speed-up over ``base`` (and over
    ``second`` when given); nothing when there are no rows."""
    if not e2e:
        return []
    provs = [p for p in providers if any(r["provider"] == p for r in e2e)]
    heads = ["speed-up"] if second is None else [f"vs {base}", f"vs {second}"]
    out = [title, "", "| mode | batch | " + " | ".join(provs) + " | " + " | ".join(heads) + " |",
           "|---|---|" + "---|" * (len(provs) + len(heads))]
    for mode, b in dict.fromkeys((r["mode"], r["batch"]) for r in e2e):
        cells, by = [], {r["provider"]: r for r in e2e if r["mode"] == mode and r["batch"] == b}
        for p in provs:
            r = by.get(p)
            cells.append(_f(r.get("images_per_s"), "{:.1f}") if r and r.get("status") == "ok"
                         else (r["status"] if r else "–"))
        best = max((by[p]["images_per_s"] for p in ("fast", "fast-graphs")
                    if p in by and by[p].get("status") == "ok" and by[p].get("images_per_s")), default=None)
        sps = []
        for k in [base] + ([second] if second else []):
            ref = by.get(k, {}).get("images_per_s") if by.get(k, {}).get("status") == "ok" else None
            sps.append(f"{best / ref:.2f}x" if best and ref else "–")
        out.append(f"| {mode} | {b} | " + " | ".join(cells) + " | " + " | ".join(sps) + " |")
    out.append("")
    return out


def _aot_section(aot: Dict[str, Any]) -> List[str]:
    from .aot import per_op, problems

    m = aot["meta"]
    out = ["#### PREDICTIONS (no GPU): ahead-of-time compile report", "",
           f"From `bench/results/aot_report.json` (`python -m bench.aot`): triton {m.get('triton')}, commit "
           f"`{str(m.get('git_commit'))[:12]}`, {m.get('timestamp')}. Predicted times are roofline floors at "
           f"H100 figures ({m['prediction']['tflops']:.0f} TFLOP/s bf16 dense measured, "
           f"{m['prediction']['tbps']} TB/s HBM3 nominal): **predictions, not measurements**.", "",
           "| op / stage | predicted ms | bound | sm_90 regs / spills / MMA | sm_80 regs / spills / MMA |",
           "|---|---|---|---|---|"]
    specs = aot.get("specs", [])
    for label, r in per_op(aot).items():
        def arch_cell(a, label=label):
            rs = [s for s in specs if "-".join(str(s.get("name", "")).split("-")[:2]) == label
                  and s.get("arch") == a and s.get("ptxas_ok")]
            if not rs:
                return "–"
            return (f"{min(s['registers'] for s in rs)}–{max(s['registers'] for s in rs)} / "
                    f"{max(s['spills'] for s in rs)} B / {'/'.join(sorted({s['mma'] for s in rs}))}")
        out.append(f"| {label} | {r['pred_ms']:.3f} | {r['pred_bound']} | {arch_cell(90)} | {arch_cell(80)} |")
    probs = problems(aot)
    out += ["", f"Compiler-report problems: {len(probs)}" + (" (see `bench/results/aot_report.md`)." if probs else "."), ""]
    return out


def render(results_dir: str) -> str:
    runs, aot = load_results(results_dir)
    gpu = [(n, rows) for n, rows in runs if any(r.get("device_kind") == "cuda" for r in rows)]
    cpu = [(n, rows) for n, rows in runs if (n, rows) not in gpu]
    out = ["### Performance", "", "_Generated by `python -m bench.readme` from `bench/results/`; do not edit by hand._",
           ""]
    if gpu:
        for n, rows in gpu:
            out += _gpu_run_section(n, [r for r in rows if r.get("device_kind") == "cuda"])
    else:
        out += ["**No GPU measurements are committed yet.** Run `bash bench/gpu_suite.sh OUT` on a GPU machine "
                "and copy `OUT/bench.json` to `bench/results/<device>.json` (and `OUT/bench-ocr2.json`, the DeepSeek-OCR "
                "2 end-to-end rows, to `bench/results/<device>-ocr2.json`); until then every figure below is "
                "a prediction.", ""]
    if aot:
        out += _aot_section(aot)
    if cpu:
        out += ["CPU runs in `bench/results/` (" + ", ".join(f"`{n}`" for n, _ in cpu) + ") are **CPU timing**: "
                "they show the suite runs, not how fast a GPU runs the encoder.", ""]
    out.append("Reproduce: `bash bench/gpu_suite.sh OUT` (GPU), `python -m bench --smoke` (CPU), "
               "`python -m bench.aot --out bench/results` (compiler report).")
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme: str, block: str) -> bool:
    """Replace the text between the markers; False (file untouched) when the markers are missing."""
    with open(readme) as f:
        text = f.read()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < 0 or j < i:
        return False
    new = text[:i + len(BEGIN)] + "\n" + block + text[j:]
    if new != text:
        with open(readme, "w") as f:
            f.write(new)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    p.add_argument("--print", action="store_true", help="print the block, write nothing")
    a = p.parse_args(argv)
    block = render(a.results)
    if a.print or not os.path.exists(a.readme) or not update_readme(a.readme, block):
        if not a.print:
            print(f"bench.readme: no {BEGIN} / {END} markers in {a.readme}; the block:", file=sys.stderr)
        print(block)
    else:
        print(f"bench.readme: updated {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
