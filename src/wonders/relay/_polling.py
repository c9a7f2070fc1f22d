"""Adaptive polling: fast while objects keep appearing, slower while nothing happens.

Waiting is always on an event with a deadline (``wait_event``), so a poller wakes at once
when its own side has news (a new request put, a shutdown) and otherwise after its interval.
"""

from __future__ import annotations

import asyncio


class Backoff:
    """The next poll interval: ``fast`` after activity, growing by ``factor`` up to ``slow``."""

    def __init__(self, fast: float = 0.01, slow: float = 1.0, factor: float = 1.5) -> None:
        if not 0 < fast <= slow:
            raise ValueError("poll intervals need 0 < fast <= slow")
        self.fast, self.slow, self.factor = fast, slow, factor
        self._current = fast

    def reset(self) -> float:
        """Something happened: poll again soon."""
        self._current = self.fast
        return self._current

    def next(self) -> float:
        """Nothing happened: return this interval and lengthen the next."""
        interval = self._current
        self._current = min(self.slow, self._current * self.factor)
        return interval


async def wait_event(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
