"""Corpus pipeline benchmark: pages/s of ``encode-corpus``'s local engine with and without overlap, the
share of time the encoder waits for input, and peak memory at N and 10 N pages (flat = bounded queue).

    python -m bench.pipeline                       # CPU: small config, mode tiny, 24 pages (a few minutes)
    python -m bench.pipeline --real --mode base --pages 200 --workers 8   # GPU: the real encoder

Each row runs in a fresh subprocess (so peak RSS is that run's alone) on a generated corpus: A4 PDFs at
150 dpi (JPEG-compressed page images, as scans are) of 4 pages each. Rows: ``variant`` (serial: decode,
preprocess, encode one after another on one thread; overlap: decode worker processes + preprocess thread +
encoder), ``pages``, ``seconds``, ``pages_per_s``, ``encoder_wait_share`` (1 - encoder busy time / wall
time), ``startup_s`` (decode workers' spawn and imports, paid once, outside ``seconds``), ``peak_rss_mb``
(main process, VmHWM), ``peak_rss_children_mb`` (largest decode worker; ru_maxrss, which on Linux also
counts the parent's size when the worker was forked: an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def make_corpus(folder: str, pages: int, per_doc: int = 4) -> None:
    from PIL import Image

    from deepencoder.preprocess import sample_page

    os.makedirs(folder, exist_ok=True)
    for d in range(0, pages, per_doc):
        ims = [Image.fromarray(sample_page(seed=d + i)) for i in range(min(per_doc, pages - d))]
        ims[0].save(os.path.join(folder, f"doc{d // per_doc:05d}.pdf"), save_all=True, append_images=ims[1:],
                    resolution=150, quality=90)


def child(args) -> None:
    import torch

    from deepencoder.corpus import CorpusOptions, run_corpus
    from deepencoder.corpus.local import PipelineStats

    if args.threads:
        torch.set_num_threads(args.threads)
    stats = PipelineStats()
    opts = CorpusOptions(inputs=[args.corpus], out=args.out, mode=args.mode,
                         config="deepseek-ocr" if args.real else "small-test", batch_pages=args.batch_pages,
                         shard_pages=args.shard_pages, workers=args.workers, overlap=args.variant == "overlap",
                         progress_interval=-1, device=args.device)
    rc = run_corpus(opts, log=lambda m: None, stats=stats)
    print(json.dumps({"rc": rc, "pages": stats.pages, "seconds": round(stats.elapsed, 3),
                      "pages_per_s": round(stats.pages / stats.elapsed, 3),
                      "encoder_wait_share": round(stats.wait_share, 3), "startup_s": round(stats.startup, 2),
                      "peak_rss_mb": _peak_rss_mb(),
                      "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                                    * _KIB / 2**20, 1)}))


_KIB = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux: VmHWM, not ru_maxrss: ru_maxrss survives execve, so a child
    started from a big parent would report the parent's size at fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB / 2**20, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=24, help="N (the memory row also runs 10 N)")
    ap.add_argument("--mode", default="tiny")
    ap.add_argument("--real", action="store_true", help="the real DeepSeek-OCR encoder (default: small test config)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-pages", type=int, default=4)
    ap.add_argument("--shard-pages", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the encoder (0: default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the 10 N memory row")
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="overlap", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepencoder-pipeline-") as tmp:
        runs = [("serial", args.pages), ("overlap", args.pages)]
        if not args.no_memory:
            runs.append(("overlap", 10 * args.pages))
        for variant, n in runs:
            corpus = os.path.join(tmp, f"corpus{n}")
            if not os.path.exists(corpus):
                make_corpus(corpus, n)
            out = os.path.join(tmp, f"out-{variant}-{n}")
            cmd = [sys.executable, "-m", "bench.pipeline", "--child", "--variant", variant, "--corpus", corpus,
                   "--out", out, "--mode", args.mode, "--workers", str(args.workers), "--batch-pages",
                   str(args.batch_pages), "--shard-pages", str(args.shard_pages), "--threads", str(args.threads)]
            cmd += ["--real"] if args.real else []
            cmd += ["--device", args.device] if args.device else []
            res = subprocess.run(cmd, capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            row = {"variant": variant, "mode": args.mode, "config": "deepseek-ocr" if args.real else "small-test",
                   "workers": args.workers if variant == "overlap" else 0, "batch_pages": args.batch_pages,
                   **json.loads(res.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ["variant", "pages", "workers", "pages_per_s", "encoder_wait_share", "peak_rss_mb", "peak_rss_children_mb"]
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
