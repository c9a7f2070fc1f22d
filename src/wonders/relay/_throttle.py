"""``Throttle``: report a lasting condition once, not on every retry. No I/O here."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Throttle"]


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
