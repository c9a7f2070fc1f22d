"""The adaptive poll interval."""

from __future__ import annotations

import pytest

from wonders.mailbox import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fast_while_active_then_backing_off_to_slow() -> None:
    clock = Clock()
    backoff = Backoff(fast=0.01, slow=1.0, factor=2.0, hold=1.0, clock=clock)
    backoff.reset()
    for _ in range(50):  # an answer is awaited: no slowing down during the hold
        assert backoff.next() == 0.01
        clock.now += 0.01
    clock.now += 0.6  # the hold is over
    intervals = [backoff.next() for _ in range(10)]
    assert intervals[:4] == [0.01, 0.02, 0.04, 0.08]
    assert intervals[-1] == 1.0
    assert backoff.reset() == 0.01
    assert backoff.next() == 0.01


def test_a_fast_interval_above_the_slow_one_is_refused() -> None:
    with pytest.raises(ValueError, match="0 < fast <= slow"):
        Backoff(fast=2.0, slow=1.0)
