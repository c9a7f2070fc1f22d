"""Adaptive polling: fast while objects keep appearing, slower while nothing happens.

Waiting is always on an event with a deadline (``wait_event``), so a poller wakes at once
when its own side has news (a new request put, a shutdown) and otherwise after its interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Backoff:
    """The next poll interval: ``fast`` for ``hold`` seconds after activity (requests are
    flowing, or an answer is awaited), then growing by ``factor`` up to ``slow``.

    Without the hold, a poller waiting for an answer would slow down exactly while the
    answer is being made (10, 15, 22, 34 ms…), adding its growing interval to every
    round trip. ``clock`` is injected for tests.
    """

    def __init__(
        self,
        fast: float = 0.01,
        slow: float = 1.0,
        factor: float = 1.5,
        hold: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < fast <= slow:
            raise ValueError("poll intervals need 0 < fast <= slow")
        self.fast, self.slow, self.factor, self.hold = fast, slow, factor, hold
        self._clock = clock
        self._current = fast
        self._active_at = clock()

    def reset(self) -> float:
        """Something happened: poll again soon, and stay fast for a while."""
        self._current = self.fast
        self._active_at = self._clock()
        return self._current

    def next(self) -> float:
        """Nothing happened: return this interval; lengthen the next once the hold is over."""
        if self._clock() - self._active_at < self.hold:
            return self.fast
        interval = self._current
        self._current = min(self.slow, self._current * self.factor)
        return interval


async def wait_event(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    if event.is_set():
        return True
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
    # that arrives together with its timeout, and the waiter then never stops
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
