"""Small text and log helpers shared by the commands and services. No I/O."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence

__all__ = ["SafeFormatter", "Throttle", "escape_controls", "human_bytes", "table"]

#: C0 and C1 control characters and DEL: a terminal acts on them (``\x1b[…`` moves the
#: cursor, rewrites the title, …), so text from the bucket never reaches one raw.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with each control character written as an escape (``\\x1b``, ``\\n``)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters in the message, so that a value
    taken from a request or an object key cannot forge log lines or drive a terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def human_bytes(n: int) -> str:
    """``532 B``, ``1.2 kB``, ``48.0 MB``, ``3.1 GB`` (powers of 1000)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Rows (the header first) as aligned columns two spaces apart; the columns whose
    index is in ``right`` are right-aligned."""
    rows = [[escape_controls(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )


class Throttle:
    """Whether to report something about ``key`` (a path, a message) now: the first time,
    then at most once every ``every`` seconds. Remembers the ``size`` latest keys, so a
    flood of distinct keys costs bounded memory. Thread-safe (the directory store asks
    from its I/O threads)."""

    def __init__(self, every: float = 600.0, *, size: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._size = size
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                return False
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > self._size:
                self._last.popitem(last=False)
            return True
