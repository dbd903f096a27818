"""Text and simple Markdown -> page images, with a layout record for every source character.

Pipeline::

    text ─ _Builder: Markdown blocks (or plain lines) -> rows of pieces     (pure arithmetic, any machine)
         ─ Layout: rows -> pages of ``geometry.rows`` rows; Record per piece   (page, line, x, y)
         ─ Layout.page_image(i): glyphs composited on a white page          (Pillow/FreeType, one glyph each)

Geometry. A page is ``width x height`` pixels with a margin; the shipped monospace font gives whole-pixel
cells (``cell_w x line_h``), so column ``c`` of line ``l`` sits at ``(margin + c*cell_w,
margin + l*line_h)``. Every row has the same height (headings are bold, not larger), which makes the page
count of any run of rows ``ceil(rows / geometry.rows)``: the memory-decay planner prices a block of turns
with that formula and the renderer produces exactly that many pages.

Density. ``choose_geometry(mode, density)`` picks the largest font size whose page holds at least
``density x vision_token_count(width, height, mode, family=...)`` characters (the counts of the model family
the pages are for: DeepSeek-OCR "ocr1" or DeepSeek-OCR 2 "ocr2"). The default, 40 characters per vision
token, is about 10x compression at ~4 characters per text token: the regime where the DeepSeek-OCR paper
reports ~97% decoding precision.

Records. Every character offset of every source belongs to exactly one :class:`Record`:

* ``text``: contiguous source characters drawn in contiguous cells of one row (spaces inside are blank
  cells); ``fallback``: one character the font cannot draw, shown as U+FFFD and reported;
* ``break`` (whitespace consumed at a wrap or collapsed), ``newline``, ``markup`` (Markdown syntax such
  as ``## `` or a code fence): not drawn, positioned where they occur, ``cells == 0``.

Markdown subset: ATX headings, paragraphs (soft line breaks become spaces), ``-``/``*``/``+``/``1.``
list items with hanging indent, fenced code blocks (verbatim, tabs expanded, grey background),
thematic breaks. Inline markup (``**bold**``, ``[links](...)``) stays literal: every character shows.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import limits
from ..modes import DEFAULT_MODE, check_family, get_mode, resolve_max_tiles, vision_token_count
from .font import FALLBACK_CHAR, FONT_NAME, font_info, pil_font

# Native page per mode: the side the encoder resizes to, so no pixel is wasted; Gundam gets a portrait
# page that cuts into 2 x 3 tiles of 640 (903 tokens, SPEC.md's worked example).
PAGE_SIZES: Dict[str, Tuple[int, int]] = {
    "tiny": (512, 512), "small": (640, 640), "base": (1024, 1024), "large": (1280, 1280),
    "gundam": (1280, 1920),
}
# DeepSeek-OCR 2: base is the 1024 global view alone (257 tokens), so its native page is 1024x1024. Gundam's
# page is 1536x1536: larger than 768 on both sides, so it is cut into 2 x 2 crops of exactly 768 (native
# pixels, no resampling; 4 x 144 + 257 = 833 tokens), and square, so when the decay planner shows the same
# page at base the 1024 global view holds it without padding. (A page of 768 or less would get no crops:
# gundam would cost the same 257 as base.)
PAGE_SIZES_V2: Dict[str, Tuple[int, int]] = {"base": (1024, 1024), "gundam": (1536, 1536)}
FAMILY_PAGE_SIZES: Dict[str, Dict[str, Tuple[int, int]]] = {"ocr1": PAGE_SIZES, "ocr2": PAGE_SIZES_V2}
DEFAULT_DENSITY = 40.0  # characters per vision token
MIN_FONT, MAX_FONT = 6, 96
MIN_COLS = 8
TAB = 4
DEFAULT_MAX_PAGES = 1000
DRAWN_KINDS = ("text", "fallback")
CONSUMED_KINDS = ("break", "newline", "markup")

BG, INK, CODE_BG, LABEL_BG, RULE_INK, FALLBACK_INK = 255, 0, 236, 208, 128, 0


class EmptyInputError(ValueError):
    pass


class TooManyPagesError(ValueError):
    pass


class UnsupportedCharacterWarning(UserWarning):
    pass


# ---------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class PageGeometry:
    width: int
    height: int
    font_size: int
    margin: int
    cell_w: int
    line_h: int
    baseline: int  # from the top of a row to the baseline

    @property
    def cols(self) -> int:
        return (self.width - 2 * self.margin) // self.cell_w

    @property
    def rows(self) -> int:
        return (self.height - 2 * self.margin) // self.line_h

    @property
    def capacity(self) -> int:
        return self.cols * self.rows

    @staticmethod
    def make(width: int, height: int, font_size: int, margin: Optional[int] = None) -> "PageGeometry":
        check_page_size(width, height)
        if font_size < 1:
            raise ValueError(f"font size must be >= 1, got {font_size}")
        if margin is None:
            margin = round(0.03 * min(width, height))
        cell_w, line_h, base = font_info().cell(font_size)
        g = PageGeometry(width, height, font_size, margin, cell_w, line_h, base)
        if g.cols < MIN_COLS or g.rows < 1:
            raise ValueError(f"a {width}x{height} page with margin {margin} holds {g.cols} columns x {g.rows} "
                             f"rows at font size {font_size}: need at least {MIN_COLS} columns and 1 row")
        return g

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "font_size": self.font_size, "margin": self.margin,
                "cell_w": self.cell_w, "line_h": self.line_h, "cols": self.cols, "rows": self.rows}


def page_size(mode, family: str = "ocr1") -> Tuple[int, int]:
    """The native page of ``mode`` in ``family`` (:data:`FAMILY_PAGE_SIZES`)."""
    m = get_mode(mode, family)
    return FAMILY_PAGE_SIZES[m.family][m.name]


def check_page_size(width: int, height: int) -> None:
    """Positive, and at most :data:`deepencoder.limits.PAGE_PIXELS` pixels: a page is allocated whole
    (``--page-size 100000x100000`` would be a 30 GB image)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"page size must be positive, got {width}x{height}")
    limits.PAGE_PIXELS.check(width * height, f"page size {width}x{height}")


