"""Waiting for a condition that other tasks or processes bring about.

Where a test can wait on an event (an ``asyncio.Event``, a line on a pipe, a process's
exit), it should; where it cannot, it polls with :func:`eventually` rather than a loop of
its own. The interval starts short, so a fast system is not slowed down, and grows, so a
slow check (a listing, a process) does not busy the machine; a deadline bounds the wait,
and a timeout says what was awaited and what the check last returned.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

#: The first pause between two checks, its growth factor and its ceiling, in seconds.
FIRST_INTERVAL, GROWTH, MAX_INTERVAL = 0.005, 1.5, 0.1


def _describe(predicate: Callable[..., object], what: str | None) -> str:
    if what is not None:
        return what
    name = getattr(predicate, "__qualname__", repr(predicate))
    return f"{name}() to be true"


def _timed_out(described: str, within: float, last: object,
               explain: Callable[[], str] | None) -> AssertionError:
    message = f"timed out after {within:g} s waiting for {described}; last seen: {last!r}"
    if explain is not None:
        message += "\n" + explain()
    return AssertionError(message)


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]], within: float = 30.0, *,
    what: str | None = None, explain: Callable[[], str] | None = None,
    max_interval: float = MAX_INTERVAL,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T], within: float = 30.0, *,
    what: str | None = None, explain: Callable[[], str] | None = None,
    max_interval: float = MAX_INTERVAL,
) -> T: ...


async def eventually(
    predicate: Callable[[], object], within: float = 30.0, *,
    what: str | None = None, explain: Callable[[], str] | None = None,
    max_interval: float = MAX_INTERVAL,
) -> object:
    """Call ``predicate`` (plain or async) until it returns something true, and return
    that; after ``within`` seconds fail, naming what was awaited (``what``), the last value
    seen and ``explain()`` (a log, say). The event loop keeps running between checks."""
    deadline = time.monotonic() + within
    interval = FIRST_INTERVAL
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(_describe(predicate, what), within, value, explain)
        await asyncio.sleep(min(interval, left))
        interval = min(interval * GROWTH, max_interval)


def eventually_sync(
    predicate: Callable[[], T], within: float = 30.0, *,
    what: str | None = None, explain: Callable[[], str] | None = None,
    max_interval: float = MAX_INTERVAL,
) -> T:
    """:func:`eventually` for a test without an event loop (it blocks between checks)."""
    deadline = time.monotonic() + within
    interval = FIRST_INTERVAL
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(_describe(predicate, what), within, value, explain)
        time.sleep(min(interval, left))
        interval = min(interval * GROWTH, max_interval)
