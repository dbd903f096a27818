"""Pages to disk and through the encoder: the work behind ``deepencoder render`` and ``compress``.

Outputs in one folder, never overwritten without ``force``:

* ``page-0001.png`` ... (``render``) or ``page-0001-tiny.png`` ... (``compress``: the mode in the name),
* ``encoded.safetensors``: one tensor per page, key = page name, ``[num_tokens, n_embed]`` in the
  encoder's dtype; metadata ``family``, ``pages`` (JSON) and ``random_weights``,
* ``summary.json``: model family, geometry, font, versions, token accounting, per-page records (and the
  plan),
* ``layout.json`` (``render`` only): every layout record, ``[src, start, end, page, line, x, y, cells,
  kind]``.

Pages are rendered one batch at a time and written before the next batch is drawn, so memory holds
one batch of images plus the encoder outputs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .. import __version__, limits
from ..cli import atomic_write
from ..modes import DEFAULT_MODE, check_family, get_mode, resolve_max_tiles, vision_token_count
from ..progress import Progress
from .font import FONT_LICENSE, FONT_NAME, font_info, rasteriser_versions
from .planner import Plan, _fmt_age
from .render import DEFAULT_DENSITY, DEFAULT_MAX_PAGES, Layout, layout_text
from .tokens import compression_table, format_compression_table, format_table, make_counter

OUTPUT_PATTERNS = ("page-*.png", "encoded.safetensors", "summary.json", "layout.json")
RANDOM_WEIGHTS_NOTICE = ("WARNING: the encoder ran with SEEDED RANDOM weights (no --weights): the vectors in "
                         "encoded.safetensors are MEANINGLESS. Pages, token counts and budgets are exact.")


STAMP = ".deepencoder-request.json"  # the request of an unfinished run; summary.json marks a finished one
PART_PREFIX = ".encoded-part-"  # encoder outputs of one batch, merged into encoded.safetensors at the end


def _partials(out_dir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), PART_PREFIX + "*.safetensors"))
                  + glob.glob(os.path.join(glob.escape(out_dir), ".*.partial-*")))


def prepare_out(out_dir: str, force: bool = False, request_key: Optional[str] = None) -> bool:
    """Create ``out_dir``; refuse (FileExistsError) if it holds outputs of ours, unless ``force``.

    Returns True when the folder holds an interrupted run (no ``summary.json``) of the same request
    (``request_key``, written to a stamp at the start of every run): that run is continued, its pages
    kept and its encoded batches reused, instead of being refused. With ``force`` everything is redone.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".deepencoder-probe-", dir=out_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"{out_dir}: cannot write there ({e.strerror or e})") from None
    existing = sorted(f for pat in OUTPUT_PATTERNS for f in glob.glob(os.path.join(glob.escape(out_dir), pat)))
    stamp = os.path.join(out_dir, STAMP)
    if not force and request_key is not None and os.path.exists(stamp) \
            and not os.path.exists(os.path.join(out_dir, "summary.json")):
        try:
            with open(stamp, encoding="utf-8") as f:
                same = json.load(f).get("request") == request_key
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            return True
        if existing:
            raise FileExistsError(f"{out_dir} holds an unfinished run of a different request ({len(existing)} "
                                  "files); pass --force (force=True) to replace it, or choose another folder")
    if existing and not force:
        raise FileExistsError(f"{out_dir} already holds outputs ({len(existing)} files, e.g. "
                              f"{os.path.basename(existing[0])}); pass --force (force=True) to replace them")
    for f in existing + _partials(out_dir) + ([stamp] if os.path.exists(stamp) else []):
        os.remove(f)  # stale pages of an earlier, longer run must not linger
    if request_key is not None:
        _write_json(stamp, {"request": request_key})
    return False


def finish_out(out_dir: str) -> None:
    """After ``summary.json``: drop the per-batch parts and the stamp of the unfinished run."""
    for f in _partials(out_dir) + [os.path.join(out_dir, STAMP)]:
        if os.path.exists(f):
            os.remove(f)


def font_record() -> dict:
    info = font_info()
    return {"name": FONT_NAME, "file": os.path.basename(info.path), "sha256": info.sha256, "license": FONT_LICENSE}


