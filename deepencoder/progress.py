"""The one progress display of every verb (``encode``, ``demo``, ``render``, ``compress``).

On a terminal it is a tqdm bar. Elsewhere (a batch job's log, CI) a redrawn bar would be one endless
line of carriage returns, so it prints plain lines instead: one per step when ``per_item`` (``encode``:
a log then says which input was done when), else one whenever another tenth is done or ``every``
seconds have passed.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "encode") as bar: ... bar.update(1, label)``; writes to stderr."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", enabled: bool = True, stream=None,
                 per_item: bool = False, every: float = 30.0):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.per_item, self.every = per_item, every
        self.n = 0
        self.t0 = self._last_t = time.perf_counter()
        self._last_decile = 0
        self._bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True,
                             dynamic_ncols=True)

    def update(self, k: int = 1, label: str = "") -> None:
        self.n = min(self.n + k, self.total)
        if not self.enabled:
            return
        if self._bar is not None:
            if label:
                self._bar.set_postfix_str(label[-40:], refresh=False)
            self._bar.update(k)
            return
        now = time.perf_counter()
        decile = int(10 * self.n / self.total)
        if self.per_item or self.n == self.total or decile != self._last_decile or now - self._last_t >= self.every:
            self._last_decile, self._last_t = decile, now
            el = now - self.t0
            eta = el / self.n * (self.total - self.n) if self.n else 0.0
            self.stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit} {el:.1f}s elapsed, ~{eta:.0f}s left"
                              + (f"  {label}" if label else "") + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
