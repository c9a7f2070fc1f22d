"""The flow-control window (wonders.relay.forwarder.flow) as tables: which segment may be
stored given the highest one known read, and when a wait for room gives up. No store, no
clock: times are numbers."""

from __future__ import annotations

import pytest

from wonders.relay.forwarder.flow import FlowWindow, GiveUp

INF = float("inf")


def _window(unread: int = 4, *, gone: int = -1, started: float | None = None) -> FlowWindow:
    window = FlowWindow(unread, read_timeout=60.0, total_timeout=3600.0)
    if gone >= 0:
        window.freed(gone)
    if started is not None:
        window.start(started)
    return window


@pytest.mark.parametrize(("unread", "gone", "index", "blocker"), [
    (4, -1, 0, None),  # the first W segments need no room
    (4, -1, 3, None),
    (4, -1, 4, 0),  # the fifth waits for the first to be read
    (4, 0, 4, None),
    (4, 0, 5, 1),
    (4, 2, 6, None),  # everything up to 2 is gone: 6 - 4 = 2
    (4, 2, 7, 3),
    (1, -1, 0, None),  # one unread segment at a time
    (1, -1, 1, 0),
    (1, 0, 1, None),
    (1, 5, 9, 8),
], ids=lambda v: str(v))
def test_which_segment_must_be_gone_first(unread: int, gone: int, index: int,
                                          blocker: int | None) -> None:
    assert _window(unread, gone=gone).blocker(index) == blocker


def test_freeing_never_moves_back() -> None:
    window = _window(gone=5)
    window.freed(3)
    assert window.gone == 5
    assert window.blocker(9) is None


@pytest.mark.parametrize(("started", "now", "until"), [
    (None, 100.0, 160.0),  # no deadline before the body starts: the read timeout alone
    (0.0, 100.0, 160.0),  # the deadline (3600) is far
    (0.0, 3590.0, 3600.0),  # the deadline comes first
    (0.0, 3600.0, 3600.0),
], ids=["before the body", "read timeout first", "deadline first", "at the deadline"])
def test_when_a_wait_gives_up(started: float | None, now: float, until: float) -> None:
    assert _window(started=started).until(now) == until


@pytest.mark.parametrize(("started", "until", "now", "expected"), [
    (0.0, 160.0, 100.0, 60.0),
    (0.0, 160.0, 159.5, 0.5),
    (0.0, 160.0, 160.0, "client-stopped-reading"),
    (0.0, 160.0, 170.0, "client-stopped-reading"),
    (0.0, 3600.0, 3599.0, 1.0),
    (0.0, 3600.0, 3600.0, "total-timeout"),
    (None, 160.0, 161.0, "client-stopped-reading"),
], ids=["waiting", "nearly read timeout", "read timeout", "past the read timeout",
        "nearly total timeout", "total timeout", "read timeout before the body"])
def test_how_long_a_wait_may_go_on(started: float | None, until: float, now: float,
                                   expected: float | str) -> None:
    left = _window(started=started).left(until, now)
    if isinstance(expected, str):
        assert isinstance(left, GiveUp)
        assert left.code == expected
    else:
        assert left == pytest.approx(expected)


def test_the_reasons_say_what_ran_out() -> None:
    window = _window(started=0.0)
    stopped = window.left(60.0, 60.0)
    assert stopped == GiveUp("client-stopped-reading",
                             "the client read no segment for 60 s (4 unread)")
    late = window.left(window.until(3550.0), 3600.0)
    assert late == GiveUp("total-timeout", "the response took longer than total_timeout "
                          "(3600 s)")
