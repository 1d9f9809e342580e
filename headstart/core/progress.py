"""Progress a person can see: a bar on a terminal, and a line every half minute anywhere else.

A frozen backbone at 224 px on two CPU cores takes minutes per thousand images; in a CI log, under ``nohup`` or
piped through ``tee`` a progress bar is switched off, and the command went silent for that long. There, a line on
stderr every ``interval`` seconds says how far it is and how fast it goes.
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
             interval: float | None = None):
    """``iterable`` wrapped in a tqdm bar on a terminal, or in periodic log lines elsewhere; nothing when not
    ``enabled`` (ranks other than 0). The tqdm bar is returned as is (callers may ``set_postfix`` on it)."""
    if not enabled:
        return _Lines(iterable, desc, unit, total, float("inf"))  # silent, with the bar's set_postfix
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, leave=False, unit=unit, total=total)
    return _Lines(iterable, desc, unit, total, INTERVAL if interval is None else interval)


class _Lines:
    def __init__(self, iterable: Iterable, desc: str, unit: str, total: int | None, interval: float):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        try:
            self.total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = None

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def set_postfix(self, **_) -> None:
        pass

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                of = f"/{self.total}" if self.total else ""
                print(f"{self.desc}: {done}{of} {self.unit}es" if self.unit.endswith("ch") else
                      f"{self.desc}: {done}{of} {self.unit}s", f"({done / (now - start):.2f}/s)",
                      file=sys.stderr, flush=True)


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (Linux: ``/proc/self/stat``; elsewhere now):
    the budget counts the imports too, as the user waits for them."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