def parse_page_size(s: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", s)
    if not m:
        raise ValueError(f"page size must look like 1280x1280, got {s!r}")
    w, h = int(m.group(1)), int(m.group(2))
    check_page_size(w, h)
    return w, h


def choose_geometry(mode=None, density: float = DEFAULT_DENSITY, font_size: Optional[int] = None,
                    size: Optional[Tuple[int, int]] = None, margin: Optional[int] = None,
                    max_tiles: Optional[int] = None, family: str = "ocr1") -> PageGeometry:
    """Page geometry for ``mode`` of ``family``: its native page (or ``size``) and a font for ``density``.

    ``mode`` None: the family's default (ocr1 base, ocr2 gundam); ``max_tiles`` None: the family's Gundam
    MAX. With ``font_size`` given, density is ignored. Otherwise the largest size in [MIN_FONT, MAX_FONT]
    whose page holds ``density * vision_token_count(w, h, mode, family=family)`` characters; if even
    MIN_FONT cannot, MIN_FONT with a warning.
    """
    family = check_family(family)
    mode = get_mode(DEFAULT_MODE[family] if mode is None else mode, family)
    family = mode.family
    w, h = size or page_size(mode)
    if font_size is not None:
        return PageGeometry.make(w, h, int(font_size), margin)
    if not isinstance(density, (int, float)) or not math.isfinite(density) or density <= 0:
        raise ValueError(f"density must be a positive number of characters per vision token, got {density}")
    target = density * vision_token_count(w, h, mode, resolve_max_tiles(mode, max_tiles), family=family)
    for s in range(MAX_FONT, MIN_FONT - 1, -1):
        try:
            g = PageGeometry.make(w, h, s, margin)
        except ValueError:
            continue
        if g.capacity >= target:
            return g
    g = PageGeometry.make(w, h, MIN_FONT, margin)
    warnings.warn(f"a {w}x{h} page holds at most {g.capacity} characters at font size {MIN_FONT}, below the "
                  f"{target:.0f} that density {density} asks for; using font size {MIN_FONT}", stacklevel=2)
    return g


# ---------------------------------------------------------------------------------------------- layout
class Record(NamedTuple):
    """Where source characters ``[start, end)`` of source ``src`` went. ``x, y``: top-left pixel of the
    first cell; ``cells``: columns occupied (0 for consumed kinds)."""

    src: int
    start: int
    end: int
    page: int
    line: int
    x: int
    y: int
    cells: int
    kind: str


@dataclass
class _Row:
    pieces: List[list] = field(default_factory=list)  # [src, start, end, col, cells, kind]
    style: str = ""  # "" | "heading" | "code" | "rule" | "label" | "blank"
    label: str = ""


_TOKEN = re.compile(r"\s+|\S+")
_LINE = re.compile(r"[^\r\n]*(\r\n|\r|\n|$)")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_FENCE_END = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*$")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+|$)")
_HR = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LIST = re.compile(r"([ \t]*)([-*+]|\d{1,9}[.)])(?:[ \t]+|$)")


