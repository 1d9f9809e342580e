"""Progress a person can see: a bar on a terminal, and a line every half minute anywhere else.

A frozen backbone at 224 px on two CPU cores takes minutes per thousand images; in a CI log, under ``nohup`` or
piped through ``tee`` a progress bar is switched off, and the command went silent for that long. There, a line on
stderr every ``interval`` seconds says how far it is, how fast it goes and how long is left.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

INTERVAL = float(os.environ.get("HEADSTART_PROGRESS_SECONDS", 30))


def progress(iterable: Iterable, desc: str, enabled: bool = True, unit: str = "batch", total: int | None = None,
             interval: float | None = None, per_item: int = 1):
    """``iterable`` wrapped in a tqdm bar on a terminal, or in periodic log lines elsewhere; nothing when not
    ``enabled`` (ranks other than 0). The tqdm bar is returned as is (callers may ``set_postfix`` on it).

    Args:
        unit: what is counted (``img``, ``batch``).
        total: how many items ``iterable`` yields, when it has no ``len``.
        per_item: units per item (a loader's batch size, counted in ``img``): rates and counts are in units.
    """
    if not enabled:
        return _Lines(iterable, desc, unit, total, float("inf"), per_item)  # silent, with the bar's set_postfix
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, leave=False, unit=unit, total=total, unit_scale=per_item if per_item > 1
                    else False)
    return _Lines(iterable, desc, unit, total, INTERVAL if interval is None else interval, per_item)


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``: a time left or expected, to the precision that matters."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class _Lines:
    def __init__(self, iterable: Iterable, desc: str, unit: str, total: int | None, interval: float,
                 per_item: int = 1):
        self.iterable, self.desc, self.unit, self.interval, self.per_item = iterable, desc, unit, interval, per_item
        try:
            self.total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = None

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def set_postfix(self, **_) -> None:
        pass

    def line(self, done: int, elapsed: float) -> str:
        """``features: 4096/60000 img (301.2 img/s, 3 min left)``."""
        units = "es" if self.unit.endswith("ch") else "s" if self.unit != "img" else ""
        rate = done * self.per_item / elapsed
        of = f"/{self.total * self.per_item}" if self.total else ""
        left = f", {format_duration((self.total - done) / done * elapsed)} left" if self.total else ""
        return f"{self.desc}: {done * self.per_item}{of} {self.unit}{units} ({rate:.1f} {self.unit}/s{left})"

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                print(self.line(done, now - start), file=sys.stderr, flush=True)


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (Linux: ``/proc/self/stat``; elsewhere now):
    the budget counts the imports too, as the user waits for them."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
