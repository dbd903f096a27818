"""Caps on every allocation a user controls from the command line, each raisable by an environment variable.

Without them one argument could exhaust the machine: ``--page-size 100000x100000`` asks for a 30 GB RGB
page, ``--max-tiles 100`` on a large scan sends 100 tiles through SAM at once, a crafted PNG decodes to
gigapixels. The defaults are far above real use (an A4 page at 300 dpi is 8.7 Mpx; upstream tiles at
most 9), and the error says which variable raises a cap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class LimitError(ValueError):
    """A request over one of the caps below."""


@dataclass(frozen=True)
class Limit:
    env: str
    default: int
    what: str

    @property
    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None or not raw.strip():
            return self.default
        try:
            v = int(raw)
        except ValueError:
            raise LimitError(f"{self.env} must be an integer, got {raw!r}") from None
        if v < 1:
            raise LimitError(f"{self.env} must be a positive integer, got {raw!r}")
        return v

    def check(self, n: int, subject: str) -> int:
        """Raise :class:`LimitError` when ``n`` is over the cap; ``subject`` names what asked for it."""
        cap = self.value
        if n > cap:
            raise LimitError(f"{subject}: {n:,} {self.what} is over the limit of {cap:,} "
                             f"(raise it with the environment variable {self.env}=N)")
        return n


# Pillow's own decompression-bomb threshold (it only warns below twice this); here it is a hard error.
IMAGE_PIXELS = Limit("DEEPENCODER_MAX_IMAGE_PIXELS", 89_478_485, "decoded image pixels")
PAGE_PIXELS = Limit("DEEPENCODER_MAX_PAGE_PIXELS", 4096 * 4096, "page pixels")
# deepencoder.modes.max_tiles_limit reads this one too.
TILES = Limit("DEEPENCODER_MAX_TILES_LIMIT", 36, "Gundam tiles per image")
BATCH = Limit("DEEPENCODER_MAX_BATCH", 256, "pages per encoder call")


def check_max_tiles(n: int, flag: str = "--max-tiles") -> int:
    """``--max-tiles`` must be at least 2 (Gundam's smallest grid has 2 tiles) and under :data:`TILES`."""
    from .modes import MIN_TILES

    if n < MIN_TILES:
        raise LimitError(f"{flag} {n}: must be at least {MIN_TILES} (the smallest Gundam grid)")
    return TILES.check(n, f"{flag} {n}")