def _char_class(ch: str, covered) -> str:
    """"ok" | "zw" (combining mark drawn on the previous cell) | "fb" (visible fallback)."""
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Cs", "Co", "Cn") or ord(ch) not in covered:
        return "fb"
    if cat in ("Mn", "Me"):
        return "zw"
    return "ok"


class _Builder:
    """Turns one source text into rows. Stateful cursor: current row and column."""

    def __init__(self, text: str, src: int, cols: int):
        self.text, self.src, self.cols = text, src, cols
        cov = font_info().coverage
        special = {}
        for ch in set(text):
            if ch.isspace():  # whitespace is never drawn: it occupies blank cells or is consumed
                continue
            c = _char_class(ch, cov)
            if c != "ok":
                special[ch] = c
        self.special = special
        self.missing: Counter = Counter()
        self.rows: List[_Row] = []
        self.row: Optional[_Row] = None
        self.col = 0
        self.hang = 0
        self.wrapped = False
        self.mergeable = True
        self.pending: List[Tuple[int, int, str]] = []

    # -- cursor
    def new_row(self, style: str = "", col: int = 0) -> _Row:
        self.row = _Row(style=style)
        self.rows.append(self.row)
        self.col, self.hang, self.wrapped = col, col, False
        for s, e, k in self.pending:
            self.row.pieces.append([self.src, s, e, 0, 0, k])
        self.pending = []
        return self.row

    def consume(self, s: int, e: int, kind: str) -> None:
        if e <= s:
            return
        if self.row is None:
            self.pending.append((s, e, kind))
        else:
            self.row.pieces.append([self.src, s, e, min(self.col, self.cols), 0, kind])

    def place(self, s: int, e: int, cells: int, kind: str = "text", merge: bool = True) -> None:
        """Put ``text[s:e]`` at the cursor. Adjacent text merges into one piece, in which every character
        (cluster) takes one cell; a tab spans several cells, so it stays a piece of its own."""
        p = self.row.pieces
        if (merge and self.mergeable and kind == "text" and p and p[-1][5] == "text" and p[-1][2] == s
                and p[-1][3] + p[-1][4] == self.col):
            p[-1][2] = e
            p[-1][4] += cells
        else:
            p.append([self.src, s, e, self.col, cells, kind])
        self.mergeable = merge
        self.col += cells
        self.wrapped = False

    def wrap(self) -> None:
        style, hang = self.row.style, self.hang
        self.new_row(style, hang)
        self.wrapped = True

    def finish(self) -> List[_Row]:
        if self.pending:  # trailing blank lines / fences: attach to the last row, never add a page
            if not self.rows:
                self.new_row("blank")
            else:
                row = self.rows[-1]
                end = max((pc[3] + pc[4] for pc in row.pieces), default=0)
                for s, e, k in self.pending:
                    row.pieces.append([self.src, s, e, min(end, self.cols), 0, k])
                self.pending = []
        return self.rows

    # -- words
    def _clusters(self, s: int, e: int) -> List[Tuple[int, int, str]]:
        """(start, end, kind) per cell: a base character plus any combining marks after it."""
        out: List[list] = []
        t, sp = self.text, self.special
        for i in range(s, e):
            c = sp.get(t[i], "ok")
            if c == "zw" and out and out[-1][2] == "text":
                out[-1][1] = i + 1
            elif c == "fb":
                out.append([i, i + 1, "fallback"])
                self.missing[t[i]] += 1
            else:
                out.append([i, i + 1, "text"])
        return [tuple(x) for x in out]

    def word(self, s: int, e: int) -> None:
        t = self.text
        if not self.special or not any(ch in self.special for ch in t[s:e]):
            n = e - s
            if self.col + n > self.cols and self.col > self.hang:
                self.wrap()
            while n > self.cols - self.col:  # longer than a row: hard split
                k = self.cols - self.col
                self.place(s, s + k, k)
                s, n = s + k, n - k
                self.wrap()
            if n:
                self.place(s, e, n)
            return
        cl = self._clusters(s, e)
        if self.col + len(cl) > self.cols and self.col > self.hang:
            self.wrap()
        for cs, ce, kind in cl:
            if self.col >= self.cols:
                self.wrap()
            self.place(cs, ce, 1, kind)

    def space(self, s: int, e: int, collapse: bool) -> None:
        if self.wrapped or (collapse and self.col == self.hang):
            self.consume(s, e, "break")  # no leading blanks on a wrapped row / paragraph line
            return
        if collapse:
            width, cut = 1, s + 1
        else:
            width, cut, c = 0, s, self.col
            for ch in self.text[s:e]:
                w = TAB - (c % TAB) if ch == "\t" else 1
                if c + w > self.cols:
                    break
                c, width, cut = c + w, width + w, cut + 1
        room = self.cols - self.col
        if width > room or cut == s:
            self.consume(s, e, "break")
            self.col = self.cols  # the next word starts a new row
            return
        self.place(s, cut, width, merge=width == cut - s)
        self.consume(cut, e, "break")

    def flow(self, s: int, e: int, collapse: bool) -> None:
        """Word-wrap ``text[s:e]`` from the cursor; wrapped rows start at the hanging indent."""
        for m in _TOKEN.finditer(self.text, s, e):
            a, b = m.span()
            if self.text[a].isspace():
                self.space(a, b, collapse)
            else:
                self.word(a, b)


