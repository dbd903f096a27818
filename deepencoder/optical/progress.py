"""A tiny progress bar on stderr (no dependency). On a terminal it redraws one line; elsewhere (logs,
CI) it prints a line at most every 10% so long runs stay readable."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", unit: str = "pages", enabled: bool = True, stream=None):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.n = 0
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, k: int = 1) -> None:
        self.n = min(self.n + k, self.total)
        if not self.enabled:
            return
        frac = self.n / self.total
        el = time.perf_counter() - self.t0
        eta = el / self.n * (self.total - self.n) if self.n else 0.0
        msg = f"{self.desc} {self.n}/{self.total} {self.unit} {el:.1f}s elapsed, ~{eta:.0f}s left"
        if self.tty:
            width = 24
            fill = int(frac * width)
            self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {msg}\x1b[K")
            if self.n == self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            dec = int(frac * 10)
            if dec != self._last_decile:
                self._last_decile = dec
                self.stream.write(f"[{frac * 100:3.0f}%] {msg}\n")
                self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled and self.tty and self.n < self.total:
            self.stream.write("\n")
        return False
