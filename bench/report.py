"""Outputs of a run: long-format JSON, a markdown table, PNG plots, and ``--compare`` of two runs.

Files (``--out DIR --name STEM``): ``STEM.json`` (a JSON array, one object per row, rewritten after every
row so a killed run keeps what it measured), ``STEM.md``, ``STEM-throughput.png`` (images/s against batch,
one line per provider, one panel per mode), ``STEM-roofline.png`` (one panel per op: achieved TFLOP/s
against arithmetic intensity under this run's measured ceilings).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

KEY_FIELDS = ("kind", "op", "mode", "shape", "batch", "provider", "dtype")
PROVIDER_ORDER = ("upstream", "reference", "reference-compile", "upstream-compile", "flex", "library", "fast",
                  "fast-graphs", "flash-nobias")
COLORS = {"upstream": "tab:gray", "reference": "tab:blue", "reference-compile": "tab:purple",
          "upstream-compile": "tab:pink", "fast": "tab:orange", "fast-graphs": "tab:red", "flash-nobias": "tab:green",
          "flex": "tab:brown", "library": "tab:olive"}
# issue 13's end-to-end targets for the OCR-2 page row (1024 + 6 crops, 8 pages, bf16 on a GPU)
OCR2_TARGETS = {"upstream": 2.5, "upstream-compile": 1.3}


def ordered(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Peaks first, then cases in first-seen order, providers in PROVIDER_ORDER within a case."""
    first: Dict[Tuple, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(tuple(r.get(k) for k in KEY_FIELDS[:5]), i)

    def key(ir):
        i, r = ir
        if r.get("kind") == "peak":
            return (0, i, 0, 0)
        p = r.get("provider")
        return (1, first[tuple(r.get(k) for k in KEY_FIELDS[:5])],
                PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else len(PROVIDER_ORDER), i)

    return [r for _, r in sorted(enumerate(rows), key=key)]


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------


def write_json(rows: List[Dict[str, Any]], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1, default=str, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def load_rows(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of benchmark rows")
    return data


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _f(v, fmt="{:.3g}", none="–"):
    if v is None:
        return none
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return none
    return fmt.format(v)


def provenance_line(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    r = rows[0]
    dirty = " (dirty tree)" if r.get("git_dirty") else ""
    return (f"device **{r.get('device')}** (driver {r.get('driver')}), torch {r.get('torch')}, triton "
            f"{r.get('triton')}, flash-attn {r.get('flash_attn')}, commit `{str(r.get('git_commit'))[:12]}`"
            f"{dirty}, host {r.get('host')}, {r.get('timestamp')}, config {r.get('config', '?')}")


def timing_label(rows: List[Dict[str, Any]]) -> str:
    labels = sorted({r.get("timing") for r in rows if r.get("timing")})
    cpu = any(str(x).startswith("cpu") for x in labels)
    s = "timing: " + ", ".join(labels)
    if cpu:
        s += " — **CPU timing**: says the code runs, not how fast a GPU runs it"
    return s


def markdown(rows: List[Dict[str, Any]], title: str = "deepencoder benchmark") -> str:
    rows = ordered(rows)
    peaks = [r for r in rows if r.get("kind") == "peak"]
    body = [r for r in rows if r.get("kind") != "peak"]
    out = [f"## {title}", "", provenance_line(rows), "", timing_label(rows), ""]
    if peaks:
        out.append("Measured ceilings (this run): " + "; ".join(
            f"{p['op']} {p['shape']}: " + (f"{p['tflops']:.3g} TFLOP/s" if p.get("tflops") else
                                           f"{p['gbps']:.3g} GB/s (read+write)") for p in peaks))
        out.append("")
    out.append("| kind | op / mode | shape | B | provider | dtype | status | p50 ms (p20–p80) | img/s | TFLOP/s "
               "| % peak | GB/s | mem MB | rel err | note |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in body:
        what = r["op"] if r["kind"] == "op" else (r.get("mode") or r["op"])
        if r["kind"] == "op" and r.get("mode"):
            what += f" ({r['mode']})"
        ms = "–" if r.get("ms_p50") is None else \
            f"{r['ms_p50']:.3g} ({r['ms_p20']:.3g}–{r['ms_p80']:.3g})"
        note = r.get("reason") if r.get("status") != "ok" else (r.get("op_backends") or "")
        note = (note or "").replace("|", "/").replace("\n", " ")[:120]
        out.append(f"| {r['kind']} | {what} | {r['shape']} | {r['batch']} | {r['provider']} | {r['dtype']} | "
                   f"{r['status']} | {ms} | {_f(r.get('images_per_s'))} | {_f(r.get('tflops'))} | "
                   f"{_f(r.get('pct_peak_tflops'), '{:.1f}')} | {_f(r.get('gbps'))} | "
                   f"{_f(r.get('mem_peak_mb'), '{:.0f}', 'n/a')} | {_f(r.get('rel_err'), '{:.1e}')} | {note} |")
    out.append("")
    o2 = ocr2_e2e_summary(rows)
    if o2:
        out += ["### DeepSeek-OCR 2 end to end", "",
                "Family `ocr2` rows only (never mixed with OCR-1's). `upstream` is the reference with upstream's "
                "per-token mask loop; speed-ups are of the best of fast / fast-graphs. Page rows: pages/s of a "
                "1024 global view + crops of 768.", "",
                "| mode | shape | B | upstream ms | upstream-compile ms | fast ms | fast-graphs ms | best "
                "img(page)/s | vs eager | vs compile |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in o2:
            ms = [_f(c["ms"].get(p), "{:.3g}", c["status"].get(p, "–"))
                  for p in ("upstream", "upstream-compile", "fast", "fast-graphs")]
            out.append(f"| {c['mode']} | {c['shape']} | {c['batch']} | " + " | ".join(ms) +
                       f" | {_f(c['best_per_s'], '{:.3g}')} | {_f(c['vs']['upstream'], '{:.2f}x')} | "
                       f"{_f(c['vs']['upstream-compile'], '{:.2f}x')} |")
        out.append("")
    out.append("rel err = ||out − ref|| / ||ref|| against the high-precision oracle (float32 on CUDA with TF32 "
               "off, float64 on the CPU); a provider over its bound is `failed` and was never timed. "
               "TFLOP/s and GB/s use the cost model in bench/flops.py (minimum bytes); % peak is against "
               "this run's measured matmul rate.")
    return "\n".join(out) + "\n"


def is_ocr2(r: Dict[str, Any]) -> bool:
    """A DeepSeek-OCR 2 end-to-end row (the family field, or an ``ocr2`` mode in rows written before it)."""
    return r.get("kind") == "e2e" and (r.get("family") == "ocr2" or "ocr2" in str(r.get("mode") or ""))


def ocr2_e2e_summary(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per OCR-2 end-to-end case: p50 and status per provider, the best of fast / fast-graphs (images or
    pages per s) and its speed-up over upstream eager and over upstream compiled (None where not measured)."""
    cases: Dict[Tuple, Dict[str, Dict[str, Any]]] = {}
    for r in ordered(rows):
        if is_ocr2(r):
            cases.setdefault((r.get("mode"), r.get("shape"), r.get("batch"), r.get("dtype")), {})[r["provider"]] = r
    out = []
    for (mode, shape, batch, dtype), by in cases.items():
        ms = {p: r.get("ms_p50") for p, r in by.items() if r.get("status") == "ok" and r.get("ms_p50")}
        fast = [p for p in ("fast", "fast-graphs") if p in ms]
        best = min(fast, key=lambda p: ms[p]) if fast else None
        vs = {b: (ms[b] / ms[best] if best and b in ms else None) for b in ("upstream", "upstream-compile")}
        out.append({"mode": mode, "shape": shape, "batch": batch, "dtype": dtype, "ms": ms,
                    "status": {p: r.get("status") for p, r in by.items()}, "best": best,
                    "best_per_s": by[best].get("images_per_s") if best else None, "vs": vs,
                    "pages": "gundam" in str(mode), "timing": next(iter(by.values())).get("timing", "")})
    return out


def ocr2_summary_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """The OCR-2 block of the GPU suite's summary: fast vs upstream eager vs upstream compiled."""
    o2 = ocr2_e2e_summary(rows)
    if not o2:
        return []
    lines = ["", "DeepSeek-OCR 2 end to end (family ocr2): p50 ms; best = faster of fast, fast-graphs; "
             f"page-row targets: >= {OCR2_TARGETS['upstream']}x eager, >= {OCR2_TARGETS['upstream-compile']}x compile",
             f"{'case':<40}{'upstream':>11}{'up-compile':>11}{'fast':>11}{'fast-graphs':>12}{'best/s':>10}"
             f"{'vs eager':>10}{'vs compile':>11}"]
    for c in o2:
        cells = "".join(f"{_f(c['ms'].get(p), '{:.2f}', (c['status'].get(p) or '–')[:6]):>{w}}"
                        for p, w in (("upstream", 11), ("upstream-compile", 11), ("fast", 11), ("fast-graphs", 12)))
        unit = "pg/s" if c["pages"] else "img/s"
        per_s = f"{c['best_per_s']:.1f} {unit}" if c["best_per_s"] else "–"
        line = (f"{(str(c['mode']) + ' ' + str(c['shape']))[:40]:<40}{cells}{per_s:>10}"
                f"{_f(c['vs']['upstream'], '{:.2f}x'):>10}{_f(c['vs']['upstream-compile'], '{:.2f}x'):>11}")
        if c["pages"] and not str(c["timing"]).startswith("cpu"):
            met = [f"{'met' if c['vs'][b] >= t else 'NOT met'} vs {b}" for b, t in OCR2_TARGETS.items()
                   if c["vs"][b] is not None]
            line += "  " + (", ".join(met) if met else "targets not measured")
        lines.append(line)
    notes = {r.get("note") for r in rows if is_ocr2(r) and r.get("provider") == "upstream-compile" and r.get("note")}
    lines += [f"up-compile = {n}" for n in sorted(notes)]
    if any(str(c["timing"]).startswith("cpu") for c in o2):
        lines.append("(CPU timing: says the code runs, not how fast a GPU runs it)")
    return lines


def short_table(rows: List[Dict[str, Any]]) -> str:
    """One line per case, printed last by the GPU suite: p50 per provider, speed-up of the best fast
    provider over the baseline (``upstream`` per op and OCR-2 end to end, ``reference`` OCR-1 end to end),
    its images/s and % peak; then the OCR-2 end-to-end block (:func:`ocr2_summary_lines`)."""
    rows = ordered(rows)
    cases: Dict[Tuple, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind") != "peak":
            cases.setdefault(tuple(r.get(k) for k in KEY_FIELDS[:5]), {})[r["provider"]] = r
    cols = ("upstream", "reference", "reference-compile", "upstream-compile", "flex", "library", "fast",
            "fast-graphs", "flash-nobias")
    short = {"reference-compile": "ref-compile", "upstream-compile": "up-compile", "flash-nobias": "flash-nobia"}
    head = f"{'case':<40}" + "".join(f"{short.get(c, c):>12}" for c in cols) + f"{'speed-up':>10}{'img/s':>9}{'%peak':>6}  not ok"
    lines = ["p50 ms per provider; speed-up = baseline / best of fast, fast-graphs", head]
    for (kind, op, mode, shape, _b), by in cases.items():
        what = (op if kind == "op" else str(mode)) + " " + str(shape)
        cells = "".join(f"{_f(by[c].get('ms_p50'), '{:.3f}') if c in by and by[c].get('status') == 'ok' else ('–' if c not in by else by[c]['status'][:6]):>12}" for c in cols)
        base = by.get("upstream" if kind == "op" or "upstream" in by else "reference", {}).get("ms_p50")
        fast = [by[c] for c in ("fast", "fast-graphs") if c in by and by[c].get("ms_p50")]
        best = min(fast, key=lambda r: r["ms_p50"]) if fast else None
        sp = base / best["ms_p50"] if best and base else None
        bad = ",".join(f"{p}:{r['status']}" for p, r in by.items() if r.get("status") not in ("ok", "unavailable"))
        fb = [p for p, r in by.items() if "=torch" in str(r.get("op_backends") or "")
              and str(r.get("timing", "")).startswith("cuda")]
        if fb:  # on a GPU the fast path should not have fallen back to an op's torch backend
            bad = ",".join(filter(None, [bad] + [f"{p}:torch-fallback" for p in fb]))
        lines.append(f"{what[:40]:<40}{cells}{_f(sp, '{:.3g}x'):>10}{_f(best and best.get('images_per_s'), '{:.1f}'):>9}"
                     f"{_f(best and best.get('pct_peak_tflops'), '{:.0f}'):>6}  {bad}")
    return "\n".join(lines + ocr2_summary_lines(rows))


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def plots(rows: List[Dict[str, Any]], out_dir: str, stem: str) -> Optional[List[str]]:
    """Write the throughput and roofline PNGs; returns their paths (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except Exception:  # noqa: BLE001
        return None
    paths = []
    cpu = any(str(r.get("timing", "")).startswith("cpu") for r in rows)
    tag = " (CPU timing)" if cpu else f" ({rows[0].get('device', '')})" if rows else ""
    ok = [r for r in rows if r.get("status") == "ok"]

    e2e = [r for r in ok if r["kind"] == "e2e"]
    modes = list(dict.fromkeys(r["mode"] for r in e2e))
    if modes:
        n = len(modes)
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
        for ax, m in zip(axes[0], modes):
            for p in dict.fromkeys(r["provider"] for r in e2e if r["mode"] == m):
                pts = sorted((r["batch"], r["images_per_s"]) for r in e2e if r["mode"] == m and r["provider"] == p)
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p, color=COLORS.get(p))
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xticks(sorted({r["batch"] for r in e2e if r["mode"] == m}))
            ax.set_title(m)
            ax.set_xlabel("batch")
            ax.set_ylabel("pages/s" if "gundam" in m else "images/s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("throughput vs batch" + tag)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{stem}-throughput.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    opr = [r for r in ok if r["kind"] == "op" and r.get("bytes") and r.get("tflops")]
    ops = list(dict.fromkeys(r["op"] for r in opr))
    pk_tf = next((r.get("peak_tflops") for r in rows if r.get("peak_tflops")), None)
    pk_gb = next((r.get("peak_gbps") for r in rows if r.get("peak_gbps")), None)
    if ops:
        n = len(ops)
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
        for ax, op in zip(axes[0], ops):
            rs = [r for r in opr if r["op"] == op]
            ai = [r["flops"] / r["bytes"] for r in rs]
            if pk_tf and pk_gb:
                lo, hi = min(ai) / 10, max(ai) * 10
                xs = [lo * (hi / lo) ** (i / 63) for i in range(64)]
                ax.plot(xs, [min(pk_tf, x * pk_gb / 1e3) for x in xs], "k-", lw=1, label="measured roof")
            for p in dict.fromkeys(r["provider"] for r in rs):
                pts = [(r["flops"] / r["bytes"], r["tflops"]) for r in rs if r["provider"] == p]
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=18, label=p, color=COLORS.get(p))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yscale("log")
            ax.set_title(op)
            ax.set_xlabel("FLOP / minimum byte")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle("roofline per op" + tag)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{stem}-roofline.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------------
# Compare
# --------------------------------------------------------------------------------------------------


def row_key(r: Dict[str, Any]) -> Tuple:
    return tuple(r.get(k) for k in KEY_FIELDS)


def compare(a: Iterable[Dict[str, Any]], b: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Match rows by (kind, op, mode, shape, batch, provider, dtype); ratios are B / A.

    ``p50_ratio`` = B.ms_p50 / A.ms_p50 (< 1: B is faster); ``throughput_ratio`` = B.images_per_s /
    A.images_per_s (> 1: B is faster); None where either side has no number (not ok).
    """
    da = {row_key(r): r for r in a if r.get("kind") != "peak"}
    db = {row_key(r): r for r in b if r.get("kind") != "peak"}
    matched = []
    for k in da:
        if k not in db:
            continue
        ra, rb = da[k], db[k]
        pa, pb = ra.get("ms_p50"), rb.get("ms_p50")
        ta, tb = ra.get("images_per_s"), rb.get("images_per_s")
        matched.append({"key": dict(zip(KEY_FIELDS, k)), "status_a": ra.get("status"), "status_b": rb.get("status"),
                        "p50_a": pa, "p50_b": pb, "p50_ratio": pb / pa if pa and pb else None,
                        "throughput_a": ta, "throughput_b": tb,
                        "throughput_ratio": tb / ta if ta and tb else None})
    only_a = [dict(zip(KEY_FIELDS, k)) for k in da if k not in db]
    only_b = [dict(zip(KEY_FIELDS, k)) for k in db if k not in da]
    return {"matched": matched, "only_a": only_a, "only_b": only_b}


def format_compare(res: Dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    lines = [f"B = {name_b}, A = {name_a}; p50 ratio B/A (< 1: B faster), throughput ratio B/A (> 1: B faster)",
             f"{'kind':<5} {'op/mode':<22} {'shape':<28} {'B':>4} {'provider':<18} {'dtype':<9} "
             f"{'p50 A':>9} {'p50 B':>9} {'p50 B/A':>8} {'thr B/A':>8}"]
    for m in res["matched"]:
        k = m["key"]
        what = k["op"] if k["kind"] != "e2e" else (k.get("mode") or k["op"])
        lines.append(f"{k['kind']:<5} {str(what)[:22]:<22} {str(k['shape'])[:28]:<28} {k['batch']:>4} "
                     f"{k['provider']:<18} {k['dtype']:<9} {_f(m['p50_a'], '{:.3f}', m['status_a']):>9} "
                     f"{_f(m['p50_b'], '{:.3f}', m['status_b']):>9} {_f(m['p50_ratio'], '{:.3f}'):>8} "
                     f"{_f(m['throughput_ratio'], '{:.3f}'):>8}")
    for name, lst in ((name_a, res["only_a"]), (name_b, res["only_b"])):
        if lst:
            lines.append(f"only in {name} ({len(lst)}):")
            lines += ["  " + " ".join(f"{k}={v}" for k, v in d.items()) for d in lst]
    return "\n".join(lines)


def write_all(rows: List[Dict[str, Any]], out_dir: str, stem: str, title: Optional[str] = None) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    jp = os.path.join(out_dir, f"{stem}.json")
    write_json(rows, jp)
    mp = os.path.join(out_dir, f"{stem}.md")
    with open(mp, "w") as f:
        f.write(markdown(rows, title or f"deepencoder benchmark: {stem}"))
    pngs = plots(rows, out_dir, stem)
    if pngs is None:
        note = ("\n_No plots: matplotlib is not installed here. Re-render on a machine that has it: "
                f"`python -m bench --report {stem}.json`._\n")
        with open(mp, "a") as f:
            f.write(note)
        print(note.strip())
    return [jp, mp] + (pngs or [])
