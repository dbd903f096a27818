"""Input expansion: folders, globs, list files, PDFs and multi-page images → a stream of pages.

Every accepted input becomes a :class:`Document` (a path, its kind, the pages to use); every page of a
document is one image. Pages are numbered from 1 everywhere (CLI, manifest, error messages).

* **PDF** pages are rendered with PDFium (``pypdfium2``) at ``dpi`` (default 144, as upstream's
  ``pdf_to_images_high_quality``: PyMuPDF ``get_pixmap(matrix=zoom 144/72, alpha=False)``), no alpha, RGB.
  Rendering is page by page: only the page being rendered is held, never the whole document.
* **Multi-frame images** (TIFF, GIF) yield every frame, in order, like PDF pages (an animated GIF is
  encoded frame by frame: deepencoder cannot tell a scanned multi-page GIF from an animation, and frames
  PIL composes are complete images). Every other image is one page.
* **Page ranges**: ``doc.pdf:3-7``, ``doc.pdf:2``, ``doc.pdf:1,4-6``, ``doc.pdf:5-`` on the path, or one
  ``pages`` string for every multi-page document. A range past the end is an error naming the document.
* **List files**: ``@list.txt`` (or any ``.txt``/``.lst`` file) holds one input per line; blank lines
  and ``#`` comments are skipped; relative paths are relative to the list file.
* **Globs**: ``"scans/**/*.pdf"`` (quoted so the shell leaves it alone), expanded sorted.

Errors are one line naming the file (and page): ``ValueError`` for unreadable content (corrupt,
encrypted, zero pages), ``FileNotFoundError`` for missing inputs.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
PDF_EXTS = (".pdf",)
MULTIFRAME_EXTS = (".tif", ".tiff", ".gif")  # probed for frames; other image files are one page
LIST_EXTS = (".txt", ".lst")
DEFAULT_DPI = 144  # upstream's pdf_to_images_high_quality default
_RANGE_RE = re.compile(r"^\s*\d+\s*(-\s*\d*\s*)?(,\s*\d+\s*(-\s*\d*\s*)?)*$")


@dataclass(frozen=True)
class Document:
    """One input file and the pages of it to encode.

    kind: "pdf" | "multiframe" | "image". pages: 1-based page numbers in order (empty when ``error``).
    n_pages: pages the file holds. error: one-line reason the file cannot be opened at all.
    """

    path: str
    kind: str
    pages: Tuple[int, ...]
    n_pages: int
    error: Optional[str] = None


def _is_pdf(path: str) -> bool:
    return path.lower().endswith(PDF_EXTS)


def is_supported(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS + PDF_EXTS)


def _range_parts(spec: str, where: str) -> List[Tuple[int, Optional[int]]]:
    """``"1,3-5,8-"`` → ``[(1, 1), (3, 5), (8, None)]``; ValueError on bad syntax or a downward range."""
    if not _RANGE_RE.match(spec):
        raise ValueError(f"{where}bad page range {spec!r} (expected e.g. 3, 3-7, 1,4-6 or 5-)")
    parts = []
    for part in spec.replace(" ", "").split(","):
        a, dash, b = part.partition("-")
        lo, hi = int(a), (int(b) if b else None) if dash else int(a)
        if lo < 1 or (hi is not None and hi < lo):
            raise ValueError(f"{where}bad page range {part!r} (pages start at 1, ranges go up)")
        parts.append((lo, hi))
    return parts


def parse_page_ranges(spec: str, n_pages: Optional[int] = None, what: str = "", clip: bool = False) -> List[int]:
    """``"1,3-5,8-"`` → ``[1, 3, 4, 5, 8, ..., n_pages]`` (1-based, order kept, duplicates removed).

    A range past ``n_pages`` is an error, or with ``clip`` cut to the pages that exist (``--pages 1-3``
    on a corpus means "at most the first three pages" of each document)."""
    where = f"{what}: " if what else ""
    out: List[int] = []
    seen = set()
    for lo, hi in _range_parts(spec, where):
        if hi is None:
            if n_pages is None:
                raise ValueError(f"{where}open range {lo}- needs the page count")
            hi = n_pages
        if clip and n_pages is not None:
            hi = min(hi, n_pages)
        elif n_pages is not None and hi > n_pages:
            raise ValueError(f"{where}page range {lo}-{hi} is past the end ({n_pages} page(s))")
        for p in range(lo, hi + 1):
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


def split_page_spec(arg: str) -> Tuple[str, Optional[str]]:
    """``"doc.pdf:3-7"`` → ``("doc.pdf", "3-7")``; a path that exists as given is never split."""
    if os.path.exists(arg) or ":" not in arg:
        return arg, None
    path, _, spec = arg.rpartition(":")
    if path and _RANGE_RE.match(spec):
        return path, spec
    return arg, None


# ------------------------------------------------------------------------------------------------
# Opening documents


def _pdfium():
    try:
        import pypdfium2 as pdfium
    except ImportError as e:  # a core dependency; only a broken install lands here
        raise ImportError("PDF input needs pypdfium2: pip install pypdfium2") from e
    return pdfium


def _pdf_error(path: str, e: Exception) -> str:
    # PDFium's last-error code is only a hint (a document with an empty page tree fails with a stale or
    # "success" code), so the message names every cause that fits except for a clear password error.
    msg = str(e)
    if "password" in msg.lower():
        return f"{path}: PDF is encrypted (password required); decrypt it first (e.g. qpdf --decrypt)"
    return f"{path}: cannot open PDF: corrupt, not a PDF, or no pages ({msg})"


def open_pdf(path: str):
    """``pypdfium2.PdfDocument`` for ``path``, or ValueError naming the file (encrypted, corrupt, empty)."""
    pdfium = _pdfium()
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: PDF file is empty (0 bytes)")
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as e:
        raise ValueError(_pdf_error(path, e)) from None
    if len(pdf) == 0:
        pdf.close()
        raise ValueError(f"{path}: PDF has zero pages")
    return pdf


def count_pages(path: str) -> int:
    """Pages (PDF) or frames (TIFF/GIF) in ``path``; 1 for other images. Raises ValueError when unreadable."""
    if _is_pdf(path):
        pdf = open_pdf(path)
        try:
            return len(pdf)
        finally:
            pdf.close()
    if path.lower().endswith(MULTIFRAME_EXTS):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return int(getattr(im, "n_frames", 1))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{path}: cannot read image ({e})") from None
    return 1


def make_document(path: str, pages: Optional[str] = None, clip: bool = False) -> Document:
    """Probe ``path`` (page count only; nothing rendered). Unreadable files give a Document with ``error``.

    ``pages`` selects pages (see :func:`parse_page_ranges`; ``clip`` drops pages past the end).
    """
    kind = "pdf" if _is_pdf(path) else ("multiframe" if path.lower().endswith(MULTIFRAME_EXTS) else "image")
    try:
        n = count_pages(path)
    except ValueError as e:
        return Document(path, kind, (), 0, str(e))
    sel = tuple(parse_page_ranges(pages, n, path, clip)) if pages else tuple(range(1, n + 1))
    return Document(path, kind, sel, n)


def _walk(folder: str, recursive: bool) -> List[str]:
    walker = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    found = []
    for root, dirs, files in walker:
        dirs.sort()
        found += [os.path.join(root, f) for f in files if is_supported(f)]
    return sorted(found)


def _read_list(path: str) -> List[str]:
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(s if os.path.isabs(s) else os.path.join(base, s))
    return out


def expand_inputs(inputs: Sequence[str], recursive: bool = False, pages: Optional[str] = None) -> List[Document]:
    """CLI arguments → documents in a stable order (argument order; folders and globs sorted).

    Folders: supported files inside (``recursive`` descends). Globs: ``*``, ``?``, ``[`` (``**`` with
    recursive matching). ``@file`` or a ``.txt``/``.lst`` file: one input per line. ``path:3-7``: those
    pages (past the end: ValueError). ``pages``: for every multi-page document, cut to the pages it has (a
    document left with none is skipped). A folder or glob matching nothing, or a missing file, raises
    FileNotFoundError naming it.
    """
    if pages:
        _range_parts(pages, "--pages: ")  # syntax checked once, up front
    docs: List[Document] = []

    def add(path: str, spec: Optional[str]) -> None:
        if spec:
            docs.append(make_document(path, spec))
        elif pages and _multi(path):
            d = make_document(path, pages, clip=True)
            if d.pages or d.error:
                docs.append(d)
        else:
            docs.append(make_document(path))

    for arg in inputs:
        arg = os.fspath(arg)
        if arg.startswith("@") or (arg.lower().endswith(LIST_EXTS) and os.path.isfile(arg)):
            lst = arg[1:] if arg.startswith("@") else arg
            if not os.path.isfile(lst):
                raise FileNotFoundError(f"list file not found: {lst}")
            docs += expand_inputs(_read_list(lst), recursive, pages)
            continue
        path, spec = split_page_spec(arg)
        if os.path.isdir(path):
            found = _walk(path, recursive)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no PDFs or images "
                                        f"({', '.join(PDF_EXTS + IMAGE_EXTS)})")
            for f in found:
                add(f, None)
        elif os.path.exists(path):
            add(path, spec)
        elif any(c in path for c in "*?["):
            found = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f) and is_supported(f))
            if not found:
                raise FileNotFoundError(f"pattern {path} matches no PDFs or images")
            for f in found:
                add(f, None)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not docs:
        raise FileNotFoundError("no inputs given" if not inputs else f"--pages {pages} selects no page of the inputs")
    return docs


def _multi(path: str) -> bool:
    return _is_pdf(path) or path.lower().endswith(MULTIFRAME_EXTS)


# ------------------------------------------------------------------------------------------------
# Rendering one page


def render_pdf_page(pdf, path: str, page: int, dpi: int = DEFAULT_DPI) -> np.ndarray:
    """Page ``page`` (1-based) of an open PDF → ``[H, W, 3]`` uint8 RGB at ``dpi`` (no alpha).

    PDFium renders with a white background and no alpha channel (``rev_byteorder`` gives RGB order).
    """
    pdfium = _pdfium()
    try:
        pg = pdf[page - 1]
    except (pdfium.PdfiumError, IndexError) as e:
        raise ValueError(f"{path}: page {page}: cannot load page ({e})") from None
    try:
        bitmap = pg.render(scale=dpi / 72.0, rev_byteorder=True, may_draw_forms=True)
        arr = np.array(bitmap.to_numpy(), copy=True)  # own the pixels: the bitmap buffer is freed below
        bitmap.close()
    except pdfium.PdfiumError as e:
        raise ValueError(f"{path}: page {page}: cannot render ({e})") from None
    finally:
        pg.close()
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: page {page}: rendered to an empty bitmap {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _frame(path: str, page: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from .preprocess import load_image

    try:
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            if page > n:
                raise ValueError(f"{path}: page {page} is past the end ({n} frame(s))")
            im.seek(page - 1)
            frame = im.copy() if n > 1 else im
            frame.load()
            return np.asarray(load_image(frame))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        where = f" page {page}" if page > 1 else ""
        raise ValueError(f"{path}:{where} cannot read image ({e})") from None


def load_page(path: str, page: int = 1, dpi: int = DEFAULT_DPI) -> np.ndarray:
    """One page of one file → ``[H, W, 3]`` uint8 RGB (opens and closes the file). ValueError names it."""
    if _is_pdf(path):
        pdf = open_pdf(path)
        try:
            return render_pdf_page(pdf, path, page, dpi)
        finally:
            pdf.close()
    if path.lower().endswith(MULTIFRAME_EXTS):
        return _frame(path, page)
    from .preprocess import load_image

    try:
        return np.asarray(load_image(path))
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"{path}: {e}" if path not in str(e) else str(e)) from None


def iter_pages(doc: Document, dpi: int = DEFAULT_DPI) -> Iterator[Tuple[int, object]]:
    """``(page, [H, W, 3] uint8 array or ValueError)`` for every selected page, one at a time.

    A PDF is opened once and pages are rendered on demand, so memory holds one page. A page that fails
    yields its exception and the stream goes on (the caller decides whether to raise or record it).
    """
    if doc.error:
        raise ValueError(doc.error)
    if doc.kind == "pdf":
        pdf = open_pdf(doc.path)
        try:
            for p in doc.pages:
                try:
                    yield p, render_pdf_page(pdf, doc.path, p, dpi)
                except ValueError as e:
                    yield p, e
        finally:
            pdf.close()
        return
    for p in doc.pages:
        try:
            yield p, load_page(doc.path, p, dpi)
        except ValueError as e:
            yield p, e


def page_label(path: str, page: int, n_pages: int) -> str:
    """``doc.pdf:3`` for a page of a multi-page document, the bare path otherwise."""
    return f"{path}:{page}" if n_pages > 1 or _multi(path) and page > 1 else path


def page_inputs(arg: str) -> List[str]:
    """For the ``encode`` command: one input string per page. ``doc.pdf`` → ``["doc.pdf:1", ...]``,
    ``doc.pdf:3-4`` → ``["doc.pdf:3", "doc.pdf:4"]``; single-page images stay as they are.
    Raises ValueError (unreadable PDF, bad range) or FileNotFoundError naming the file."""
    path, spec = split_page_spec(arg)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input not found: {path}")
    if not _multi(path):
        return [path]
    doc = make_document(path, spec)
    if doc.error:
        raise ValueError(doc.error)
    if doc.kind != "pdf" and doc.n_pages == 1:
        return [path]
    return [f"{path}:{p}" for p in doc.pages]


def load_input(arg: str, dpi: int = DEFAULT_DPI):
    """An ``encode`` input (``page.png``, ``doc.pdf``, ``doc.pdf:3``, ``scan.tif:2``) → PIL RGB image.

    Plain image paths go through :func:`deepencoder.preprocess.load_image` unchanged."""
    from PIL import Image

    from .preprocess import load_image

    path, spec = split_page_spec(os.fspath(arg))
    if not _multi(path):
        return load_image(path)
    pages = parse_page_ranges(spec) if spec else [1]
    if len(pages) != 1:
        raise ValueError(f"{arg}: name one page here (got {len(pages)})")
    return Image.fromarray(load_page(path, pages[0], dpi), "RGB")


def expand_images(images: Sequence, modes: Sequence[str], dpi: int = DEFAULT_DPI):
    """For :meth:`DeepEncoder.encode`: paths to PDFs / multi-page files (optionally ``path:3-7``) become
    their pages. Returns (images, modes, source labels); other items pass through unchanged.
    Raises ValueError on the first unreadable document or page (naming file and page)."""
    out_img, out_modes, labels = [], [], []
    for x, m in zip(images, modes):
        if isinstance(x, (str, os.PathLike)):
            path, spec = split_page_spec(os.fspath(x))
            if _multi(path) and os.path.isfile(path):
                doc = make_document(path, spec)
                for p, arr in iter_pages(doc, dpi):
                    if isinstance(arr, Exception):
                        raise arr
                    out_img.append(arr)
                    out_modes.append(m)
                    labels.append(page_label(path, p, doc.n_pages))
                continue
        out_img.append(x)
        out_modes.append(m)
        labels.append(os.fspath(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__)
    return out_img, out_modes, labels


__all__ = ["Document", "DEFAULT_DPI", "IMAGE_EXTS", "PDF_EXTS", "expand_inputs", "make_document", "count_pages",
           "parse_page_ranges", "split_page_spec", "open_pdf", "render_pdf_page", "load_page", "iter_pages",
           "page_label", "expand_images", "is_supported", "page_inputs", "load_input"]
