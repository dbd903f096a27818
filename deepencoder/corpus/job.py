"""One corpus job, whatever the engine: plan → run.json check → resume → encode → shards → summary.

Exit codes of :func:`run_corpus`: 0 all pages encoded; 1 some pages failed (listed in the summary and
in the manifest); 3 the run stopped on an error (e.g. CUDA out of memory; finished shards kept);
130 Ctrl-C, 143 SIGTERM (finished shards kept, rerun to resume). User errors raise
:class:`CorpusError` (one line; the CLI turns it into exit 2).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .. import modes as _modes
from ..progress import Progress
from ..sources import DEFAULT_DPI
from . import store
from .plan import Plan

MODELS = ("auto", "ocr1", "ocr2")


@dataclass(frozen=True)
class StageOptions:
    """What the stages need (picklable: travels to Ray tasks and actors)."""

    dpi: int
    mode: str
    max_tiles: int
    family: str
    store_dtype: object  # torch.dtype


class CorpusError(Exception):
    """A user error: one clear line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job), handled like Ctrl-C; exit 143 instead of 130."""


@dataclass
class CorpusOptions:
    """Everything ``encode-corpus`` takes (see ``deepencoder encode-corpus --help``)."""

    inputs: List[str]
    out: str
    mode: Optional[str] = None  # None: the family's default (ocr1 base, ocr2 gundam)
    max_tiles: Optional[int] = None  # None: the family's default (9 ocr1, 6 ocr2)
    dpi: int = DEFAULT_DPI
    pages: Optional[str] = None
    recursive: bool = False
    shard_pages: int = 256
    shard_bytes: int = 0  # 0: no byte limit
    batch_pages: int = 8
    workers: int = 2
    depth: int = 4
    overlap: bool = True
    model: str = "auto"  # "auto": from the checkpoint's keys, else ocr1
    config: str = "deepseek-ocr"
    weights: Optional[str] = None
    seed: int = 0
    backend: str = "auto"
    device: Optional[str] = None
    dtype: Optional[str] = None
    store_dtype: Optional[str] = None
    cuda_graphs: bool = False
    engine: str = "local"
    address: Optional[str] = None
    actors: int = 1
    gpus_per_actor: Optional[float] = None
    cpu_tasks: int = 2
    threads: Optional[int] = None  # torch threads of a CPU encoder (None: torch's default)
    progress_interval: float = 10.0
    resolved: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.model


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve(opts: CorpusOptions, cuda: Optional[bool] = None) -> dict:
    """Device, dtypes and backend as the encoder will resolve them (without loading weights)."""
    import torch

    if cuda is None:
        cuda = (opts.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    device = "cuda" if cuda else (opts.device or "cpu")
    dtype = opts.dtype or ("bfloat16" if cuda else "float32")
    backend = opts.backend if opts.backend != "auto" else ("fast" if cuda else "reference")
    return {"device": device, "dtype": dtype, "backend": backend, "store_dtype": opts.store_dtype or dtype}


def resolve_mode(opts: CorpusOptions) -> None:
    """Fill ``opts.mode`` / ``opts.max_tiles`` from the family's defaults where the package has them
    (``modes.DEFAULT_MODE``, ``Mode.max_tiles``), checking the mode against the family."""
    if opts.mode is None:
        opts.mode = _modes.DEFAULT_MODE[opts.model]
    try:
        m = _modes.get_mode(opts.mode, family=opts.model)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    opts.mode = m.name
    if opts.max_tiles is None:
        opts.max_tiles = m.max_tiles


def resolve_model(opts: CorpusOptions) -> None:
    """``opts.model`` "auto" -> the checkpoint's family (its keys), else ocr1; a checkpoint of the other
    family than the one asked for is a one-line error (before run.json is written)."""
    from ..encoder import resolve_family

    if opts.model not in MODELS:
        raise CorpusError(f"unknown --model {opts.model!r}: choose one of {', '.join(MODELS)}")
    try:
        opts.model = resolve_family(None if opts.model == "auto" else opts.model, None, opts.weights)
    except (ValueError, FileNotFoundError) as e:
        raise CorpusError(f"--weights: {e}") from None


def build_encoder(opts: CorpusOptions, device: Optional[str] = None):
    """The encoder for ``opts`` (weights loaded once). ``--model`` goes to ``DeepEncoder(family=...)``."""
    import warnings

    from .. import config as _config
    from ..encoder import DeepEncoder

    kw = {"family": opts.model}
    cfg = _config.family_config(opts.model, small=True) if opts.config == "small-test" else None
    r = opts.resolved or resolve(opts)
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    with warnings.catch_warnings():  # the run prints its own random-weights notice (and records it)
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        return DeepEncoder(config=cfg, weights=opts.weights, device=device or r["device"], dtype=r["dtype"],
                           backend=opts.backend, seed=opts.seed, cuda_graphs=opts.cuda_graphs, **kw)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_options(opts: CorpusOptions, plan: Plan) -> dict:
    r = opts.resolved
    return {"inputs": [os.fspath(x) for x in opts.inputs], "inputs_digest": plan.digest(), "pages": opts.pages,
            "dpi": opts.dpi, "mode": opts.mode, "max_tiles": opts.max_tiles, "model": opts.model,
            "config": opts.config, "weights": store.weights_fingerprint(opts.weights, opts.seed),
            "backend": r["backend"], "device": r["device"].split(":")[0], "dtype": r["dtype"],
            "store_dtype": r["store_dtype"], "batch_pages": opts.batch_pages, "shard_pages": opts.shard_pages,
            "shard_bytes": opts.shard_bytes}


class ShardAssembler:
    """Collects chunk results (in plan order) and commits a shard at the first chunk boundary where it holds
    ``shard_pages`` pages or ``shard_bytes`` token bytes, and at the corpus end."""

    def __init__(self, out_dir: str, first_shard: int, total: int, n_embed: Optional[int], store_dtype,
                 shard_pages: int, shard_bytes: int, on_rows=None):
        self.out_dir, self.k, self.total = out_dir, first_shard, total
        self.n_embed, self.dtype = n_embed, store_dtype
        self.shard_pages, self.shard_bytes, self.on_rows = shard_pages, shard_bytes, on_rows
        self._reset()

    def _reset(self):
        self.rows, self.tokens, self.offset, self.bytes = [], [], 0, 0

    def __call__(self, rows, tokens) -> None:
        name = store.shard_name(self.k)
        it = iter(tokens)
        for r in rows:
            r["shard"] = name
            if r["status"] == "ok":
                t = next(it)
                self.n_embed = t.shape[1]
                r["offset"] = self.offset
                self.offset += t.shape[0]
                self.bytes += t.numel() * t.element_size()
        self.rows += rows
        self.tokens += list(tokens)
        if self.on_rows is not None:
            self.on_rows(rows)
        if (len(self.rows) >= self.shard_pages or (self.shard_bytes and self.bytes >= self.shard_bytes)
                or rows[-1]["index"] == self.total - 1):
            store.write_shard(self.out_dir, self.k, self.rows, self.tokens, self.n_embed or 0, self.dtype)
            self.k += 1
            self._reset()


def _summary(out_dir: str, seconds: float, new_pages: int, log) -> int:
    import pyarrow.compute as pc

    t = store.read_manifest(out_dir)
    failed = t.filter(pc.not_equal(t["status"], "ok"))
    n, nf = t.num_rows, failed.num_rows
    shards = len(set(t["shard"].to_pylist()))
    rate = f", {new_pages / seconds:.2f} pages/s" if new_pages and seconds > 0 else ""
    log(f"deepencoder: {n - nf}/{n} pages encoded into {shards} shard(s) in {out_dir} "
        f"({new_pages} this run, {seconds:.1f}s{rate}); manifest: {os.path.join(out_dir, 'manifest.parquet')}")
    if nf:
        log(f"deepencoder: {nf} page(s) FAILED (status != 'ok' in the manifest):")
        for r in failed.slice(0, 10).to_pylist():
            err = r["error"] or "unknown error"
            log(f"  {err}" if r["source"] in err else f"  {r['source']} page {r['page']}: {err}")
        if nf > 10:
            log(f"  ... and {nf - 10} more")
        return 1
    return 0


def run_corpus(opts: CorpusOptions, log=_log, stats=None) -> int:
    """Run (or resume) a corpus job. Returns the exit code; raises CorpusError on user errors.

    stats: an optional :class:`deepencoder.corpus.local.PipelineStats` the local engine fills (benchmarks).
    Decode workers are spawned processes: a script calling this with ``workers > 0`` needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    from ..sources import expand_inputs

    resolve_model(opts)
    resolve_mode(opts)
    for name in ("batch_pages", "shard_pages", "depth"):
        if getattr(opts, name) < 1:
            raise CorpusError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    try:
        docs = expand_inputs(opts.inputs, opts.recursive, opts.pages)
    except (FileNotFoundError, ValueError) as e:
        raise CorpusError(str(e)) from None
    plan = Plan(docs, opts.batch_pages)
    ray_ctx = None
    if opts.engine == "ray":
        from .ray_engine import connect

        ray_ctx = connect(opts)
        opts.resolved = resolve(opts, cuda=ray_ctx["gpus_per_actor"] > 0)
    elif opts.engine == "local":
        opts.resolved = resolve(opts)
    else:
        raise CorpusError(f"unknown --engine {opts.engine!r}: choose local or ray")
    try:
        options = run_options(opts, plan)
    except (OSError, ValueError) as e:  # --weights missing or not a checkpoint
        raise CorpusError(f"--weights: {e}") from None
    run = {"format": store.FORMAT, "options": options, "versions": store.versions(),
           "random_weights": opts.weights is None, "weights_path": opts.weights,
           "pages_total": plan.total, "documents": len(plan.docs), "engine": opts.engine,
           "cpu_threads": opts.threads or _torch_threads()}
    try:
        resuming = store.check_or_write_run(opts.out, run)
    except store.OptionsMismatch as e:
        raise CorpusError(str(e)) from None
    if resuming and run["options"]["device"] == "cpu":
        import json

        with open(os.path.join(opts.out, "run.json"), encoding="utf-8") as f:
            first = json.load(f).get("cpu_threads")
        if first and first != run["cpu_threads"]:
            log(f"deepencoder: note: this run uses {run['cpu_threads']} CPU thread(s), the first used {first}: "
                "new shards may differ in the last bits from an uninterrupted run (--threads to match)")
    gone = store.remove_temporaries(opts.out)
    if gone:
        log(f"deepencoder: removed {len(gone)} temporary file(s) left by an interrupted run")
    prefix = store.finished_prefix(opts.out)
    # shards end on chunk boundaries (or at the corpus end): the next chunk starts at next_index
    start_chunk = -(-prefix["next_index"] // opts.batch_pages)
    if opts.weights is None:
        log("WARNING: deepencoder: no --weights given: SEEDED RANDOM weights; token counts and shapes are "
            "real, the values are MEANINGLESS (recorded in run.json)")
    if resuming:
        log(f"deepencoder: resuming {opts.out}: {prefix['next_index']}/{plan.total} pages in "
            f"{prefix['shards']} finished shard(s)")
    t0 = time.perf_counter()
    if start_chunk >= plan.n_chunks:
        log("deepencoder: nothing to do: every page is in a finished shard")
        if not os.path.exists(os.path.join(opts.out, "manifest.parquet")):
            store.write_manifest(opts.out, prefix["shards"])
        return _summary(opts.out, 0.0, 0, log)
    failed_before = 0
    if prefix["shards"]:
        import pyarrow.compute as pc

        t = store.read_manifest(opts.out)
        failed_before = t.num_rows - pc.sum(pc.equal(t["status"], "ok")).as_py()
    import torch

    r = opts.resolved
    store_dtype = getattr(torch, r["store_dtype"])
    prog = Progress(plan.total, "encode-corpus", unit="page", every=opts.progress_interval,
                    initial=prefix["next_index"], failed=failed_before, start=False)
    sink = ShardAssembler(opts.out, prefix["shards"], plan.total, None, store_dtype, opts.shard_pages,
                          opts.shard_bytes,
                          on_rows=lambda rows: prog.update(len(rows), failed=sum(r["status"] != "ok" for r in rows)))
    chunks = range(start_chunk, plan.n_chunks)
    stage_opts = StageOptions(opts.dpi, opts.mode, opts.max_tiles, opts.family, store_dtype)
    try:
        if opts.engine == "local":
            from .local import run_local

            enc = build_encoder(opts)
            log(f"deepencoder: {plan.total} pages from {len(plan.docs)} file(s), mode {opts.mode}, "
                f"backend {enc.backend} on {enc.device} ({str(enc.dtype)[6:]}), {opts.workers} decode "
                f"worker(s), batches of {opts.batch_pages} pages, shards of {opts.shard_pages} pages")
            prog.start()  # the bar after the log lines, not between them
            run_local(plan, chunks, enc, stage_opts, sink, workers=opts.workers, depth=opts.depth,
                      overlap=opts.overlap, stats=stats)
        else:
            from .ray_engine import run_ray

            prog.start()
            run_ray(plan, chunks, opts, stage_opts, sink, ray_ctx)
    except KeyboardInterrupt as e:
        prog.close()
        store.remove_temporaries(opts.out)
        log(f"deepencoder: interrupted; {sink.k} finished shard(s) kept in {opts.out}; "
            "rerun the same command to resume")
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory: one line, the finished shards stay
        prog.close()
        store.remove_temporaries(opts.out)
        if os.environ.get("DEEPENCODER_DEBUG"):
            raise
        log(f"deepencoder: error: the run stopped: {type(e).__name__}: {' '.join(str(e).split())[:500]}; "
            f"{sink.k} finished shard(s) kept in {opts.out}; rerun to resume (DEEPENCODER_DEBUG=1 for a traceback)")
        return 3
    finally:
        prog.close()
    store.write_manifest(opts.out, sink.k)
    return _summary(opts.out, time.perf_counter() - t0, prog.done - prefix["next_index"], log)
