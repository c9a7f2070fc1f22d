"""The tests' own polling helper: it returns as soon as the condition holds, and a timeout
says what was awaited and what was last seen."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.eventually import eventually, eventually_sync


async def test_eventually_returns_the_first_true_value_of_a_plain_predicate() -> None:
    seen = iter([0, [], "ready", "later"])
    assert await eventually(lambda: next(seen), 5) == "ready"
    assert next(seen) == "later"  # not called again once true


async def test_eventually_awaits_an_async_predicate_while_other_tasks_run() -> None:
    flag = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, flag.set)

    async def is_set() -> bool:
        return flag.is_set()

    started = time.monotonic()
    assert await eventually(is_set, 5) is True
    assert time.monotonic() - started < 2


async def test_a_timeout_names_what_was_awaited_the_last_value_and_the_explanation() -> None:
    calls: list[int] = []

    def count() -> list[int]:
        calls.append(len(calls))
        return [] if len(calls) < 1000 else calls

    with pytest.raises(AssertionError) as info:
        await eventually(count, 0.2, what="a thousand calls", explain=lambda: "the log")
    message = str(info.value)
    assert message.startswith("timed out after 0.2 s waiting for a thousand calls")
    assert "last seen: []" in message
    assert message.endswith("\nthe log")
    # the interval grows: far fewer checks than a 5 ms busy loop would make
    assert 3 < len(calls) < 40


async def test_a_timeout_without_a_description_names_the_predicate() -> None:
    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"waiting for .*never\(\) to be true; "
                                             r"last seen: False"):
        await eventually(never, 0.05)


def test_eventually_sync_polls_without_an_event_loop() -> None:
    values = iter([None, None, 7])
    assert eventually_sync(lambda: next(values), 5) == 7
    with pytest.raises(AssertionError, match="waiting for zero; last seen: 0"):
        eventually_sync(lambda: 0, 0.05, what="zero")
