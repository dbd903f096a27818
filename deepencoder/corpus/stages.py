"""The three stages every engine runs on a chunk of pages: decode → preprocess → encode.

* :func:`decode_chunk` (worker processes / Ray CPU tasks): render PDF pages (PDFium) and decode images to
  ``[H, W, 3]`` uint8. Imports no torch model code: cheap to run in many processes.
* :func:`preprocess_chunk` (a host thread / Ray CPU tasks): one multi-threaded C++ ``preprocess_batch``
  call for the chunk, written straight into a pinned buffer when the encoder is on CUDA, so the host→GPU
  copies in ``encode_views`` (``non_blocking=True``) are asynchronous.
* :func:`encode_chunk` (the encoder's thread / Ray GPU actors): one ``encode_views`` call for the whole
  chunk: every Gundam tile of every page in one batch, global views grouped by size.

A page that fails in any stage becomes a failed manifest row with its reason; the chunk goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .plan import PageItem

# (index, pixels or None, error text, seconds) per page: plain tuples, cheap to pickle between processes
Decoded = Tuple[int, Optional[np.ndarray], str, float]


MAX_ERROR_CHARS = 500  # a manifest cell, not a dump (some errors print whole arrays)


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    msg = msg if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {msg}"
    return msg if len(msg) <= MAX_ERROR_CHARS else msg[:MAX_ERROR_CHARS - 3] + "..."


def decode_chunk(items: Sequence[PageItem], dpi: int) -> List[Decoded]:
    """Pixels of each page, in order; a PDF is opened once per run of its pages in the chunk."""
    from ..sources import load_page, open_pdf, render_pdf_page

    out: List[Decoded] = []
    pdf, pdf_path = None, None
    try:
        for it in items:
            t0 = time.perf_counter()
            if it.error:
                out.append((it.index, None, it.error, 0.0))
                continue
            try:
                if it.kind == "pdf":
                    if pdf_path != it.path:
                        if pdf is not None:
                            pdf.close()
                        pdf, pdf_path = None, None
                        pdf = open_pdf(it.path)
                        pdf_path = it.path
                    arr = render_pdf_page(pdf, it.path, it.page, dpi)
                else:
                    arr = load_page(it.path, it.page, dpi)
                out.append((it.index, arr, "", time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - any bad page is recorded with its reason; the run goes on
                out.append((it.index, None, _reason(e), time.perf_counter() - t0))
    finally:
        if pdf is not None:
            pdf.close()
    return out


@dataclass
class Prepared:
    """A chunk after preprocessing: ``views`` for the pages in ``ok`` (indices into ``items``)."""

    items: List[PageItem]
    decoded: List[Decoded]
    ok: List[int] = field(default_factory=list)
    views: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # position in chunk -> reason
    seconds: float = 0.0
    ready: object = None  # CUDA event: the views' async upload finished (local engine on CUDA)


def preprocess_chunk(items: Sequence[PageItem], decoded: Sequence[Decoded], mode: str, max_tiles: int,
                     dtype, family: str = "ocr1", pin: bool = False) -> Prepared:
    """Views for every decoded page (one C++ call; per-page retry to isolate a page that fails)."""
    import torch

    from ..preprocess import preprocess_batch, views_numel

    t0 = time.perf_counter()
    prep = Prepared(list(items), list(decoded))
    pos = [i for i, d in enumerate(decoded) if d[1] is not None]
    arrays = [decoded[i][1] for i in pos]
    kw = {"family": family}
    pinned = False  # the views live in one pinned buffer (the batched path); else pin them one by one
    if arrays:
        try:
            out = None
            if pin:  # one pinned buffer for the chunk, laid out as views_numel says
                need = sum(views_numel(a.shape[1], a.shape[0], mode, max_tiles, family=family) for a in arrays)
                out = torch.empty(need, dtype=dtype, pin_memory=True)
            views = preprocess_batch(arrays, mode, max_tiles=max_tiles, dtype=dtype, out=out, **kw)
            prep.ok, prep.views = pos, views
            pinned = out is not None
        except (ValueError, OSError):  # find the page(s) at fault, keep the rest
            for i, a in zip(pos, arrays):
                try:
                    prep.views.append(preprocess_batch([a], mode, max_tiles=max_tiles, dtype=dtype, **kw)[0])
                    prep.ok.append(i)
                except (ValueError, OSError) as e:  # a page's content (size limits); anything else is ours
                    prep.errors[i] = "preprocessing failed: " + _reason(e)
        if pin and not pinned:
            for v in prep.views:
                v.global_view = v.global_view.pin_memory()
                v.tiles = v.tiles.pin_memory() if v.tiles is not None else None
    # the pixels live on in the views: drop the decoded pages so a queued chunk holds one copy
    prep.decoded = [(i, None, e, sec) for i, _, e, sec in prep.decoded]
    prep.seconds = time.perf_counter() - t0
    return prep


def encode_chunk(enc, prep: Prepared, store_dtype) -> Tuple[List[dict], list]:
    """Encode a prepared chunk. Returns (manifest rows for every page in order, tokens of the ok pages).

    Rows lack ``shard``/``offset``: the shard writer fills them.
    """
    t0 = time.perf_counter()
    results = enc.encode_views(prep.views, sources=[prep.items[i].path for i in prep.ok]) if prep.views else []
    enc_s = time.perf_counter() - t0
    share = (enc_s + prep.seconds) / max(1, len(prep.ok))
    by_pos = dict(zip(prep.ok, results))
    rows, tokens = [], []
    for i, (it, d) in enumerate(zip(prep.items, prep.decoded)):
        row = {"index": it.index, "source": it.path, "page": it.page, "status": "failed",
               "error": d[2] or prep.errors.get(i), "mode": None, "seconds": d[3]}
        r = by_pos.get(i)
        if r is not None:
            row.update(status="ok", error=None, mode=r.mode, grid_cols=int(r.grid[0]), grid_rows=int(r.grid[1]),
                       width=int(r.size[0]), height=int(r.size[1]), num_tokens=int(r.num_tokens),
                       seconds=d[3] + share)
            tokens.append(r.tokens.detach().to(device="cpu", dtype=store_dtype).contiguous())
        rows.append(row)
    return rows, tokens
