"""The one font the renderer uses: DejaVu Sans Mono 2.37, shipped in ``fonts/`` with its licence.

Layout never asks FreeType for a metric. Units per em, ascender, descender, the advance width and the
set of covered code points are read here from the font file's own tables (``head``, ``hhea``, ``hmtx``,
``cmap`` formats 4 and 12), so line breaks, page breaks and every layout record are pure arithmetic on a
file that ships with the package: identical on every machine. FreeType (through Pillow) only rasterises
single glyphs; those pixels are identical for one Pillow/FreeType build and may differ by anti-aliasing
between builds, which is why ``summary.json`` records both versions.

No system font is ever looked up: a missing shipped font is an error, not a silent substitution.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import FrozenSet, Tuple

FONT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts")
FONT_FILE = "DejaVuSansMono.ttf"
FONT_NAME = "DejaVu Sans Mono 2.37"
FONT_LICENSE_FILE = "LICENSE-DejaVu.txt"
FONT_LICENSE = "Bitstream Vera Fonts Copyright + Arev Fonts Copyright (permissive; see fonts/LICENSE-DejaVu.txt)"
# U+FFFD REPLACEMENT CHARACTER: drawn for every code point the font lacks (DejaVu Sans Mono has it).
FALLBACK_CHAR = "\ufffd"


class FontError(RuntimeError):
    pass


@dataclass(frozen=True)
class FontInfo:
    """Metrics (font units) and coverage read from the TTF tables."""

    path: str
    units_per_em: int
    ascender: int  # hhea, positive
    descender: int  # hhea, positive magnitude
    advance: int  # advance width of 'M' (every glyph of a monospace font)
    coverage: FrozenSet[int]
    sha256: str

    def covers(self, ch: str) -> bool:
        return ord(ch) in self.coverage

    def cell(self, size: int) -> Tuple[int, int, int]:
        """(cell width, line height, baseline offset) in whole pixels at ``size`` px per em.

        Whole pixels so that column ``c`` sits at exactly ``margin + c * cell_w`` everywhere.
        """
        upem = self.units_per_em
        cell_w = max(1, round(size * self.advance / upem))
        line_h = max(1, -(-size * (self.ascender + self.descender) // upem))  # ceil
        base = round(size * self.ascender / upem)
        return cell_w, line_h, base


def _tables(data: bytes):
    if len(data) < 12:
        raise FontError("font file is truncated")
    (num,) = struct.unpack(">H", data[4:6])
    out = {}
    for i in range(num):
        tag, _, off, length = struct.unpack(">4sIII", data[12 + 16 * i: 28 + 16 * i])
        out[tag.decode("latin-1")] = data[off: off + length]
    return out


def _cmap_coverage(cmap: bytes) -> FrozenSet[int]:
    """Code points mapped to a real glyph (id != 0) by the Unicode subtables (formats 4 and 12)."""
    _, n = struct.unpack(">HH", cmap[:4])
    cps = set()
    for i in range(n):
        plat, enc, off = struct.unpack(">HHI", cmap[4 + 8 * i: 12 + 8 * i])
        if not (plat == 0 or (plat == 3 and enc in (1, 10))):
            continue
        fmt = struct.unpack(">H", cmap[off: off + 2])[0]
        if fmt == 4:
            segx2 = struct.unpack(">H", cmap[off + 6: off + 8])[0]
            seg = segx2 // 2
            ends = struct.unpack(f">{seg}H", cmap[off + 14: off + 14 + segx2])
            p = off + 16 + segx2
            starts = struct.unpack(f">{seg}H", cmap[p: p + segx2])
            deltas = struct.unpack(f">{seg}h", cmap[p + segx2: p + 2 * segx2])
            ro_pos = p + 2 * segx2
            ranges = struct.unpack(f">{seg}H", cmap[ro_pos: ro_pos + segx2])
            for k in range(seg):
                for c in range(starts[k], ends[k] + 1):
                    if c == 0xFFFF:
                        continue
                    if ranges[k] == 0:
                        gid = (c + deltas[k]) & 0xFFFF
                    else:
                        q = ro_pos + 2 * k + ranges[k] + 2 * (c - starts[k])
                        gid = struct.unpack(">H", cmap[q: q + 2])[0]
                        if gid:
                            gid = (gid + deltas[k]) & 0xFFFF
                    if gid:
                        cps.add(c)
        elif fmt == 12:
            ngroups = struct.unpack(">I", cmap[off + 12: off + 16])[0]
            for g in range(ngroups):
                s, e, gid = struct.unpack(">III", cmap[off + 16 + 12 * g: off + 28 + 12 * g])
                cps.update(c for c, gi in zip(range(s, e + 1), range(gid, gid + e - s + 1)) if gi)
    return frozenset(cps)


@functools.lru_cache(maxsize=None)
def font_info(path: str = "") -> FontInfo:
    path = path or os.path.join(FONT_DIR, FONT_FILE)
    if not os.path.isfile(path):
        raise FontError(f"the shipped font {path} is missing: reinstall deepencoder (no system font is used "
                        "as a substitute, so that rendering stays identical across machines)")
    with open(path, "rb") as f:
        data = f.read()
    t = _tables(data)
    for need in ("head", "hhea", "hmtx", "cmap"):
        if need not in t:
            raise FontError(f"{path} has no '{need}' table")
    upem = struct.unpack(">H", t["head"][18:20])[0]
    asc, desc = struct.unpack(">hh", t["hhea"][4:8])
    # Monospace: every advance is the same; the first long metric is .notdef's, which in DejaVu Sans
    # Mono equals the rest. Take the largest long metric to be safe against a zero-width first glyph.
    n_long = struct.unpack(">H", t["hhea"][34:36])[0]
    advances = struct.unpack(f">{2 * n_long}H", t["hmtx"][: 4 * n_long])[0::2]
    advance = max(advances)
    return FontInfo(path=path, units_per_em=upem, ascender=asc, descender=-desc, advance=advance,
                    coverage=_cmap_coverage(t["cmap"]), sha256=hashlib.sha256(data).hexdigest())


@functools.lru_cache(maxsize=64)
def pil_font(size: int, path: str = ""):
    """Pillow FreeType font at ``size`` px, basic layout engine (no Raqm: one glyph at a time anyway)."""
    from PIL import ImageFont

    info = font_info(path)
    return ImageFont.truetype(info.path, size=size, layout_engine=ImageFont.Layout.BASIC)


def rasteriser_versions() -> dict:
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, "freetype": features.version("freetype2")}