def encoder_record(encoder) -> Optional[dict]:
    if encoder is None:
        return None
    return {"family": getattr(encoder, "family", "ocr1"), "config": getattr(encoder.config, "name", "?"),
            "random_weights": bool(encoder.random_weights),
            "backend": getattr(encoder, "backend", "?"), "device": str(getattr(encoder, "device", "?")),
            "dtype": str(getattr(encoder, "dtype", "?")).replace("torch.", ""),
            "outputs_meaningless": bool(encoder.random_weights)}


@dataclass
class PageJob:
    name: str
    layout: Layout
    page: int  # index inside ``layout``
    mode: str
    meta: dict


def check_encoder_family(encoder, family: str) -> None:
    """Pages planned for one model family must not be encoded by the other's encoder (their token counts
    differ): a one-line ValueError naming both."""
    ef = getattr(encoder, "family", "ocr1")
    if ef != family:
        raise ValueError(f"the pages are planned for model family {family!r} but the encoder is {ef!r}; "
                         f"pass family={ef!r} (CLI --model {ef}) or an {family} encoder")


def write_pages(jobs: Iterable[PageJob], total: int, out_dir: str, encoder=None, batch_size: int = 8,
                max_tiles: Optional[int] = None, progress: bool = True,
                resume: bool = False, family: str = "ocr1") -> Tuple[List[dict], Dict]:
    """Render each job's page, save it as PNG, encode in batches. Returns (page records, tensors).

    ``family``: the model family the jobs' modes belong to (vision tokens per page are its counts);
    ``max_tiles`` None: its Gundam default.

    Every file is written under a temporary name and renamed, so an interruption leaves whole files
    only. Each encoded batch is also saved as a hidden part; with ``resume`` a batch whose part exists
    (same page names) is read back instead of encoded again."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    limits.BATCH.check(batch_size, f"batch size {batch_size}")
    family = check_family(family)
    if encoder is not None:
        check_encoder_family(encoder, family)
    records: List[dict] = []
    tensors: Dict = {}
    batch: List[Tuple[PageJob, object, dict]] = []

    def flush():
        if not batch:
            return
        if encoder is not None:
            part = os.path.join(out_dir, f"{PART_PREFIX}{batch[0][0].name}.safetensors")
            names = [j.name for j, _, _ in batch]
            got = _read_part(part, names) if resume else None
            if got is None:
                outs = encoder.encode([im.convert("RGB") for _, im, _ in batch], mode=[j.mode for j, _, _ in batch],
                                      max_tiles=max_tiles)
                got = {}
                for (job, _, rec), out in zip(batch, outs):
                    if out.num_tokens != rec["vision_tokens"]:
                        raise RuntimeError(f"{job.name}: the encoder emitted {out.num_tokens} tokens, "
                                           f"vision_token_count says {rec['vision_tokens']}")
                    got[job.name] = (out.tokens.detach().to("cpu").contiguous(), list(out.grid), round(out.seconds, 4))
                _write_part(part, got)
            for job, _, rec in batch:
                t, grid, sec = got[job.name]
                tensors[job.name] = t
                rec.update(encoded_tokens=int(t.shape[0]), grid=grid, seconds=sec)
        bar.update(len(batch))
        batch.clear()

    with Progress(total, "render+encode" if encoder is not None else "render", enabled=progress) as bar:
        for job in jobs:
            im = job.layout.page_image(job.page)
            path = os.path.join(out_dir, job.name + ".png")
            atomic_write(path, lambda tmp, im=im: im.save(tmp, format="PNG"))
            g = job.layout.geometry
            rec = {"name": job.name, "file": os.path.basename(path), "mode": job.mode,
                   "size": [g.width, g.height],
                   "vision_tokens": vision_token_count(g.width, g.height, job.mode, max_tiles, family=family),
                   "pixels_sha256": hashlib.sha256(im.tobytes()).hexdigest(), **job.meta}
            records.append(rec)
            batch.append((job, im, rec))
            if len(batch) >= batch_size:
                flush()
        flush()
    return records, tensors


def _write_part(path: str, got: Dict) -> None:
    from safetensors.torch import save_file

    meta = {"names": json.dumps(list(got)), "info": json.dumps({k: [g, s] for k, (_, g, s) in got.items()})}
    atomic_write(path, lambda tmp: save_file({k: t for k, (t, _, _) in got.items()}, tmp, metadata=meta))


def _read_part(path: str, names: List[str]) -> Optional[Dict]:
    """The batch saved at ``path`` if it holds exactly ``names``; None (encode again) otherwise."""
    from safetensors import safe_open

    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("names", "[]")) != names:
                return None
            info = json.loads(meta["info"])
            return {k: (f.get_tensor(k), info[k][0], info[k][1]) for k in names}
    except Exception:  # noqa: BLE001 - an unreadable part is simply redone
        return None


def save_encoded(out_dir: str, tensors: Dict, records: List[dict], encoder) -> Optional[str]:
    if encoder is None or not tensors:
        return None
    from safetensors.torch import save_file

    path = os.path.join(out_dir, "encoded.safetensors")
    meta = {"format": "deepencoder.optical/1", "family": getattr(encoder, "family", "ocr1"),
            "random_weights": str(bool(encoder.random_weights)).lower(),
            "config": getattr(encoder.config, "name", "?"),
            "pages": json.dumps([{k: r[k] for k in ("name", "mode", "vision_tokens", "size")} for r in records])}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")

    atomic_write(path, write)


def versions() -> dict:
    return {"deepencoder": __version__, **rasteriser_versions(), "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------- render
def render_to_dir(text: str, out_dir: str, mode: Optional[str] = None, density: float = DEFAULT_DENSITY,
                  font_size: Optional[int] = None, page_size: Optional[Tuple[int, int]] = None,
                  markdown: bool = True, tokenizer=None, encoder=None, max_pages: Optional[int] = DEFAULT_MAX_PAGES,
                  max_tiles: Optional[int] = None, batch_size: int = 8, force: bool = False,
                  progress: bool = True, source: str = "", request_key: Optional[str] = None,
                  family: str = "ocr1") -> dict:
    """Render ``text`` for ``mode`` of model ``family`` into ``out_dir`` (and encode when ``encoder``, a
    DeepEncoder of that family or a zero-argument factory of one, is given).

    ``mode`` None: the family's default (ocr1 base, ocr2 gundam); ``max_tiles`` None: its Gundam MAX. The
    compression table lists every mode of the family.

    Returns the summary (also written to ``summary.json``); ``summary["table_text"]`` is the printed
    compression table. ``request_key`` (any string identifying the request) lets a rerun continue an
    interrupted run in ``out_dir`` (see :func:`prepare_out`).
    """
    family = check_family(family)
    mode = get_mode(DEFAULT_MODE[family] if mode is None else mode, family).name
    max_tiles = resolve_max_tiles(get_mode("gundam", family), max_tiles)
    counter = make_counter(tokenizer)
    lay = layout_text(text, mode, density, font_size, page_size, markdown, max_pages, max_tiles, family=family)
    limits.BATCH.check(batch_size, f"batch size {batch_size}")
    resume = prepare_out(out_dir, force, request_key)
    if encoder is not None and not hasattr(encoder, "encode"):
        encoder = encoder()  # a factory: build the (slow to load) encoder only once the input is known good
    if encoder is not None:
        check_encoder_family(encoder, family)
    g = lay.geometry
    n = lay.num_pages
    jobs = (PageJob(f"page-{p + 1:04d}", lay, p, mode, {"chars": _page_chars(lay, p)}) for p in range(n))
    records, tensors = write_pages(jobs, n, out_dir, encoder, batch_size, max_tiles, progress, resume, family)
    save_encoded(out_dir, tensors, records, encoder)
    text_tokens = counter(text)
    table = compression_table(text_tokens, len(text), n, (g.width, g.height), max_tiles=max_tiles, family=family)
    table_text = format_compression_table(table, mark=mode)
    _write_json(os.path.join(out_dir, "layout.json"), {
        "fields": ["src", "start", "end", "page", "line", "x", "y", "cells", "kind"],
        "sources": {"0": source or "<text>"}, "records": [list(r) for r in lay.records()]})
    summary = {
        "command": "render", "family": family, "source": source, "chars": len(text), "markdown": markdown,
        "mode": mode, "max_tiles": max_tiles,
        "density_target": None if font_size else density, "page": g.as_dict(), "pages": records,
        "text_tokens": text_tokens, "text_tokenizer": counter.name, "text_tokens_are_estimates": counter.is_estimate,
        "missing_characters": {f"U+{ord(c):04X}": k for c, k in lay.missing.items()},
        "compression_table": [r.as_dict() for r in table], "font": font_record(), "encoder": encoder_record(encoder),
        "versions": versions(),
    }
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    finish_out(out_dir)
    summary["table_text"] = table_text
    return summary


def _page_chars(lay: Layout, page: int) -> List[int]:
    """[first, last+1) source offsets on a page."""
    recs = list(lay.records(page))
    return [min(r.start for r in recs), max(r.end for r in recs)] if recs else [0, 0]


# ---------------------------------------------------------------------------------------------- compress
def plan_jobs(plan: Plan) -> Iterator[PageJob]:
    """Every page of every image block, oldest block first (the context's reading order)."""
    k = 0
    for b in plan.blocks():
        if b.level == "text":
            continue
        lay = plan.layout_block(b)
        for p in range(lay.num_pages):
            k += 1
            yield PageJob(f"page-{k:04d}-{b.level}", lay, p, b.level, {"turns": lay.page_sources(p)})


def context_items(plan: Plan, records: List[dict]) -> List[dict]:
    """The assembled context, oldest first: image pages, then the turns kept as text."""
    items = []
    for r in records:
        items.append({"type": "image", "file": r["file"], "mode": r["mode"], "tokens": r["vision_tokens"],
                      "turns": r["turns"]})
    for i in plan.order:
        if plan.levels[i] == "text":
            items.append({"type": "text", "turn": i, "role": plan.turns[i].role, "tokens": plan.text_tokens[i]})
    return items


def budget_table(plan: Plan) -> str:
    est = " (estimated)" if plan.counter_is_estimate else ""
    rows = [["before: every turn as text" + est, plan.cost_all_text],
            ["age schedule alone", plan.cost_scheduled],
            ["after: planned", plan.cost]]
    if plan.budget is not None:
        rows.append(["budget", plan.budget])
    return format_table(["context", "tokens"], rows)


def level_table(plan: Plan) -> str:
    rows = []
    for b in plan.blocks():
        ratio = b.text_tokens / b.tokens if b.tokens else 0.0
        rows.append([b.level, len(b.turns), b.pages if b.level != "text" else "-",
                     b.tokens_per_page if b.level != "text" else "-", b.tokens, b.text_tokens, round(ratio, 2)])
    if plan.dropped:
        rows.append(["DROPPED", len(plan.dropped), "-", "-", 0,
                     sum(plan.text_tokens[i] for i in plan.dropped), "-"])
    return format_table(["level", "turns", "pages", "vision tok/page", "tokens", "text tokens", "compression"],
                        rows)


def turn_table(plan: Plan) -> str:
    return format_table(["turn", "role", "age", "text tokens", "scheduled", "planned"],
                        [[i, t.role, _fmt_age(plan.ages[i], plan.age_unit), plan.text_tokens[i], plan.scheduled[i],
                          plan.levels[i]]
                         for i, t in enumerate(plan.turns)])


def compress_to_dir(plan: Plan, out_dir: str, encoder=None, batch_size: int = 8, force: bool = False,
                    progress: bool = True, max_pages: Optional[int] = DEFAULT_MAX_PAGES,
                    request_key: Optional[str] = None) -> dict:
    """Render and encode a :class:`Plan`'s pages into ``out_dir``; write ``summary.json``."""
    total = sum(b.pages for b in plan.blocks())
    if max_pages is not None and total > max_pages:
        raise ValueError(f"the plan needs {total} pages, over the limit of {max_pages}; raise --max-pages or "
                         "give a budget")
    limits.BATCH.check(batch_size, f"batch size {batch_size}")
    resume = prepare_out(out_dir, force, request_key)
    if encoder is not None and not hasattr(encoder, "encode"):
        encoder = encoder()  # a factory, as in render_to_dir
    if encoder is not None:
        check_encoder_family(encoder, plan.family)
    records, tensors = write_pages(plan_jobs(plan), total, out_dir, encoder, batch_size, plan.max_tiles, progress,
                                   resume, plan.family)
    save_encoded(out_dir, tensors, records, encoder)
    tables = {"budget": budget_table(plan), "levels": level_table(plan)}
    summary = {"command": "compress", **plan.as_dict(), "pages": records, "context": context_items(plan, records),
               "font": font_record(), "encoder": encoder_record(encoder), "versions": versions()}
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    finish_out(out_dir)
    summary["tables"] = tables
    return summary