def _lines(text: str) -> List[Tuple[int, int, int]]:
    """(start, content end, end including the line break) for every line."""
    out = []
    for m in _LINE.finditer(text):
        a, b = m.span()
        if a == b and a == len(text):
            break
        out.append((a, m.start(1), b))
        if b == len(text):
            break
    return out


def _layout_plain(bd: _Builder) -> None:
    for a, c, b in _lines(bd.text):
        bd.new_row("" if c > a else "blank")
        bd.flow(a, c, collapse=False)
        bd.consume(c, b, "newline")


def _is_block_start(line: str) -> bool:
    return bool(_FENCE.match(line) or _HEADING.match(line) or _HR.match(line) or _LIST.match(line))


def _layout_markdown(bd: _Builder) -> None:
    t = bd.text
    lines = _lines(t)
    i, n = 0, len(lines)
    need_blank = False  # one blank row between blocks, added when the next block starts

    while i < n:
        a, c, b = lines[i]
        line = t[a:c]
        if not line.strip():
            bd.row = None  # blank lines wait (pending) for the next row: none at the top or the end
            bd.consume(a, b, "newline")
            need_blank = bool(bd.rows)
            i += 1
            continue
        if need_blank:
            bd.new_row("blank")
            need_blank = False
        fm = _FENCE.match(line)
        if fm:
            fence = fm.group(1)
            bd.row = None  # the opening fence attaches to the first code row
            bd.consume(a, b, "markup")
            i += 1
            while i < n:
                a, c, b = lines[i]
                cm = _FENCE_END.match(t, a, c)
                if cm and cm.group(1)[0] == fence[0] and len(cm.group(1)) >= len(fence):
                    bd.consume(a, b, "markup")
                    i += 1
                    break
                bd.new_row("code")
                bd.flow(a, c, collapse=False)
                bd.consume(c, b, "newline")
                i += 1
            if bd.pending:  # empty code block: give it one (grey) row
                bd.new_row("code")
            continue
        if _HR.match(line):
            bd.new_row("rule")
            bd.consume(a, b, "markup")
            i += 1
            continue
        hm = _HEADING.match(line)
        if hm:
            bd.new_row("heading")
            bd.consume(a, a + hm.end(), "markup")
            bd.flow(a + hm.end(), c, collapse=True)
            bd.consume(c, b, "newline")
            i += 1
            continue
        lm = _LIST.match(line)
        start = a
        if lm:
            indent = len(lm.group(1).expandtabs(TAB))
            indent = min(indent, bd.cols // 2)
            bd.new_row("", indent)
            bd.consume(a, a + len(lm.group(1)), "markup")
            bd.word(a + lm.start(2), a + lm.end(2))
            rest = a + lm.end()
            if rest > a + lm.end(2):
                if bd.col < bd.cols:
                    bd.place(a + lm.end(2), a + lm.end(2) + 1, 1)
                    bd.consume(a + lm.end(2) + 1, rest, "break")
                else:
                    bd.consume(a + lm.end(2), rest, "break")
            bd.hang = min(bd.col, bd.cols - 1)
            start = rest
        else:
            bd.new_row("")
        # paragraph / list item body: this line plus continuation lines, soft breaks become spaces
        j = i + 1
        while j < n:
            la, lc, _ = lines[j]
            ln = t[la:lc]
            if not ln.strip() or _is_block_start(ln):
                break
            j += 1
        end_c, end_b = lines[j - 1][1], lines[j - 1][2]
        bd.flow(start, end_c, collapse=True)
        bd.consume(end_c, end_b, "newline")
        i = j


def layout_rows(text: str, cols: int, markdown: bool = True, src: int = 0) -> Tuple[List[_Row], Counter]:
    """Rows for one source text (no pages yet) and the characters the font could not draw."""
    bd = _Builder(text, src, cols)
    (_layout_markdown if markdown else _layout_plain)(bd)
    return bd.finish(), bd.missing


class Layout:
    """Rows cut into pages. ``records`` covers every character of every source exactly once."""

    def __init__(self, rows: List[_Row], geometry: PageGeometry, sources: Dict[int, str],
                 missing: Optional[Counter] = None, markdown: bool = True):
        self.rows, self.geometry, self.sources = rows, geometry, sources
        self.missing = missing or Counter()
        self.markdown = markdown

    @property
    def num_pages(self) -> int:
        return math.ceil(len(self.rows) / self.geometry.rows)

    def page_rows(self, page: int) -> List[_Row]:
        R = self.geometry.rows
        return self.rows[page * R: (page + 1) * R]

    def records(self, page: Optional[int] = None) -> Iterator[Record]:
        g = self.geometry
        pages = range(self.num_pages) if page is None else [page]
        for p in pages:
            for line, row in enumerate(self.page_rows(p)):
                y = g.margin + line * g.line_h
                for src, s, e, col, cells, kind in row.pieces:
                    yield Record(src, s, e, p, line, g.margin + col * g.cell_w, y, cells, kind)

    def page_sources(self, page: int) -> List[int]:
        return sorted({pc[0] for row in self.page_rows(page) for pc in row.pieces})

    # -- pixels
    def page_image(self, page: int):
        """Page ``page`` as a PIL image (mode "L", white paper, black ink)."""
        from PIL import Image

        if not 0 <= page < self.num_pages:
            raise IndexError(f"page {page} out of range (0..{self.num_pages - 1})")
        g = self.geometry
        canvas = np.full((g.height, g.width), BG, dtype=np.uint8)
        glyphs = _GlyphCache(g.font_size)
        right = g.margin + g.cols * g.cell_w
        for line, row in enumerate(self.page_rows(page)):
            y = g.margin + line * g.line_h
            if row.style == "code":
                canvas[y: y + g.line_h, g.margin: right] = CODE_BG
            elif row.style == "label":  # a turn's header: a grey band, visible even on a Tiny page
                canvas[y: y + g.line_h, g.margin: right] = LABEL_BG
            elif row.style == "rule":
                mid = y + g.line_h // 2
                canvas[mid: mid + max(1, g.line_h // 12), g.margin: right] = RULE_INK
            bold = row.style in ("heading", "label")
            if row.label:
                for k, ch in enumerate(row.label):
                    glyphs.draw(canvas, ch, g.margin + k * g.cell_w, y + g.baseline, INK, True)
            for src, s, e, col, _, kind in row.pieces:
                if kind == "fallback":
                    glyphs.draw(canvas, FALLBACK_CHAR, g.margin + col * g.cell_w, y + g.baseline, FALLBACK_INK,
                                bold)
                elif kind == "text":
                    x = g.margin + col * g.cell_w
                    for cl in _iter_clusters(self.sources[src], s, e):
                        if not cl.isspace():
                            # DejaVu Sans Mono's combining marks are full-cell glyphs centred like the
                            # letters: drawn on the same cell they sit over their base
                            for ch in cl:
                                glyphs.draw(canvas, ch, x, y + g.baseline, INK, bold)
                        x += g.cell_w
        return Image.fromarray(canvas, mode="L")

    def iter_images(self) -> Iterator:
        for p in range(self.num_pages):
            yield self.page_image(p)


def _iter_clusters(text: str, s: int, e: int) -> Iterator[str]:
    """Cells of a ``text`` piece: each base character with its combining marks (matches _clusters)."""
    i = s
    while i < e:
        j = i + 1
        if not text[i].isspace():
            while j < e and unicodedata.category(text[j]) in ("Mn", "Me"):
                j += 1
        yield text[i:j]
        i = j


class _GlyphCache:
    """Rasterises each distinct cluster once (FreeType via Pillow) and composites it with numpy."""

    _store: Dict[Tuple[int, str], Tuple[np.ndarray, int, int]] = {}

    def __init__(self, size: int):
        self.size = size
        self.font = pil_font(size)

    def get(self, cl: str):
        key = (self.size, cl)
        hit = self._store.get(key)
        if hit is None:
            from PIL import Image, ImageDraw

            x0, y0, x1, y1 = self.font.getbbox(cl, anchor="ls")
            if x1 <= x0 or y1 <= y0:
                hit = (np.zeros((0, 0), np.uint8), 0, 0)
            else:
                im = Image.new("L", (x1 - x0, y1 - y0), 0)
                ImageDraw.Draw(im).text((-x0, -y0), cl, font=self.font, fill=255, anchor="ls")
                hit = (np.asarray(im), x0, y0)
            if len(self._store) > 50000:
                self._store.clear()
            self._store[key] = hit
        return hit

    def draw(self, canvas: np.ndarray, cl: str, x: int, base_y: int, ink: int, bold: bool = False) -> None:
        mask, dx, dy = self.get(cl)
        if mask.size == 0:
            return
        for off in ((0, 1) if bold else (0,)):
            x0, y0 = x + dx + off, base_y + dy
            h, w = mask.shape
            cy0, cx0 = max(y0, 0), max(x0, 0)
            cy1, cx1 = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            m = mask[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0].astype(np.uint16)
            region = canvas[cy0:cy1, cx0:cx1]
            # alpha-blend ink over what is there; ink is darker than the paper, so min() keeps overlaps
            blended = ((255 - m) * region.astype(np.uint16) + m * ink + 127) // 255
            np.minimum(region, blended.astype(np.uint8), out=region)


# ---------------------------------------------------------------------------------------------- public API
def warn_missing(missing: Counter, stacklevel: int = 2) -> None:
    if not missing:
        return
    total = sum(missing.values())
    shown = ", ".join(f"U+{ord(ch):04X} {_printable(ch)} x{n}" for ch, n in missing.most_common(10))
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    warnings.warn(f"{total} character(s) in {len(missing)} kind(s) are not drawable with {FONT_NAME} (or are "
                  f"control/format characters); each is drawn as the visible fallback U+FFFD: {shown}{more}",
                  UnsupportedCharacterWarning, stacklevel=stacklevel + 1)


class RightToLeftWarning(UserWarning):
    """Right-to-left text (Arabic, Hebrew, ...) is drawn left to right, unshaped."""


def warn_rtl(text: str, stacklevel: int = 2) -> int:
    """Warn when ``text`` holds right-to-left letters (Unicode bidi classes R and AL): the renderer puts
    one glyph per cell, left to right, with no bidi reordering and no Arabic shaping, so such a page
    shows the letters in reverse order and unjoined. Returns how many there are."""
    n = sum(1 for ch in text if ord(ch) >= 0x0590 and unicodedata.bidirectional(ch) in ("R", "AL"))
    if n:
        warnings.warn(f"{n} right-to-left character(s) (Arabic, Hebrew, ...) are drawn left to right and "
                      "unshaped (no bidi reordering, no joining): a reader sees them reversed",
                      RightToLeftWarning, stacklevel=stacklevel + 1)
    return n


def _printable(ch: str) -> str:
    return repr(ch) if unicodedata.category(ch)[0] == "C" else f"'{ch}'"


def check_pages(n_pages: int, max_pages: Optional[int], g: PageGeometry, what: str = "this text") -> None:
    if max_pages is not None and n_pages > max_pages:
        raise TooManyPagesError(
            f"{what} needs {n_pages} pages of {g.width}x{g.height} at font size {g.font_size} "
            f"({g.cols}x{g.rows} characters per page), over the limit of {max_pages}; raise max_pages "
            "(--max-pages) or split the input")


def layout_text(text: str, mode=None, density: float = DEFAULT_DENSITY, font_size: Optional[int] = None,
                size: Optional[Tuple[int, int]] = None, markdown: bool = True,
                max_pages: Optional[int] = DEFAULT_MAX_PAGES, max_tiles: Optional[int] = None,
                geometry: Optional[PageGeometry] = None, family: str = "ocr1") -> Layout:
    """Lay out ``text`` on pages for ``mode`` of model ``family`` (see :func:`choose_geometry`; ``mode``
    None: the family's default). No pixels yet.

    Raises EmptyInputError for empty or whitespace-only text and TooManyPagesError past ``max_pages``;
    warns (UnsupportedCharacterWarning) for characters drawn as the fallback.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise EmptyInputError("the input text is empty (or only whitespace): there is nothing to render")
    g = geometry or choose_geometry(mode, density, font_size, size, max_tiles=max_tiles, family=family)
    rows, missing = layout_rows(text, g.cols, markdown)
    lay = Layout(rows, g, {0: text}, missing, markdown)
    check_pages(lay.num_pages, max_pages, g)
    warn_missing(missing)
    warn_rtl(text)
    return lay


def render_text(text: str, mode=None, **kw) -> Tuple[Layout, list]:
    """``layout_text`` and every page image (PIL, mode "L"). For long inputs prefer
    ``layout.iter_images()``, which holds one page at a time."""
    lay = layout_text(text, mode, **kw)
    return lay, list(lay.iter_images())


def layout_transcript(items: Sequence[Tuple[int, str, List[_Row]]], geometry: PageGeometry,
                      sources: Dict[int, str], markdown: bool = True) -> Layout:
    """Several turns on shared pages: per turn a bold label row and its rows, a blank row between turns.

    ``items``: (turn id, label, rows from :func:`layout_rows` with ``src = turn id``).
    Row count = sum(1 + len(rows)) + (turns - 1): :func:`transcript_rows` is the same arithmetic.
    """
    out: List[_Row] = []
    for k, (_, label, rows) in enumerate(items):
        if k:
            out.append(_Row(style="blank"))
        out.append(_Row(style="label", label=label[: geometry.cols]))
        out.extend(rows)
    return Layout(out, geometry, sources, None, markdown)


def transcript_rows(turn_rows: Sequence[int]) -> int:
    return sum(1 + r for r in turn_rows) + max(len(turn_rows) - 1, 0)
