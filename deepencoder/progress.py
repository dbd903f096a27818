"""The one progress display of every verb (``encode``, ``demo``, ``render``, ``compress``,
``encode-corpus``).

On a terminal it is a tqdm bar. Elsewhere (a batch job's log, CI) a redrawn bar would be one endless
line of carriage returns, so it prints plain lines instead: one per step when ``per_item`` (``encode``:
a log then says which input was done when), else one whenever another tenth is done or ``every``
seconds have passed (``every < 0``: no plain lines). Each line carries the rate and the ETA of this run
(items already done before it, ``initial``, do not count toward the rate) and, when counted, failures.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "encode") as bar: ... bar.update(1, label)``; writes to stderr.

    ``initial``: items done before this run (a resumed corpus); ``failed``: failures so far (shown beside
    the count); ``start=False``: the clock and the bar start at :meth:`start` (after set-up logging)."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", enabled: bool = True, stream=None,
                 per_item: bool = False, every: float = 30.0, initial: int = 0, failed: int = 0,
                 start: bool = True):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.per_item, self.every = per_item, every
        self.n = self.initial = min(int(initial), self.total)
        self.failed = int(failed)
        self._last_decile = int(10 * self.n / self.total) if self.total else 0
        self._bar = None
        self._started = False
        if start:
            self.start()

    @property
    def done(self) -> int:
        return self.n

    def start(self) -> None:
        """Start the clock (and the bar on a terminal); idempotent."""
        if self._started:
            return
        self._started = True
        self.t0 = self._last_t = time.perf_counter()
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=self.desc, unit=self.unit, file=self.stream,
                             leave=True, dynamic_ncols=True)

    def rate(self) -> float:
        """Items per second over this run."""
        return (self.n - self.initial) / max(time.perf_counter() - self.t0, 1e-9) if self._started else 0.0

    def line(self, label: str = "") -> str:
        el = time.perf_counter() - self.t0 if self._started else 0.0
        rate = self.rate()
        eta = f"~{(self.total - self.n) / rate:.0f}s left" if rate > 0 else "ETA ?"
        fail = f", {self.failed} failed" if self.failed else ""
        return (f"{self.desc}: {self.n}/{self.total} {self.unit}{fail}, {el:.1f}s elapsed, {rate:.2f} {self.unit}/s, "
                f"{eta}" + (f"  {label}" if label else ""))

    def update(self, k: int = 1, label: str = "", failed: int = 0) -> None:
        if not self._started:
            self.start()
        self.n = min(self.n + k, self.total)
        self.failed += failed
        if not self.enabled:
            return
        if self._bar is not None:
            if self.failed:
                self._bar.set_postfix_str((f"{self.failed} failed  " + label)[-48:], refresh=False)
            elif label:
                self._bar.set_postfix_str(label[-40:], refresh=False)
            self._bar.update(k)
            return
        now = time.perf_counter()
        decile = int(10 * self.n / self.total)
        due = self.every >= 0 and now - self._last_t >= self.every
        if self.per_item or self.n == self.total or decile != self._last_decile or due:
            if self.every < 0 and not self.per_item:
                return
            self._last_decile, self._last_t = decile, now
            self.stream.write(self.line(label) + "\n")
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
