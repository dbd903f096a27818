"""``python -m bench``: run the benchmark matrix, compare runs, re-render reports.

Examples::

    python -m bench --smoke --out /tmp/smoke                 # CPU, tiny sizes, every code path, ~1 min
    python -m bench --out bench/results --name h100 --batches 1,8,32 --compile base --budget-s 270
    python -m bench --family ocr2 --ocr2-pages 8              # DeepSeek-OCR 2 rows only (flow attention, e2e)
    python -m bench --compare bench/results/a.json bench/results/b.json
    python -m bench --report OUT/bench.json                  # markdown + plots again from a JSON
    python -m bench --validate OUT/bench.json                # check rows against bench/schema.json

Exit status: 1 when any row is ``failed`` (a provider over its correctness bound, or a non-finite output)
or ``error`` (a provider raised); every row is still written and listed. ``--allow-failures`` reports
them and exits 0 (exploratory runs).

Defaults (no ``--smoke``): the real encoder configs, CUDA if present, bfloat16 on CUDA / float32 on CPU,
per-op grids G = 32, 40, 64, 80 (window 14 and global) and CLIP g = 8, 10, 16, 20, end-to-end modes tiny,
small, base, large, gundam at batches 1, 8, 32 (Gundam pages 1, 4, 8); DeepSeek-OCR 2 (``--family``): flow
attention at n = 144, 256, end-to-end ``ocr2-base`` (1024 global view) at 1, 8, 32 and ``ocr2-gundam``
(1024 + 3x2 crops of 768) at 1, 8 pages; every provider, compile rows at Base shapes and the 8-page OCR-2
row only (``--compile all`` for every shape, ``--no-compile`` for none).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional


def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, small test config: every code path on a CPU")
    p.add_argument("--out", default=None, help="output folder (default bench/results; smoke: a temp folder)")
    p.add_argument("--name", default=None, help="file stem (default bench-<device>-<time>)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--ops", type=_strs, default=None,
                   help="sam_window_attention,sam_global_attention,compressor,clip_attention,flow_attention ('' = none)")
    p.add_argument("--grids", type=_ints, default=None, help="SAM grids G (default 32,40,64,80)")
    p.add_argument("--clip-grids", type=_ints, default=None, help="CLIP token grids g (default 8,10,16,20)")
    p.add_argument("--family", choices=("ocr1", "ocr2", "all"), default="all",
                   help="model family whose default ops and modes run (ocr1 DeepSeek-OCR, ocr2 DeepSeek-OCR 2)")
    p.add_argument("--modes", type=_strs, default=None,
                   help="tiny,small,base,large,gundam,ocr2-base,ocr2-gundam ('' = none)")
    p.add_argument("--e2e-order", choices=("batch", "listed"), default="batch",
                   help="end-to-end cases by batch, small first (default), or in --modes order, then by batch")
    p.add_argument("--batches", type=_ints, default=None, help="end-to-end batches (default 1,8,32)")
    p.add_argument("--gundam-batches", type=_ints, default=None, help="Gundam pages per call (default 1,4,8)")
    p.add_argument("--ocr2-batches", type=_ints, default=None, help="OCR-2 global views per call (default 1,8,32)")
    p.add_argument("--ocr2-pages", type=_ints, default=None, help="OCR-2 pages (1024 + 6 crops) per call (default 1,8)")
    p.add_argument("--providers", type=_strs, default=None, help="subset of providers (default all)")
    p.add_argument("--compile", choices=("none", "base", "all"), default=None,
                   help="which rows get reference-compile (default base: Base shapes only; it compiles slowly)")
    p.add_argument("--no-compile", action="store_true", help="same as --compile none")
    p.add_argument("--compile-mode", default="max-autotune")
    p.add_argument("--compile-inline", action="store_true",
                   help="run each compile row right after its case, not after all cases (a budget cut then drops "
                        "the later cases instead of the compile rows)")
    p.add_argument("--compile-backend", default=None, help="inductor (default; smoke: eager)")
    p.add_argument("--op-tokens", type=int, default=None, help="per-op batch = op_tokens // G^2 (default 32768)")
    p.add_argument("--target-ms", type=float, default=None, help="measured time per row (default 200)")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--input-sets", type=int, default=3, help="input sets rotated while timing (>= 3)")
    p.add_argument("--check-batch", type=int, default=1, help="batch of the correctness check")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting rows after this many seconds")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (smoke default 1: on a loaded 2-core box, OpenMP barriers stall)")
    p.add_argument("--timer", choices=("events", "do_bench"), default="events")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print B/A ratios and exit")
    p.add_argument("--report", metavar="RUN.json", help="re-render markdown and plots from a JSON and exit")
    p.add_argument("--validate", metavar="RUN.json", help="validate a JSON against bench/schema.json and exit")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when a provider fails its correctness check or raises (default: exit 1)")
    p.add_argument("--quiet", action="store_true")
    return p


def exit_status(rows, allow_failures: bool = False, stream=None) -> int:
    """1 when any row is ``failed`` or ``error`` (each named on ``stream``), unless ``allow_failures``."""
    bad = [r for r in rows if r.get("status") in ("failed", "error")]
    stream = stream or sys.stderr
    for r in bad:
        print(f"{r['status'].upper()}: {r['kind']} {r['op']} {r.get('mode') or ''} {r['shape']} {r['provider']}: "
              f"{(r.get('reason') or '')[:200]}", file=stream)
    if not bad:
        return 0
    if allow_failures:
        print(f"{len(bad)} row(s) failed; exit 0 because of --allow-failures", file=stream)
        return 0
    print(f"{len(bad)} row(s) failed (see above); --allow-failures exits 0 anyway", file=stream)
    return 1


def options(args):
    """The run's options from parsed arguments: ``(opts for bench.suite, (target_ms, min_reps, warmup))``."""
    from deepencoder.config import DeepEncoderConfig, DeepEncoderV2Config

    from .suite import FAMILY_MODES, FAMILY_OPS

    if args.input_sets < 3:
        raise SystemExit("--input-sets must be >= 3 (rotating inputs keep caches from flattering)")
    opts = {"input_sets": args.input_sets, "check_batch": args.check_batch, "budget_s": args.budget_s,
            "compile_mode": args.compile_mode, "grid_modes": {32: "tiny", 40: "small", 64: "base", 80: "large"},
            "clip_modes": {8: "tiny", 10: "small", 16: "base", 20: "large"},
            "flow_modes": {144: "ocr2-tile", 256: "ocr2-global"}}
    fams = ("ocr1", "ocr2") if args.family == "all" else (args.family,)
    if args.smoke:
        # Triton kernels run under the interpreter here (~5 ms per program step): the op rows run them at
        # a 6x6 grid (window 4: padded to 8, four windows); end to end, ops take their torch backends.
        # OCR-2 end to end: the small V2 config at the real view sides (its query tables fix 1024 / 768),
        # one global view and one page of 2 crops, ~25 s on one CPU thread.
        smoke_modes = {"ocr1": ("smoke-tiny", "smoke-gundam"), "ocr2": ("smoke-ocr2-base", "smoke-ocr2-gundam")}
        opts.update(config=DeepEncoderConfig.small_test(), config_v2=DeepEncoderV2Config.small_test(),
                    grids=(6,), op_window=4, clip_grids=(4,),
                    modes=sum((smoke_modes[f] for f in fams), ()), batches=(1, 2), gundam_batches=(1,),
                    ocr2_batches=(1,), ocr2_pages=(1,), op_tokens=36,
                    compile="base", compile_modes=("smoke", "smoke-tiny", "smoke-ocr2-gundam"),
                    compile_backend="eager", quick_peaks=True, e2e_torch_ops=True,
                    grid_modes={6: "smoke"}, clip_modes={4: "smoke"},
                    flow_ns=(9,), flow_heads=(4, 2, 64), flow_modes={9: "smoke"})
        target, min_reps, warmup = 15.0, 3, 1
    else:
        opts.update(batches=(1, 8, 32), gundam_batches=(1, 4, 8), ocr2_batches=(1, 8, 32), ocr2_pages=(1, 8),
                    compile="base", compile_backend="inductor", modes=sum((FAMILY_MODES[f] for f in fams), ()))
        target, min_reps, warmup = 200.0, 5, 3
    opts["ops"] = sum((FAMILY_OPS[f] for f in fams), ())
    for k in ("ops", "grids", "clip_grids", "modes", "batches", "gundam_batches", "ocr2_batches", "ocr2_pages",
              "providers", "op_tokens", "compile", "compile_backend"):
        v = getattr(args, k)
        if v is not None:
            opts[k] = tuple(v) if isinstance(v, list) else v
    if args.no_compile:
        opts["compile"] = "none"
    opts["compile_inline"] = args.compile_inline
    opts["e2e_order"] = args.e2e_order
    return opts, (target, min_reps, warmup)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from . import report

    if args.compare:
        from .report import compare, format_compare, load_rows

        a, b = args.compare
        print(format_compare(compare(load_rows(a), load_rows(b)), a, b))
        return 0
    if args.validate:
        from .schema import validate_rows

        rows = report.load_rows(args.validate)
        validate_rows(rows)
        print(f"{args.validate}: {len(rows)} rows valid")
        return 0
    if args.report:
        rows = report.load_rows(args.report)
        out = os.path.dirname(os.path.abspath(args.report))
        stem = os.path.splitext(os.path.basename(args.report))[0]
        paths = report.write_all(rows, out, stem)
        print("\n".join(paths))
        print(report.short_table(rows))
        return 0

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":  # Triton kernels run under the interpreter on a CPU; set before they import
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from deepencoder.config import DeepEncoderConfig, DeepEncoderV2Config
    from deepencoder.encoder import resolve_dtype

    from .measure import Timer
    from .schema import validate_rows
    from .suite import dtype_name, run_suite

    dtype = resolve_dtype(args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    opts, (target, min_reps, warmup) = options(args)
    fams = ("ocr1", "ocr2") if args.family == "all" else (args.family,)
    threads = args.threads or (1 if args.smoke and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    timer = Timer(device, target_ms=args.target_ms or target, min_reps=args.min_reps or min_reps,
                  warmup=args.warmup if args.warmup is not None else warmup, method=args.timer)

    out = args.out
    if out is None:
        if args.smoke:
            import tempfile

            out = tempfile.mkdtemp(prefix="deepencoder-bench-smoke-")
        else:
            out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results")
    os.makedirs(out, exist_ok=True)
    stem = args.name or f"bench-{'smoke-' if args.smoke else ''}{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
    jpath = os.path.join(out, f"{stem}.json")
    t0 = time.monotonic()

    def on_row(row, rows):
        report.write_json(rows, jpath)  # rewritten after every row: a killed run keeps its rows
        if not args.quiet:
            ms = f"{row['ms_p50']:.3f} ms" if row.get("ms_p50") else (row.get("reason") or "")[:90]
            print(f"[{time.monotonic() - t0:6.1f}s] {row['kind']:<4} {row['op']:<22} {str(row.get('mode') or ''):<8} "
                  f"{row['shape']:<30} {row['provider']:<18} {row['status']:<11} {ms}", flush=True)

    cfgs = {"ocr1": (opts.get("config") or DeepEncoderConfig.deepseek_ocr()).name,
            "ocr2": (opts.get("config_v2") or DeepEncoderV2Config.deepseek_ocr2()).name}
    print(f"deepencoder bench: device {device}, dtype {dtype_name(dtype)}, config "
          f"{', '.join(cfgs[f] for f in fams)}, timing {timer.label}, out {out}", flush=True)
    rows = run_suite(opts, device, dtype, timer, on_row=on_row)
    try:
        validate_rows(rows)
    except FileNotFoundError as e:  # an installed wheel without package data: the rows are still written
        print(f"warning: rows not validated: {e}", file=sys.stderr)
    paths = report.write_all(rows, out, stem)
    print()
    print("\n".join(paths))
    print()
    print(report.short_table(rows))
    return exit_status(rows, args.allow_failures)


if __name__ == "__main__":
    sys.exit(main())
