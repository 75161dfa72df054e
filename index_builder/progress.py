"""Progress for both audiences: a tqdm bar (CLI) and a callback with items/s and ETA (UI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class Progress:
    """Snapshot after each encoded batch; ``total`` counts items still to encode in this run."""

    done: int
    total: int
    items_per_s: float
    eta_s: float | None
    current: str
    skipped: int


class ProgressTracker:
    """Counts encoded items and fans each update out to the bar and the callback."""

    def __init__(self, total: int, callback: Callable[[Progress], None] | None = None, bar: bool = False) -> None:
        self.total = total
        self.done = 0
        self.skipped = 0
        self._callback = callback
        self._start = time.perf_counter()
        self._bar = tqdm(total=total, unit="item", desc="indexing", dynamic_ncols=True) if bar else None
        if callback is not None:
            callback(self.snapshot())  # the UI learns the total before the first (slow) batch

    def advance(self, n: int, current: str) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(current[-40:], refresh=False)
        if self._callback is not None:
            self._callback(self.snapshot(current))

    def drop(self, n: int = 1) -> None:
        """An item planned for encoding failed to load: shrink the total so the ETA stays honest."""
        self.skipped += n
        self.total -= n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def snapshot(self, current: str = "") -> Progress:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        return Progress(self.done, self.total, rate, eta, current, self.skipped)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
