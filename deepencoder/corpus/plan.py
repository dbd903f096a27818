"""The corpus plan: documents → one global, stable sequence of pages, cut into fixed chunks.

Every page of the corpus gets a global index ``0 .. total-1`` in input order (argument order; folders and
globs sorted; pages in document order). A document that cannot be opened at all (corrupt, encrypted,
zero pages) takes one index, recorded as a failed row with ``page = 0``.

Chunks are the encoder's batches: ``[j * batch_pages, (j + 1) * batch_pages)``, fixed by the index
alone, so a resumed run, the local engine and the Ray engine feed the encoder exactly the same batches
(and so produce the same bytes even where a backend's numerics depend on batch composition). A shard is
a run of whole chunks (see :mod:`deepencoder.corpus.store`). Memory is O(documents), never O(pages).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..sources import Document


@dataclass(frozen=True)
class PageItem:
    """One unit of work: global ``index``, ``path``, 1-based ``page`` (0 = the whole unreadable file),
    ``kind`` (pdf | multiframe | image), ``n_pages`` of the file, ``error`` when known before reading."""

    index: int
    path: str
    page: int
    kind: str
    n_pages: int
    error: str = ""


class Plan:
    """Global page indexing over documents, O(documents) memory."""

    def __init__(self, docs: Sequence[Document], batch_pages: int):
        if batch_pages < 1:
            raise ValueError(f"batch_pages must be >= 1, got {batch_pages}")
        self.docs = list(docs)
        self.batch_pages = batch_pages
        self._starts: List[int] = []
        n = 0
        for d in self.docs:
            self._starts.append(n)
            n += 1 if d.error else len(d.pages)
        self.total = n

    @property
    def n_chunks(self) -> int:
        return (self.total + self.batch_pages - 1) // self.batch_pages

    def item(self, index: int) -> PageItem:
        if not 0 <= index < self.total:
            raise IndexError(f"page index {index} out of range 0..{self.total - 1}")
        k = bisect.bisect_right(self._starts, index) - 1  # every document holds >= 1 index
        d = self.docs[k]
        if d.error:
            return PageItem(index, d.path, 0, d.kind, 0, d.error)
        return PageItem(index, d.path, d.pages[index - self._starts[k]], d.kind, d.n_pages)

    def chunk(self, j: int) -> List[PageItem]:
        lo = j * self.batch_pages
        return [self.item(i) for i in range(lo, min(lo + self.batch_pages, self.total))]

    def chunk_range(self, j: int) -> Tuple[int, int]:
        lo = j * self.batch_pages
        return lo, min(lo + self.batch_pages, self.total)

    def digest(self) -> str:
        """sha256 of the documents and their selected pages: a changed input folder changes it."""
        h = hashlib.sha256()
        for d in self.docs:
            h.update(json.dumps([d.path, d.kind, list(d.pages), d.n_pages, d.error or ""]).encode())
            h.update(b"\n")
        return h.hexdigest()
