"""The segmenter's rules, as tables of events and times: no store, no network, no clock."""

from __future__ import annotations

import pytest

from wonders.relay.forwarder.segmenter import (
    Action,
    Finish,
    Refuse,
    Segment,
    Segmenter,
    Start,
    Whole,
    flush_delay_for,
    is_event_stream,
)


def make(**overrides: object) -> Segmenter:
    options: dict[str, object] = {"now": 0.0, "delay": 0.05, "segment_size": 100,
                                  "inline_limit": 10}
    options.update(overrides)
    return Segmenter(**options)  # type: ignore[arg-type]


def run(segmenter: Segmenter, events: list[tuple[float, bytes | None]]) -> list[
    tuple[float, Action]
]:
    """Feed ``(time, data)`` events (``None`` ends the body), ticking at every deadline
    that falls before the next event, as the forwarder's pump does."""
    out: list[tuple[float, Action]] = []
    for when, data in events:
        deadline = segmenter.deadline()
        while deadline is not None and deadline <= when:
            out += [(deadline, a) for a in segmenter.tick(deadline)]
            deadline = segmenter.deadline()
        actions = segmenter.end() if data is None else segmenter.feed(data, when)
        out += [(when, a) for a in actions]
    return out


def test_a_steady_stream_is_sent_within_the_delay_of_its_oldest_byte() -> None:
    # an event every 10 ms: a timer restarted by every chunk would never fire
    segmenter = make(delay=0.05, inline_limit=0)
    events: list[tuple[float, bytes | None]] = [(0.01 * n, b"e") for n in range(1, 31)]
    out = run(segmenter, [*events, (0.305, None)])
    segments = [(t, a) for t, a in out if isinstance(a, Segment)]
    assert len(segments) >= 5  # delivered in several segments before the end
    # each segment leaves at most 50 ms after its first byte arrived
    arrived = 0
    for when, action in segments:
        assert isinstance(action, Segment)
        first = events[arrived][0]
        assert when - first <= 0.05 + 1e-9
        arrived += len(action.data)
    assert arrived == 30
    assert isinstance(out[-1][1], Finish)


@pytest.mark.parametrize("cadence", [0.4, 0.1, 0.03, 0.01])
def test_no_byte_waits_longer_than_the_delay_whatever_the_cadence(cadence: float) -> None:
    segmenter = make(delay=0.02, inline_limit=0)
    times = [cadence * n for n in range(1, 21)]
    out = run(segmenter, [*((t, b"x") for t in times), (times[-1] + 1.0, None)])
    sent_at: list[float] = []
    for when, action in out:
        if isinstance(action, Segment):
            sent_at += [when] * len(action.data)
    assert len(sent_at) == len(times)  # every event arrives
    assert max(s - t for s, t in zip(sent_at, times, strict=True)) <= 0.02 + 1e-9


def test_a_quick_small_response_goes_inline() -> None:
    out = run(make(), [(0.001, b"hello"), (0.002, b"!"), (0.003, None)])
    assert [a for _, a in out] == [Whole(b"hello!")]


def test_a_slow_response_stores_its_head_at_the_deadline_then_streams() -> None:
    segmenter = make(delay=0.05)
    assert segmenter.deadline() == 0.05
    assert segmenter.tick(0.049) == []
    assert segmenter.tick(0.05) == [Start()]
    assert segmenter.deadline() is None  # nothing waits
    assert segmenter.feed(b"abc", 1.0) == []
    assert segmenter.deadline() == pytest.approx(1.05)
    assert segmenter.tick(1.05) == [Segment(b"abc")]
    assert segmenter.end() == [Finish()]
    assert segmenter.done


def test_an_early_byte_keeps_its_deadline_when_more_follows() -> None:
    segmenter = make(delay=0.05, inline_limit=0)
    segmenter.tick(0.05)
    segmenter.feed(b"a", 1.00)
    segmenter.feed(b"b", 1.04)
    assert segmenter.deadline() == pytest.approx(1.05)  # from "a", not from "b"


def test_a_body_over_the_inline_limit_starts_at_once_and_cuts_full_segments() -> None:
    segmenter = make(inline_limit=10, segment_size=4)
    actions = segmenter.feed(b"0123456789ab", 0.0)
    assert actions == [Start(), Segment(b"0123"), Segment(b"4567"), Segment(b"89ab")]
    assert segmenter.deadline() is None
    assert segmenter.feed(b"cd", 0.5) == []
    assert segmenter.deadline() == pytest.approx(0.55)
    assert segmenter.end() == [Segment(b"cd"), Finish()]


def test_leftover_after_a_full_segment_counts_from_its_own_arrival() -> None:
    segmenter = make(inline_limit=0, segment_size=4, delay=0.05)
    segmenter.tick(0.05)
    segmenter.feed(b"ab", 1.0)
    assert segmenter.feed(b"cdef", 1.04) == [Segment(b"abcd")]
    assert segmenter.deadline() == pytest.approx(1.09)


def test_over_the_limit_before_the_head_is_refused() -> None:
    segmenter = make(limit=5, limit_message="too big")
    assert segmenter.feed(b"123456", 0.0) == [Refuse("too big")]
    assert segmenter.done
    assert segmenter.cut


def test_over_the_limit_after_the_head_is_cut_with_an_error_trailer() -> None:
    segmenter = make(limit=15, inline_limit=10, limit_message="too big")
    assert segmenter.feed(b"0123456789ab", 0.0)[0] == Start()
    assert segmenter.feed(b"cdefgh", 0.01) == [Segment(b"0123456789abcde"), Finish("too big")]
    assert segmenter.total == 18
    assert segmenter.cut


def test_the_cut_never_makes_a_segment_over_the_segment_size() -> None:
    segmenter = make(limit=25, inline_limit=0, segment_size=10)
    segmenter.tick(1.0)
    assert segmenter.feed(b"x" * 9, 1.0) == []
    actions = segmenter.feed(b"y" * 30, 1.01)
    assert [len(a.data) for a in actions if isinstance(a, Segment)] == [10, 10, 5]


def test_a_break_before_the_head_returns_nothing_and_after_it_ends_with_the_error() -> None:
    early = make()
    early.feed(b"abc", 0.0)
    assert early.fail("broke") == []
    late = make(inline_limit=0)
    late.feed(b"abc", 0.0)
    assert late.fail("broke") == [Segment(b"abc"), Finish("broke")]


def test_nothing_is_accepted_after_the_end() -> None:
    segmenter = make()
    segmenter.end()
    with pytest.raises(RuntimeError):
        segmenter.feed(b"x", 1.0)


@pytest.mark.parametrize(("headers", "stream"), [
    ([("Content-Type", "text/event-stream; charset=utf-8")], True),
    ([("content-type", "application/x-ndjson"), ("Content-Length", "10")], True),
    ([("Content-Type", "application/json")], True),  # no length: chunked or to the close
    ([("Content-Type", "application/json"), ("Content-Length", "10")], False),
    ([("Content-Type", "application/octet-stream"), ("content-length", "1")], False),
])
def test_event_streams_flush_sooner(headers: list[tuple[str, str]], stream: bool) -> None:
    assert is_event_stream(headers) is stream
    assert flush_delay_for(headers, bulk=0.05, stream=0.01) == (0.01 if stream else 0.05)
