"""The Ray Data engine (``--engine ray``): the same chunks, stages, shards and resume rule, on a cluster.

::

    from_items(chunks still to do)                         one row per plan chunk (batch_pages pages)
      .map_batches(_render_preprocess, TaskPoolStrategy)   CPU tasks: PDFium render + C++ preprocess
      .map_batches(ChunkEncoder, ActorPoolStrategy,        GPU actors: weights loaded once per actor,
                   num_gpus=1, batch_size=1)                one chunk = one encode_views batch
      .iter_rows()  (preserve_order)                       driver: the local engine's shard writer

Idioms from Ray Data's batch-inference guide: a callable class for the stateful model stage (its
``__init__`` loads the weights once per actor), ``compute=ActorPoolStrategy(size=N)`` with ``num_gpus``
and an explicit ``batch_size``; a plain function on a task pool for the CPU stage. A row is one plan
chunk, so every actor encodes exactly the batches the local engine does and the tokens are identical;
``preserve_order`` hands chunks to the writer in plan order, so shards and resume work unchanged.
Payloads between stages are pickled (torch tensors pickle with their dtype, bfloat16 included).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, replace

import numpy as np

from .plan import PageItem


def connect(opts) -> dict:
    """Start or join Ray; decide GPUs per encoder actor (default: 1 when the cluster has GPUs, else 0)."""
    from .job import CorpusError

    try:
        import ray
    except ImportError:
        raise CorpusError("--engine ray needs Ray: pip install 'deepencoder[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=opts.address, include_dashboard=False, ignore_reinit_error=True)
    gpus = opts.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return {"gpus_per_actor": float(gpus)}


def _render_preprocess(batch, stage_opts, dtype_name: str):
    """CPU stage: rows of chunks → rows of pickled :class:`~deepencoder.corpus.stages.Prepared`."""
    import torch

    from .stages import decode_chunk, preprocess_chunk

    dtype = getattr(torch, dtype_name)
    payloads = []
    for items_json in batch["items"]:
        items = [PageItem(**d) for d in json.loads(items_json)]
        decoded = decode_chunk(items, stage_opts.dpi)
        prep = preprocess_chunk(items, decoded, stage_opts.mode, stage_opts.max_tiles, dtype,
                                stage_opts.family, pin=False)
        payloads.append(pickle.dumps(prep, protocol=pickle.HIGHEST_PROTOCOL))
    return {"chunk": np.asarray(batch["chunk"]), "payload": np.array(payloads, dtype=object)}


class ChunkEncoder:
    """GPU stage (a Ray Data callable class): one encoder per actor, built once in ``__init__``."""

    def __init__(self, opts, stage_opts, device: str, threads: int):
        import torch

        from .job import build_encoder

        if device == "cpu":  # the driver's thread count: CPU reductions, hence the bytes, depend on it
            torch.set_num_threads(threads)
        self.enc = build_encoder(opts, device=device)
        self.stage_opts = stage_opts

    def __call__(self, batch):
        from .stages import encode_chunk

        results = []
        for payload in batch["payload"]:
            prep = pickle.loads(payload)
            if self.enc.device.type == "cuda":  # async host→GPU copies from page-locked memory
                dev = self.enc.device
                for v in prep.views:
                    v.global_view = v.global_view.pin_memory().to(dev, non_blocking=True)
                    v.tiles = v.tiles.pin_memory().to(dev, non_blocking=True) if v.tiles is not None else None
            rows, tokens = encode_chunk(self.enc, prep, self.stage_opts.store_dtype)
            results.append(pickle.dumps((rows, tokens), protocol=pickle.HIGHEST_PROTOCOL))
        return {"chunk": np.asarray(batch["chunk"]), "result": np.array(results, dtype=object)}


def run_ray(plan, chunks, opts, stage_opts, sink, ctx) -> None:
    import ray
    import ray.data

    dctx = ray.data.DataContext.get_current()
    dctx.execution_options.preserve_order = True  # shards are written in plan order
    rows = [{"chunk": int(j), "items": json.dumps([asdict(it) for it in plan.chunk(j)])} for j in chunks]
    if not rows:
        return
    import torch

    gpus = ctx["gpus_per_actor"]
    device = "cuda" if gpus > 0 else "cpu"
    # a CPU encoder runs as many torch threads as the local engine would here (Ray would give it one),
    # so both engines do the same arithmetic and write the same bytes
    threads = opts.threads or torch.get_num_threads()
    # the actors need no Ray handle: a plain copy of the options (resolved dtype/backend included)
    actor_opts = replace(opts, inputs=list(opts.inputs))
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(_render_preprocess, batch_size=1, batch_format="numpy",
                        fn_kwargs={"stage_opts": stage_opts, "dtype_name": opts.resolved["dtype"]},
                        compute=ray.data.TaskPoolStrategy(size=max(1, opts.cpu_tasks)), num_cpus=1)
    ds = ds.map_batches(ChunkEncoder, batch_size=1, batch_format="numpy",
                        fn_constructor_kwargs={"opts": actor_opts, "stage_opts": stage_opts, "device": device,
                                               "threads": threads},
                        compute=ray.data.ActorPoolStrategy(size=max(1, opts.actors)), num_gpus=gpus,
                        num_cpus=1)
    for row in ds.iter_rows():
        page_rows, tokens = pickle.loads(row["result"])
        sink(page_rows, tokens)
