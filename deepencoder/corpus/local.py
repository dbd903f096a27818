"""The local engine: one machine, host work overlapped with the encoder, memory bounded by a queue depth.

::

    worker processes (decode: PDFium render / image decode)   ── up to `depth` chunks in flight
        → producer thread (C++ preprocess into pinned buffers) ── queue of at most `depth` chunks
        → main thread (encode_views on the encoder's device)   → shard writer (in chunk order)

Chunks are consumed in plan order, so shards come out in order whatever the worker timing. PDFium is not
thread-safe, hence processes (``spawn``: the parent holds torch and threads, where ``fork`` can hang);
the C++ preprocessing releases the GIL and runs beside the encoder in a thread. Workers ignore SIGINT:
Ctrl-C reaches the main thread only, which stops the pipeline and terminates them.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from typing import Callable, Iterable, Optional

from .stages import decode_chunk, encode_chunk, preprocess_chunk

_DONE = object()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm(_) -> int:
    """Import the decode stage's modules in a fresh worker (spawn start-up: seconds, once per worker)."""
    from .. import preprocess, sources  # noqa: F401

    return os.getpid()


class PipelineStats:
    """Wall time of the encoder's thread: ``encode`` seconds in encode_chunk, ``wait`` seconds blocked on
    the queue. ``wait_share`` = 1 - encode / elapsed: the share of the run the encoder had no input
    (in serial mode that is the decode + preprocess time)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.t1 = None
        self.wait = 0.0
        self.encode = 0.0
        self.pages = 0
        self.startup = 0.0  # decode workers' spawn + imports, before t0

    @property
    def elapsed(self) -> float:
        return (self.t1 or time.perf_counter()) - self.t0

    @property
    def wait_share(self) -> float:
        return max(0.0, 1.0 - self.encode / max(self.elapsed, 1e-9))


def _upload(prep, device, stream) -> None:
    """Copy a chunk's views (in pinned host buffers) to the GPU on ``stream`` with ``non_blocking=True``,
    in the producer thread: the copy of chunk j+1 overlaps the encoder's work on chunk j. ``encode_views``
    then finds the views on the device and copies nothing. ``prep.ready`` is the copies' event."""
    import torch

    with torch.cuda.stream(stream):
        for v in prep.views:
            v.global_view = v.global_view.to(device, non_blocking=True)
            v.tiles = v.tiles.to(device, non_blocking=True) if v.tiles is not None else None
        prep.ready = torch.cuda.Event()
        prep.ready.record(stream)


def run_local(plan, chunks: Iterable[int], enc, opts, sink: Callable, workers: int = 2, depth: int = 4,
              overlap: bool = True, stats: Optional[PipelineStats] = None) -> PipelineStats:
    """Encode ``chunks`` (plan chunk ids, ascending) and hand each ``(rows, tokens)`` to ``sink`` in order.

    opts: needs ``dpi, mode, max_tiles, family, store_dtype``. workers: decode processes (0: decode in
    the producer thread). depth: chunks in flight per stage (memory bound). overlap=False: every stage
    in turn on the main thread (the baseline the benchmark compares against).

    On CUDA, views are preprocessed into pinned buffers and uploaded by the producer thread on a side
    stream (``non_blocking``), so up to ``depth`` chunks of views sit on the GPU ahead of the encoder.
    """
    import torch

    stats = stats or PipelineStats()
    stats.t0 = time.perf_counter()  # the pipeline's own time: planning and weight loading excluded
    pin = enc.device.type == "cuda"
    dtype = enc.dtype if enc.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32

    copy_stream = torch.cuda.Stream(device=enc.device) if pin and overlap else None

    def prep_of(j, decoded):
        prep = preprocess_chunk(plan.chunk(j), decoded, opts.mode, opts.max_tiles, dtype, opts.family, pin)
        if copy_stream is not None:
            _upload(prep, enc.device, copy_stream)
        return prep

    def encode(prep):
        t = time.perf_counter()
        ready = getattr(prep, "ready", None)
        if ready is not None:  # the chunk's views were copied to the GPU on the side stream
            compute = torch.cuda.current_stream(enc.device)
            compute.wait_event(ready)
            for v in prep.views:  # the allocator must not hand these blocks out before compute is done
                v.global_view.record_stream(compute)
                if v.tiles is not None:
                    v.tiles.record_stream(compute)
        out = encode_chunk(enc, prep, opts.store_dtype)
        stats.encode += time.perf_counter() - t
        return out

    if not overlap:
        for j in chunks:
            rows, toks = encode(prep_of(j, decode_chunk(plan.chunk(j), opts.dpi)))
            sink(rows, toks)
            stats.pages += len(rows)
        stats.t1 = time.perf_counter()
        return stats

    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    pool = None
    if workers > 0:
        pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
        try:  # start-up (spawn + imports) is paid before the clock starts; reported as startup_s
            pool.map(_warm, range(workers), chunksize=1)
        except BaseException:
            pool.terminate()
            raise
        stats.startup = time.perf_counter() - stats.t0
        stats.t0 = time.perf_counter()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def producer():
        try:
            inflight = collections.deque()
            it = iter(chunks)
            exhausted = False
            while not stop.is_set():
                while pool is not None and not exhausted and len(inflight) < depth:
                    j = next(it, None)
                    if j is None:
                        exhausted = True
                    else:
                        inflight.append((j, pool.apply_async(decode_chunk, (plan.chunk(j), opts.dpi))))
                if pool is None:
                    j = next(it, None)
                    if j is None:
                        break
                    decoded = decode_chunk(plan.chunk(j), opts.dpi)
                elif inflight:
                    j, res = inflight.popleft()
                    while not res.ready():
                        if stop.is_set():
                            return
                        res.wait(0.1)
                    decoded = res.get()
                else:
                    break
                if not put(prep_of(j, decoded)):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            put(e)

    th = threading.Thread(target=producer, name="deepencoder-producer", daemon=True)
    th.start()
    try:
        while True:
            t = time.perf_counter()
            item = q.get()
            stats.wait += time.perf_counter() - t
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            rows, toks = encode(item)
            sink(rows, toks)
            stats.pages += len(rows)
        stats.t1 = time.perf_counter()
    finally:
        stop.set()
        if pool is not None:
            pool.terminate()  # Ctrl-C or error: drop chunks in flight (they were never written)
            pool.join()
        th.join(timeout=5)
    return stats
