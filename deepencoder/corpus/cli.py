"""``deepencoder encode-corpus``: argument parsing and the command (registered by deepencoder.cli)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..sources import DEFAULT_DPI
from .job import MODELS, CorpusError, CorpusOptions, Terminated, run_corpus


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n // 2))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("encode-corpus", help="encode folders of PDFs/images into resumable token shards",
                       description="Encode PDFs and images into token shards plus a Parquet manifest. "
                       "Rerun the same command to resume. Exit: 0 done, 1 some pages failed, 2 usage error, "
                       "3 stopped on an error, 130 Ctrl-C, 143 SIGTERM.")
    p.add_argument("inputs", nargs="+", help="files, folders, globs, doc.pdf:3-7 page ranges, @list.txt")
    p.add_argument("--out", required=True, help="output folder (shards, manifest, run.json)")
    p.add_argument("--mode", default=None, help="tiny|small|base|large|gundam (ocr2: base|gundam); "
                   "default: the family's (ocr1 base, ocr2 gundam)")
    p.add_argument("--model", default="auto", choices=list(MODELS),
                   help="model family: ocr1 = DeepSeek-OCR, ocr2 = DeepSeek-OCR 2 (default: from --weights, else ocr1)")
    p.add_argument("--pages", default=None, help="pages of every multi-page document, e.g. 1-5,9")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="PDF render resolution (upstream: 144)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--max-tiles", type=int, default=None, help="Gundam tile MAX (default: the family's)")
    p.add_argument("--shard-pages", type=int, default=256, help="pages per shard (rounded up to whole batches)")
    p.add_argument("--shard-bytes", type=int, default=0, help="also close a shard at this many token bytes")
    p.add_argument("--batch-pages", type=int, default=8, help="pages per encoder batch (all their tiles)")
    p.add_argument("--workers", type=int, default=_default_workers(), help="decode worker processes")
    p.add_argument("--queue-depth", type=int, default=4, help="chunks in flight per stage (memory bound)")
    p.add_argument("--no-overlap", action="store_true", help="run the stages one after another (baseline)")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=1, help="Ray encoder actors")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 when the cluster has GPUs")
    p.add_argument("--cpu-tasks", type=int, default=2, help="Ray render/preprocess tasks in parallel")
    p.add_argument("--threads", type=int, default=None, help="torch threads of a CPU encoder (default: torch's; "
                   "CPU results are bit-identical only at equal thread counts)")
    p.add_argument("--store-dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="dtype of stored tokens (default: the encoder's)")
    p.add_argument("--progress-interval", type=float, default=10.0,
                   help="seconds between progress lines when stderr is not a terminal")
    p.add_argument("--weights", default=None, help="DeepSeek-OCR checkpoint; default: seeded RANDOM weights")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "fast"])
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--cuda-graphs", action="store_true", help="capture the fast path with CUDA graphs")
    p.add_argument("--config", default="deepseek-ocr", choices=["deepseek-ocr", "small-test"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_encode_corpus)
    return p


def options_from_args(args) -> CorpusOptions:
    return CorpusOptions(
        inputs=list(args.inputs), out=args.out, mode=args.mode, max_tiles=args.max_tiles, dpi=args.dpi,
        pages=args.pages, recursive=args.recursive, shard_pages=args.shard_pages, shard_bytes=args.shard_bytes,
        batch_pages=args.batch_pages, workers=args.workers, depth=args.queue_depth, overlap=not args.no_overlap,
        model=args.model, config=args.config, weights=args.weights, seed=args.seed, backend=args.backend,
        device=args.device, dtype=args.dtype, store_dtype=args.store_dtype, cuda_graphs=args.cuda_graphs,
        engine=args.engine, address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
        cpu_tasks=args.cpu_tasks, threads=args.threads, progress_interval=args.progress_interval)


def cmd_encode_corpus(args) -> int:
    if args.dpi < 1:
        return _user_error(f"--dpi must be >= 1, got {args.dpi}")
    def on_term(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)  # a scheduler's stop: same clean exit as Ctrl-C
    try:
        return run_corpus(options_from_args(args))
    except CorpusError as e:
        return _user_error(str(e))
    except KeyboardInterrupt as e:  # before the pipeline started (planning, loading weights)
        print("deepencoder: interrupted before the encoder started; nothing written", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, old)


def _user_error(msg: str) -> int:
    # printed here, not raised as deepencoder.cli.CLIError: under ``python -m deepencoder.cli`` that
    # module is __main__ and its CLIError is another class
    print(f"deepencoder: error: {msg}", file=sys.stderr)
    return 2
